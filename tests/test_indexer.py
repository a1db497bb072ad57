"""The offline indexer: a real Lucene impact index (pyserini) and FAISS, a manifest, atomic publication."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.data import DatasetError
from core.encoder import DuetEncoder, EncodedItems, SparseRows
from indexer import build as build_module
from indexer.build import (
    EncodedSide,
    IndexBuildConfig,
    build_index,
    copy_checkpoint,
    encode_collection,
    extract_features,
    load_collection,
    make_manifest,
    publish_index,
    verify_index,
    write_side,
)
from indexer.cli import main as indexer_main
from indexer.collection import load_folder_collection
from indexer.store import (
    IndexUnavailableError,
    SideStore,
    index_contents,
    manifest_in,
    opening_index,
    read_manifest,
)

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
    items = [json.loads(line) for line in (index_contents(tiny_index) / "texts" / "items.jsonl").read_text()
             .splitlines()]
    assert items[0]["id"].endswith("#0") and items[0]["image_id"].startswith("img_")


def test_verify_detects_a_damaged_file(tiny_index: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_index, copy, symlinks=True)
    dense_file = index_contents(copy) / "images" / "dense.npy"
    dense = np.load(dense_file)
    dense[0, 0] += 1.0
    np.save(dense_file, dense)
    with pytest.raises(IndexUnavailableError, match="changed"):
        verify_index(copy)


def test_verify_refuses_another_checkpoint(tiny_index: Path, tiny_backbone, synthetic_dataset: Path,  # type: ignore[no-untyped-def]
                                           tmp_path: Path) -> None:
    from tests.conftest import save_tiny_checkpoint

    other = save_tiny_checkpoint(tiny_backbone, synthetic_dataset, tmp_path / "other", seed=1)
    with pytest.raises(IndexUnavailableError, match="built from checkpoint"):
        verify_index(tiny_index, checkpoint=other)


@pytest.mark.parametrize("stage", ["build_impact_index", "copy_checkpoint"])
def test_interrupted_build_leaves_the_live_index_intact(stage: str, tiny_index: Path, tiny_checkpoint: Path,
                                                        synthetic_dataset: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    live = tmp_path / "live"
    shutil.copytree(tiny_index, live, symlinks=True)
    before = os.readlink(live / "current"), read_manifest(live)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt(f"simulated crash in {stage}")

    monkeypatch.setattr(build_module, stage, crash)
    with pytest.raises(KeyboardInterrupt):
        build_index(IndexBuildConfig(checkpoint=tiny_checkpoint, output=live, dataset=synthetic_dataset,
                                     splits=("test",), cache_root=tmp_path / "cache"))
    assert (os.readlink(live / "current"), read_manifest(live)) == before
    assert verify_index(live)["ok"]
    assert [p.name for p in (live / "versions").iterdir()] == [before[0].split("/")[1]]  # no temporary leftovers
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_the_index_is_self_contained_and_its_manifest_has_no_absolute_path(tiny_index: Path, tiny_checkpoint: Path,
                                                                          synthetic_dataset: Path) -> None:
    from indexer.search import SearchEngine

    manifest = json.loads((index_contents(tiny_index) / "manifest.json").read_text())
    assert manifest["format"] == "duet-index/2"
    assert [s for s in _strings(manifest) if os.path.isabs(s) or s.startswith("~")] == []
    assert manifest["checkpoint"]["path"] == "checkpoint"
    own = index_contents(tiny_index) / "checkpoint"
    assert (own / "model.safetensors").read_bytes() == (tiny_checkpoint / "model.safetensors").read_bytes()
    assert verify_index(tiny_index)["own_checkpoint"] == "matches"
    engine = SearchEngine.open(tiny_index)
    try:
        assert engine.reader.checkpoint_dir == own and engine.encoder.checkpoint_path == own
        assert engine.collection_root.resolve() == (synthetic_dataset / "images").resolve()
    finally:
        engine.close()


def _hits(engine: Any, text: str) -> list[tuple[str, float, float]]:
    from indexer.params import SearchParams

    result = engine.search(engine.encode_text(text), SearchParams(mode="hybrid", top_k=8))
    return [(h.id, round(h.dense, 6), round(h.sparse, 6)) for h in result.hits]


def test_a_moved_index_opens_and_serves_the_same_hits(tiny_checkpoint: Path, synthetic_dataset: Path,
                                                      tmp_path: Path) -> None:
    from indexer.search import SearchEngine

    site, checkpoint = tmp_path / "site", tmp_path / "checkpoint-source"
    shutil.copytree(synthetic_dataset, site / "data")
    shutil.copytree(tiny_checkpoint, checkpoint)
    build_index(IndexBuildConfig(checkpoint=checkpoint, output=site / "index", dataset=site / "data",
                                 splits=("test",), cache_root=tmp_path / "cache"))
    engine = SearchEngine.open(site / "index")
    expected = {text: _hits(engine, text) for text in ("a red square on blue", "green dot")}
    engine.close()

    moved = tmp_path / "elsewhere" / "mounted"
    shutil.copytree(site, moved, symlinks=True)  # the index with its images alongside
    shutil.rmtree(site)
    shutil.rmtree(checkpoint)
    engine = SearchEngine.open(moved / "index")
    try:
        assert engine.reader.checkpoint_dir.is_relative_to(moved)
        assert {text: _hits(engine, text) for text in expected} == expected
        image = engine.reader.store("images").items[0]["path"]
        assert (engine.collection_root / image).resolve() == (moved / "data" / "images" / image).resolve()
    finally:
        engine.close()
    assert verify_index(moved / "index")["ok"]

    alone = tmp_path / "version-alone"  # one version copied out on its own is a plain index
    shutil.copytree(index_contents(moved / "index"), alone)
    engine = SearchEngine.open(alone)
    try:
        assert {text: _hits(engine, text) for text in expected} == expected
    finally:
        engine.close()


def test_an_index_with_an_old_manifest_still_opens(tiny_index: Path, tiny_checkpoint: Path,
                                                   synthetic_dataset: Path, tmp_path: Path) -> None:
    """duet-index/1 recorded absolute paths and no checkpoint copy, with the contents at the top."""
    from indexer.search import SearchEngine

    old = tmp_path / "old"
    shutil.copytree(index_contents(tiny_index), old, ignore=shutil.ignore_patterns("checkpoint", ".*"))
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.update(format="duet-index/1")
    manifest["checkpoint"]["path"] = str(tiny_checkpoint.resolve())
    manifest["collection"]["root"] = str((synthetic_dataset / "images").resolve())
    (old / "manifest.json").write_text(json.dumps(manifest))
    engine = SearchEngine.open(old)
    try:
        assert engine.reader.checkpoint_dir == tiny_checkpoint.resolve()
        assert engine.collection_root == (synthetic_dataset / "images").resolve()
        assert _hits(engine, "a red square")
    finally:
        engine.close()
    assert verify_index(old)["ok"]


def _file_hashes(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and "lucene" not in p.parts}


def test_the_build_stages_are_functions_composing_to_build_index(tiny_checkpoint: Path, synthetic_dataset: Path,
                                                                 tmp_path: Path) -> None:
    config = IndexBuildConfig(checkpoint=tiny_checkpoint, output=tmp_path / "index", dataset=synthetic_dataset,
                              splits=("test",), cache_root=tmp_path / "cache", batch_size=7)
    collection = load_collection(config)
    assert (collection.source, collection.splits, len(collection.images), len(collection.texts)) == (
        "karpathy", ("test",), 16, 80)
    inputs = collection.feature_inputs
    assert [i.id for i in inputs.images] == [i.cache_id for i in collection.images]
    assert inputs.images[0].path == synthetic_dataset / "images" / collection.images[0].relative_path

    encoder = DuetEncoder.from_checkpoint(tiny_checkpoint)
    features = extract_features(collection, encoder.backbone, cache_root=config.cache_root)
    assert features.images.shape[0] == 16 and features.texts.shape[0] == 80 and features.skipped_images == ()

    encoded = encode_collection(features, encoder, batch_size=7)
    images = encoded.sides["images"]
    assert [item["id"] for item in images.items] == [i.id for i in collection.images]
    assert images.items[0]["split"] == "test" and len(images.items[0]["captions"]) == 5
    whole = encoder.encode_image_features(features.images)  # batching does not change the vectors
    assert np.allclose(images.encoded.dense, whole.dense, atol=1e-6)
    # a caption carries its image's payload (split, file size, pixel size)
    fields = {k: v for k, v in images.items[0].items() if k not in ("id", "path", "captions")}
    assert {"split", "file_bytes", "width", "height", "orientation"} <= set(fields)
    assert encoded.sides["texts"].items[0] == {"id": f"{images.items[0]['id']}#0", "text": collection.texts[0].text,
                                               "image_id": images.items[0]["id"], **fields}

    staged = tmp_path / "staged"
    written = write_side(staged / "images", images, faiss_factory="Flat", sparse_scale=100.0, threads=1,
                         payload=collection.payload)
    assert written.manifest.count == written.manifest.lucene_docs == 16
    assert {"items.jsonl", "dense.npy", "dense.faiss", "sparse.indptr.npy"} <= set(written.manifest.files)
    assert set(written.timings) == {"images_dense_seconds", "images_payload_seconds",
                                    "images_sparse_collection_seconds", "images_sparse_seconds"}
    assert SideStore.load(staged / "images", "images", written.manifest).ids == [i.id for i in collection.images]

    binding = copy_checkpoint(encoder, tiny_checkpoint, staged)
    assert binding.path == "checkpoint" and binding.content_hash == encoder.checkpoint.content_hash
    manifest = make_manifest(config=config, encoder=encoder, binding=binding, sides={"images": written.manifest},
                             collection={"root": str(synthetic_dataset / "images"), "name": "x"}, timings={})
    assert not os.path.isabs(manifest.collection["root"])
    assert (config.output / manifest.collection["root"]).resolve() == (synthetic_dataset / "images").resolve()
    assert not any(os.path.isabs(str(v)) for v in manifest.build["config"].values() if isinstance(v, str))

    # the pipeline runs the same stages: the same files (Lucene's carry per-build segment ids)
    build_index(config)
    assert _file_hashes(index_contents(config.output) / "images") == _file_hashes(staged / "images")


def test_a_checkpoint_changed_during_the_build_is_refused(tiny_checkpoint: Path, tiny_backbone,  # type: ignore[no-untyped-def]
                                                          synthetic_dataset: Path, tmp_path: Path) -> None:
    from tests.conftest import save_tiny_checkpoint

    source = tmp_path / "best"
    shutil.copytree(tiny_checkpoint, source)
    encoder = DuetEncoder.from_checkpoint(source)
    save_tiny_checkpoint(tiny_backbone, synthetic_dataset, source, seed=3)  # republished meanwhile
    (tmp_path / "contents").mkdir()
    with pytest.raises(IndexUnavailableError, match="changed during the build"):
        copy_checkpoint(encoder, source, tmp_path / "contents")


def _prefix(side: SideStore, n: int) -> EncodedSide:
    end = int(side.sparse.indptr[n])
    sparse = SparseRows(side.sparse.indptr[:n + 1], side.sparse.indices[:end], side.sparse.values[:end])
    return EncodedSide(side.items[:n], EncodedItems(np.asarray(side.dense[:n]), sparse))


def test_readers_never_see_a_missing_index_while_a_rebuild_publishes(tiny_index: Path, tiny_checkpoint: Path,
                                                                     tmp_path: Path) -> None:
    """A reader thread opens the index in a loop (as SearchEngine does) while rebuilds publish: first over a plain
    directory from before versions (migration), then over a versioned one."""
    from indexer.search import SearchEngine

    out = tmp_path / "index"
    shutil.copytree(index_contents(tiny_index), out)  # contents at the top, as published before versions
    real = SearchEngine.open(tiny_index, sides=("images",))
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: set[int] = set()

    def read() -> None:
        while not stop.is_set():
            try:
                with opening_index(out) as contents:
                    manifest = manifest_in(contents)
                    stores = [SideStore.load(contents / s, s, m) for s, m in manifest.sides.items()]
                seen.add(len(stores[0].ids))
            except BaseException as e:  # noqa: BLE001  (any failure is the finding)
                errors.append(e)
                return

    reader = threading.Thread(target=read)
    reader.start()
    config = IndexBuildConfig(checkpoint=tiny_checkpoint, output=out, threads=1)
    try:
        for count in (20, 10):
            publish_index(config, real.encoder, {"images": _prefix(real.reader.store("images"), count)},
                          {"name": "prefix", "source": "test", "root": str(tmp_path), "splits": []})
            deadline = time.monotonic() + 20
            while count not in seen and not errors and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        stop.set()
        reader.join(timeout=30)
        real.close()
    assert errors == [] and {32, 20, 10} <= seen
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["current", "versions"]
    assert read_manifest(out).sides["images"].count == 10


def test_folder_collection_with_metadata(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from PIL import Image

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name, color in (("a.png", "red"), ("b.jpg", "blue"), ("sub/c.png", "green")):
        Image.new("RGB", (40, 30), color).save(folder / name)
    (folder / "metadata.jsonl").write_text(
        json.dumps({"file": "a.png", "captions": ["a red picture"], "source": "test", "year": 2020,
                    "taken": "2020-05-01T10:00:00"}) + "\n"
        + json.dumps({"file": "sub/c.png", "captions": ["green", "all green"], "year": 2021, "tags": ["x"]}) + "\n")
    collection = load_folder_collection(folder)
    assert [i.id for i in collection.images] == ["a.png", "b.jpg", "sub/c.png"]
    assert [t.id for t in collection.texts] == ["a.png#0", "sub/c.png#0", "sub/c.png#1"]
    assert collection.images[0].metadata == {"source": "test", "year": 2020, "taken": "2020-05-01T10:00:00"}
    # the fields it holds, by the JSON type each holds (a datetime is never guessed: declare it)
    assert collection.payload == {"source": "keyword", "year": "integer", "taken": "keyword", "tags": "keywords"}
    inputs = collection.feature_inputs  # a folder is listed as one split, "all", and named by its listing
    assert (inputs.dataset, inputs.origin, inputs.splits) == (collection.name, str(folder / "metadata.jsonl"), ("all",))
    assert [(t.id, t.image_id) for t in inputs.texts] == [(0, 0), (1, 2), (2, 2)]
    out = tmp_path / "index"
    assert indexer_main(["build", "--checkpoint", str(tiny_checkpoint), "--folder", str(folder), "--out", str(out),
                         "--cache-root", str(tmp_path / "cache")]) == 0
    manifest = read_manifest(out)
    assert manifest.sides["images"].count == 3 and manifest.sides["texts"].count == 3
    assert manifest.payload == collection.payload
    declared = tmp_path / "declared"
    assert indexer_main(["build", "--checkpoint", str(tiny_checkpoint), "--folder", str(folder), "--out",
                         str(declared), "--cache-root", str(tmp_path / "cache"),
                         "--payload", "taken:datetime,year:integer"]) == 0
    assert read_manifest(declared).payload == {"taken": "datetime", "year": "integer"}
    # a declared type the items do not hold stops the build, naming the item and field; nothing is published
    assert indexer_main(["build", "--checkpoint", str(tiny_checkpoint), "--folder", str(folder), "--out",
                         str(tmp_path / "refused"), "--cache-root", str(tmp_path / "cache"),
                         "--payload", "source:integer"]) == 2
    assert not (tmp_path / "refused" / "current").exists()


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
    from indexer.params import SearchParams
    from indexer.search import SearchEngine

    out = tmp_path / "index"
    build_index(IndexBuildConfig(checkpoint=tiny_checkpoint, output=out, dataset=synthetic_dataset,
                                 splits=("test", "val"), cache_root=tmp_path / "cache", faiss_factory=factory))
    engine = SearchEngine.open(out)
    assert engine.manifest.sides["images"].faiss_factory == factory
    query = engine.encode_text("a red square")
    hits = engine.search(query, SearchParams(mode="dense", top_k=5)).hits
    assert len(hits) == 5
    exact = np.sort(engine.reader.stores["images"].dense @ query.dense)[::-1][:5]
    assert hits[0].dense <= exact[0] + 1e-5  # approximate: never better than exact, scores are exact


def test_a_float16_dense_store_halves_its_bytes_and_keeps_the_ranking(tiny_checkpoint: Path, synthetic_dataset: Path,
                                                                      tiny_index: Path, tmp_path: Path) -> None:
    from indexer.params import SearchParams
    from indexer.search import SearchEngine

    out = tmp_path / "half"
    build_index(IndexBuildConfig(checkpoint=tiny_checkpoint, output=out, dataset=synthetic_dataset,
                                 splits=("test", "val"), cache_root=tmp_path / "cache", dense_store="float16"))
    half, full = read_manifest(out), read_manifest(tiny_index)
    for side in ("images", "texts"):
        assert half.sides[side].dense_store == "float16" and full.sides[side].dense_store == "float32"
        assert half.sides[side].bytes["dense_store"] < 0.6 * full.sides[side].bytes["dense_store"]
    small, large = SearchEngine.open(out), SearchEngine.open(tiny_index)
    query = large.encode_text("a red square on blue")
    params = SearchParams(mode="dense", top_k=5)
    a, b = small.search(query, params), large.search(query, params)
    assert [h.dense for h in a.hits] == pytest.approx([h.dense for h in b.hits], abs=2e-3)
    small.close()
    large.close()
