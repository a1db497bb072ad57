"""The offline indexer: a real Lucene impact index (pyserini) and FAISS, a manifest, atomic publication."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.data import DatasetError
from indexer import build as build_module
from indexer.build import IndexBuildConfig, build_index, verify_index
from indexer.cli import main as indexer_main
from indexer.collection import load_folder_collection
from indexer.store import IndexUnavailableError, read_manifest

pytestmark = pytest.mark.java  # every test builds or reads a Lucene index


def test_index_has_both_sides_bound_to_the_checkpoint(tiny_index: Path, tiny_checkpoint: Path) -> None:
    manifest = read_manifest(tiny_index)
    checkpoint = json.loads((tiny_checkpoint / "checkpoint.json").read_text())
    assert manifest.checkpoint.content_hash == checkpoint["content_hash"]
    assert manifest.sides["images"].count == 32  # test + val splits of the synthetic dataset
    assert manifest.sides["texts"].count == 160
    assert manifest.sides["images"].lucene_docs == 32
    assert manifest.quantization["scale"] == 100.0
    report = verify_index(tiny_index, checkpoint=tiny_checkpoint)
    assert report["ok"] and report["sides"]["texts"]["lucene_docs"] == 160
    items = [json.loads(line) for line in (tiny_index / "texts" / "items.jsonl").read_text().splitlines()]
    assert items[0]["id"].endswith("#0") and items[0]["image_id"].startswith("img_")


def test_verify_detects_a_damaged_file(tiny_index: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_index, copy)
    dense = np.load(copy / "images" / "dense.npy")
    dense[0, 0] += 1.0
    np.save(copy / "images" / "dense.npy", dense)
    with pytest.raises(IndexUnavailableError, match="changed"):
        verify_index(copy)


def test_verify_refuses_another_checkpoint(tiny_index: Path, tiny_backbone, synthetic_dataset: Path,  # type: ignore[no-untyped-def]
                                           tmp_path: Path) -> None:
    from tests.conftest import save_tiny_checkpoint

    other = save_tiny_checkpoint(tiny_backbone, synthetic_dataset, tmp_path / "other", seed=1)
    with pytest.raises(IndexUnavailableError, match="built from checkpoint"):
        verify_index(tiny_index, checkpoint=other)


def test_interrupted_build_leaves_the_live_index_intact(tiny_index: Path, tiny_checkpoint: Path,
                                                        synthetic_dataset: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    live = tmp_path / "live"
    shutil.copytree(tiny_index, live)
    before = (live / "manifest.json").read_text()

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("simulated crash during Lucene indexing")

    monkeypatch.setattr(build_module, "build_impact_index", crash)
    with pytest.raises(KeyboardInterrupt):
        build_index(IndexBuildConfig(checkpoint=tiny_checkpoint, output=live, dataset=synthetic_dataset,
                                     splits=("test",), cache_root=tmp_path / "cache"))
    assert (live / "manifest.json").read_text() == before
    assert verify_index(live)["ok"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers


def test_folder_collection_with_metadata(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from PIL import Image

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name, color in (("a.png", "red"), ("b.jpg", "blue"), ("sub/c.png", "green")):
        Image.new("RGB", (40, 30), color).save(folder / name)
    (folder / "metadata.jsonl").write_text(
        json.dumps({"file": "a.png", "captions": ["a red picture"], "source": "test"}) + "\n"
        + json.dumps({"file": "sub/c.png", "captions": ["green", "all green"]}) + "\n")
    collection = load_folder_collection(folder)
    assert [i.id for i in collection.images] == ["a.png", "b.jpg", "sub/c.png"]
    assert [t.id for t in collection.texts] == ["a.png#0", "sub/c.png#0", "sub/c.png#1"]
    assert collection.images[0].metadata == {"source": "test"}
    out = tmp_path / "index"
    assert indexer_main(["build", "--checkpoint", str(tiny_checkpoint), "--folder", str(folder), "--out", str(out),
                         "--cache-root", str(tmp_path / "cache")]) == 0
    manifest = read_manifest(out)
    assert manifest.sides["images"].count == 3 and manifest.sides["texts"].count == 3


def test_malformed_folder_metadata_names_the_line(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "metadata.jsonl").write_text('{"file": "x.png"}\n{not json\n')
    with pytest.raises(DatasetError, match=r"metadata.jsonl:2"):
        load_folder_collection(tmp_path)


def test_cli_user_errors_exit_2_with_a_message(tmp_path: Path, tiny_checkpoint: Path, synthetic_dataset: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "nope"
    assert indexer_main(["build", "--checkpoint", str(tiny_checkpoint), "--data", str(missing),
                         "--out", str(tmp_path / "i")]) == 2
    assert str(missing) in caplog.text
    assert indexer_main(["build", "--checkpoint", str(tmp_path / "no-ckpt"), "--data", str(synthetic_dataset),
                         "--out", str(tmp_path / "i")]) == 2
    assert "not a Duet checkpoint" in caplog.text
    assert indexer_main(["build", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_dataset),
                         "--splits", "nosuch", "--out", str(tmp_path / "i")]) == 2
    assert "unknown split 'nosuch'" in caplog.text
    assert indexer_main(["verify", "--index", str(tmp_path / "absent")]) == 2
    assert "index directory not found" in caplog.text
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize("factory", ["HNSW16", "IVF4,Flat"])
def test_approximate_dense_indexes_from_a_factory_string(factory: str, tiny_checkpoint: Path,
                                                         synthetic_dataset: Path, tmp_path: Path) -> None:
    from indexer.search import SearchEngine, SearchParams

    out = tmp_path / "index"
    build_index(IndexBuildConfig(checkpoint=tiny_checkpoint, output=out, dataset=synthetic_dataset,
                                 splits=("test", "val"), cache_root=tmp_path / "cache", faiss_factory=factory))
    engine = SearchEngine(out)
    assert engine.manifest.sides["images"].faiss_factory == factory
    query = engine.encode_text("a red square")
    hits = engine.search(query, SearchParams(mode="dense", top_k=5)).hits
    assert len(hits) == 5
    exact = np.sort(engine.stores["images"].dense @ query.dense)[::-1][:5]
    assert hits[0].dense <= exact[0] + 1e-5  # approximate: never better than exact, scores are exact
