"""The benchmark runner: recall@K on hand-built rankings, the Karpathy loader on generated MSCOCO/Flickr30k-format
fixtures, a tiny end-to-end run (tiny model, a few items, every peer, plots, matrix check), and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cli import main as bench_main
from benchmarks.datasets import resolve_dataset
from benchmarks.matrix import ResultsMatrix, check, lookup
from benchmarks.recall import exact_top_k, overlap_with, top_rows
from core.data import DatasetError
from tests.conftest import save_tiny_checkpoint


# ----- the exact top k and overlap with it -----
def test_top_rows_breaks_ties_by_lower_row() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 0.5, 3.0]])
    assert top_rows(scores, 3).tolist() == [[1, 2, 4]]


def test_overlap_with_ground_truth_counts_ties_as_correct() -> None:
    scores = np.array([[9.0, 8.0, 7.0, 7.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    # query 0: row 3 ties the exact 3rd score (row 2), so either is right; query 1: one of three is wrong
    truth = exact_top_k(scores, k=3)
    assert [t.tolist() for t in truth] == [[0, 1, 2, 3], [0, 1, 2]]
    assert overlap_with([[0, 1, 3], [0, 1, 4]], truth, k=3) == pytest.approx([1.0, 2 / 3])
    with pytest.raises(ValueError, match="ground-truth"):
        overlap_with([[0]], truth, k=3)


@pytest.mark.peers
def test_seismic_batch_results_line_up_with_their_queries(tmp_path: Path) -> None:
    """Seismic's parallel batch_search returns lists out of order; each must still land at its own query."""
    from benchmarks.peers import SeismicEngine, Vectors
    from core.encoder import SparseRows
    from indexer.query import Query
    from indexer.searchers import search_one

    rng = np.random.default_rng(0)
    # big enough that two threads finish out of order (checked: the raw batch_search order differs here)
    counts = rng.integers(40, 80, 2000)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indices = np.concatenate([np.sort(rng.choice(300, c, replace=False)) for c in counts]).astype(np.int32)
    vectors = Vectors(np.eye(2000, 8, dtype=np.float32), SparseRows(indptr, indices, rng.random(indices.size,
                                                                                                   np.float32) + 0.1))
    engine = SeismicEngine(vectors, tmp_path, threads=2)
    queries = [Query(vectors.dense[i], *vectors.sparse.row(i)) for i in range(600)]
    batched = engine.search_batch(queries, 5)
    single = [search_one(engine, q, 5) for q in queries]
    assert all(np.array_equal(b.rows, s.rows) and np.allclose(b.scores, s.scores) for b, s in zip(batched, single,
                                                                                                    strict=True))
    assert all(b.rows.size == 5 for b in batched)


# ----- the Karpathy loader on generated MSCOCO and Flickr30k layouts -----
def coco_layout(source: Path, root: Path) -> Path:
    """Rewrite a generated Karpathy dataset the way dataset_coco.json is laid out: images under filepath
    val2014/, a restval split, extra fields, and a 6-caption image."""
    raw = json.loads(next(source.glob("dataset_*.json")).read_text())
    (root / "images" / "val2014").mkdir(parents=True)
    splits = ["train", "restval", "val", "test"]
    for n, entry in enumerate(raw["images"]):
        shutil.copy(source / "images" / entry["filename"], root / "images" / "val2014" / entry["filename"])
        entry.update(filepath="val2014", cocoid=100000 + n, split=entry["split"] if entry["split"] in splits
                     else "restval")
    extra = raw["images"][-1]
    extra["split"] = "test"
    extra["sentences"].append({"raw": "one more caption", "sentid": 10**6, "imgid": extra["imgid"]})
    (root / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": raw["images"]}))
    return root


@pytest.fixture(scope="module")
def coco_fixture(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return coco_layout(synthetic_dataset, tmp_path_factory.mktemp("coco"))


def test_mscoco_layout_loads(coco_fixture: Path) -> None:
    test = resolve_dataset("mscoco", coco_fixture, "test")
    assert test.json_name == "dataset_coco.json" and test.images == 17 and test.captions == 17 * 5 + 1
    assert "not the protocol's 5000" in test.protocol_note
    assert resolve_dataset("mscoco", coco_fixture, "restval").images > 0


def test_flickr30k_layout_loads(synthetic_dataset: Path, tmp_path: Path) -> None:
    shutil.copytree(synthetic_dataset / "images", tmp_path / "images")
    raw = json.loads(next(synthetic_dataset.glob("dataset_*.json")).read_text())
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({**raw, "dataset": "flickr30k"}))
    val = resolve_dataset("flickr30k", tmp_path, "val")
    assert (val.images, val.captions, val.json_name) == (16, 80, "dataset_flickr30k.json")


def test_dataset_errors_name_the_problem(synthetic_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset directory not found: .*nowhere"):
        resolve_dataset("flickr8k", tmp_path / "nowhere", "test")
    with pytest.raises(DatasetError, match=r"unknown split 'testing'.*'test': 16"):
        resolve_dataset("flickr8k", synthetic_dataset, "testing")
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        resolve_dataset("imagenet", synthetic_dataset, "test")


# ----- the runner end to end -----
TINY_RUN = ["--scales", "300", "--prune-terms", "4", "--weight-grid", "0,0.5,1", "--latency-queries", "8",
            "--scale-queries", "8", "--knob-scales", "300", "--knob-candidate-k", "5,300", "--knob-ef-search", "4,64",
            "--knob-query-cut", "2,20"]


@pytest.fixture(scope="module")
def tiny_run(tiny_checkpoint: Path, coco_fixture: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    argv = ["run", "--checkpoint", str(tiny_checkpoint), "--dataset", "mscoco", "--data", str(coco_fixture),
            "--out", str(root / "report"), "--work", str(root / "work"), "--cache-root", str(root / "cache"), *TINY_RUN]
    assert bench_main(argv) == 0
    return root


def test_run_writes_every_section(tiny_run: Path) -> None:
    report = json.loads((tiny_run / "report" / "report.json").read_text())
    assert report["dataset"]["images"] == 17 and report["machine"]["cpus"] >= 1
    for direction in ("t2i", "i2t"):
        for mode in ("dense", "sparse", "hybrid", "sparse_exact"):
            r = report["quality"][direction][mode]
            assert 0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 100
    # the grid plus the checkpoint's own weight share (0.1 / (0.1 + 0.2))
    assert [p["w_dense"] for p in report["weight_sweep"]] == pytest.approx([0.0, 1 / 3, 0.5, 1.0])
    assert [p["default"] for p in report["weight_sweep"]] == [False, True, False, False]
    assert [p["terms"] for p in report["pruning"]] == [4, None]
    assert report["pruning"][0]["mean_terms"]["images"] <= 4
    for key in ("latency", "batched", "encoding", "sizes", "build"):
        assert key in report
    readable = report["readability"]
    assert 0 <= readable["images"]["GP@10"] <= 1 and 0 <= readable["frequency_floor"]["GP@10"] <= 1
    assert readable["caption_vocabulary_from"] == "train"
    assert 0 <= readable["images"]["piece_rate@10"] <= 1 and 0 <= readable["texts"]["piece_rate"] <= 1
    assert readable["flops"] > 0 and readable["texts"]["mean_terms"] > 0
    assert [e["query"] for e in readable["examples"]][0] == "a dog running on the beach"
    assert report["encoding"]["images_per_second"] > 0 and report["batched"]["hybrid_qps"] > 0


def test_run_compares_every_peer_on_the_same_vectors(tiny_run: Path) -> None:
    report = json.loads((tiny_run / "report" / "report.json").read_text())
    for rows in (report["peers"]["engines"], report["scale"][0]["engines"]):
        engines = {(r["engine"], r["mode"]): r for r in rows}
        assert {e for e, _ in engines} >= {"duet", "exact", "faiss-hnsw32-ef64", "milvus-lite", "seismic-q20-h0.7"}
        for mode in ("dense", "sparse", "hybrid"):
            assert engines[("exact", mode)]["overlap@10"] == 100.0  # the ground truth agrees with itself
            assert engines[("duet", mode)]["latency_p50_vs_duet"] == 1.0
        assert engines[("duet", "dense")]["overlap@10"] == 100.0  # flat FAISS is exact
        for row in rows:
            assert row["latency_ms"]["n"] == 8 and row["batch_qps"] > 0 and 0 <= row["overlap@10"] <= 100
    assert report["scale"][0]["items"] == 300 and not report["peers"]["unavailable"]
    per_item = report["scale"][0]["duet_bytes_per_item"]
    assert per_item["sparse_lucene"] > 0 and per_item["dense_faiss"] >= 4 * 32  # float32, embed_dim 32


def test_knob_sweep_moves_each_engine_along_its_own_curve(tiny_run: Path) -> None:
    point = json.loads((tiny_run / "report" / "report.json").read_text())["knobs"][0]
    assert point["items"] == 300 and point["grid"]["candidate_k"] == [5, 300] and not point["unavailable"]
    rows = {(r["family"], r["mode"], r["value"]): r for r in point["rows"]}
    assert [(r["engine"], r["knob"], r["value"]) for r in point["rows"]] == [
        ("exact", None, None)] * 3 + [("duet-c5", "candidate_k", 5), ("duet-c300", "candidate_k", 300),
                                      ("faiss-hnsw32-ef4", "ef_search", 4), ("faiss-hnsw32-ef64", "ef_search", 64),
                                      ("seismic-q2-h0.7", "query_cut", 2), ("seismic-q20-h0.7", "query_cut", 20)]
    for mode in ("dense", "sparse", "hybrid"):
        assert rows[("exact", mode, None)]["overlap@10"] == 100.0
    # 300 candidates from the dense leg are the whole corpus, all rescored exactly: the exact hybrid top 10
    assert rows[("duet", "hybrid", 300)]["overlap@10"] == 100.0
    for row in point["rows"]:
        assert row["latency_ms"]["n"] == 8 and row["batch_qps"] > 0 and 0 <= row["overlap@10"] <= 100


def test_run_writes_markdown_and_plots(tiny_run: Path) -> None:
    out = tiny_run / "report"
    markdown = (out / "README.md").read_text()
    for heading in ("## Headline", "## Readability of the sparse terms", "## Dense/sparse weight sweep",
                    "## Recall versus active terms", "## Efficiency",
                    "## Peers on the same vectors", "## Synthetic corpus: 300 items",
                    "## Search-time knobs: 300 synthetic items", "python -m benchmarks run",
                    "Duet at this size: sparse (Lucene) p50"):
        assert heading in markdown
    for name in ("recall-vs-weight.png", "recall-vs-terms.png", "latency-vs-size.png", "latency-vs-recall.png",
                 "knobs-300.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in markdown
    (out / "README.md").unlink()
    assert bench_main(["render", "--report", str(out / "report.json")]) == 0
    assert (out / "README.md").read_text() == markdown


def test_matrix_check_reruns_and_says_ok_or_fail(tiny_run: Path, coco_fixture: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    matrix_path = tiny_run / "matrix.json"
    assert bench_main(["record-matrix", "--report", str(tiny_run / "report" / "report.json"),
                       "--output", str(matrix_path)]) == 0
    matrix = ResultsMatrix.load(matrix_path)
    assert matrix.stages() == ("quality", "readability")
    assert "readability/images/GP@10" in {row.path for row in matrix.rows}
    work = ["--work", str(tiny_run / "work"), "--cache-root", str(tiny_run / "cache")]
    assert bench_main(["check", "--matrix", str(matrix_path), "--data", str(coco_fixture), *work]) == 0
    assert "FAIL" not in capsys.readouterr().out
    raw = json.loads(matrix_path.read_text())
    raw["rows"][0]["expected"] += 50
    matrix_path.write_text(json.dumps(raw))
    assert bench_main(["check", "--matrix", str(matrix_path), "--data", str(coco_fixture), *work]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("FAIL") and f"{len(raw['rows']) - 1}/{len(raw['rows'])} OK, 1 FAIL" in out


def test_matrix_lookup_and_missing_values() -> None:
    report = {"quality": {"t2i": {"dense": {"R@1": 12.5}}}, "pruning": [{"terms": 8}]}
    assert lookup(report, "quality/t2i/dense/R@1") == 12.5 and lookup(report, "pruning/0/terms") == 8.0
    matrix = ResultsMatrix(dataset="flickr8k", split="test", checkpoint="x", recorded="test",
                           rows=[{"condition": "gone", "path": "quality/t2i/sparse/R@1", "expected": 1,
                                  "tolerance": 1}])
    assert check(matrix, report)[0]["status"] == "FAIL"


def test_an_interrupted_run_resumes_its_finished_sections(tmp_path: Path) -> None:
    from benchmarks.runner import PartialReport, RunConfig

    config = RunConfig(checkpoint=tmp_path / "ckpt", out=tmp_path / "out")
    first = PartialReport(config, "hash-a", resume=False)
    assert first.section("quality", lambda: {"R@1": 1.0}) == {"R@1": 1.0}
    with pytest.raises(RuntimeError):
        first.section("peers", lambda: (_ for _ in ()).throw(RuntimeError("crash")))

    def never() -> None:
        raise AssertionError("a finished section was measured again")

    again = PartialReport(config, "hash-a", resume=True)
    assert again.section("quality", never) == {"R@1": 1.0}
    assert again.log["quality"]["resumed"] and not first.log["quality"]["resumed"]
    assert "peers" not in again.sections
    other = PartialReport(config, "hash-b", resume=True)  # another checkpoint: nothing is reused
    assert other.sections == {}
    fewer = RunConfig(checkpoint=tmp_path / "ckpt", out=tmp_path / "out", scales=(10_000,), stages=("quality",))
    assert PartialReport(fewer, "hash-a", resume=True).sections == again.sections  # selection only: reused
    changed = RunConfig(checkpoint=tmp_path / "ckpt", out=tmp_path / "out", candidate_k=50)
    assert PartialReport(changed, "hash-a", resume=True).sections == {}
    again.finish()
    assert not (tmp_path / "out" / "report.partial.json").exists()


def test_resume_extends_a_finished_report_with_points_of_the_same_generator(tmp_path: Path) -> None:
    from benchmarks.runner import PartialReport, RunConfig
    from benchmarks.synthetic import GENERATOR

    config = RunConfig(checkpoint=tmp_path / "ckpt", out=tmp_path / "out", scales=(10_000, 1_000_000))
    finished = {"checkpoint": {"content_hash": "hash-a"},
                "config": {**json.loads(config.model_dump_json()), "scales": [10_000, 100_000]},
                "quality": {"R@1": 1.0}, "peers": {"engines": []},
                "scale": [{"items": 10_000, "generator": GENERATOR}, {"items": 100_000, "generator": "older"}],
                "sections": {"quality": {"measured_at": "2026-11-28T14:00:00+00:00", "seconds": 3.0,
                                         "resumed": False}}}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.json").write_text(json.dumps(finished))
    extended = PartialReport(config, "hash-a", resume=True)
    # the 100k point was made by another generator: measured again, not reused
    assert sorted(extended.sections) == ["peers", "quality", "scale-10000"]
    assert extended.log["quality"] == {"measured_at": "2026-11-28T14:00:00+00:00", "seconds": 3.0, "resumed": True}
    assert extended.log["peers"]["resumed"] and extended.log["peers"]["measured_at"] is None
    assert PartialReport(config, "hash-b", resume=True).sections == {}  # another checkpoint
    assert PartialReport(config, "hash-a", resume=False).sections == {}  # only with --resume


def test_a_saved_knob_sweep_of_another_grid_is_measured_again(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.knobs import KnobGrid
    from benchmarks.runner import PartialReport, RunConfig, knob_section
    from benchmarks.synthetic import GENERATOR

    config = RunConfig(checkpoint=tmp_path / "ckpt", out=tmp_path / "out", knob_grid=KnobGrid(candidate_k=(100,)))
    finished = {"checkpoint": {"content_hash": "hash-a"},
                # a report written before the knob settings existed: they do not stop its sections being reused
                "config": {k: v for k, v in json.loads(config.model_dump_json()).items() if not k.startswith("knob")},
                "quality": {"R@1": 1.0},
                "knobs": [{"items": 10_000, "generator": GENERATOR, "grid": {**config.knob_grid.model_dump(
                    mode="json"), "candidate_k": [100, 300]}}]}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.json").write_text(json.dumps(finished))
    partial = PartialReport(config, "hash-a", resume=True)
    assert sorted(partial.sections) == ["knobs-10000", "quality"]
    measured: list[int] = []

    def fake_point(engine: object, items: int, work: Path, **kwargs: object) -> dict[str, object]:
        measured.append(items)
        return {"items": items, "generator": GENERATOR, "grid": kwargs["grid"].model_dump(mode="json")}

    monkeypatch.setattr("benchmarks.runner.knob_point", fake_point)
    again = knob_section(partial, None, config, 10_000)  # type: ignore[arg-type]
    assert measured == [10_000] and again["grid"]["candidate_k"] == [100]
    assert knob_section(partial, None, config, 10_000) is again and measured == [10_000]  # now reused


@pytest.mark.peers
def test_peers_are_built_and_released_one_at_a_time(tiny_index: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """At 1M items the peers' indexes do not fit in memory together: each is closed before the next is built."""
    import benchmarks.compare as compare
    from benchmarks.search_bench import stored_queries
    from indexer.search import SearchEngine

    events: list[str] = []
    real_build = compare._build_peer

    class Recorded:
        def __init__(self, peer: str) -> None:
            self.peer = peer

        def close(self) -> None:
            events.append(f"close {self.peer}")

    def recording_build(peer: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        events.append(f"build {peer}")
        engines, closables = real_build(peer, *args, **kwargs)
        return engines, [*closables, Recorded(peer)]

    monkeypatch.setattr(compare, "_build_peer", recording_build)
    engine = SearchEngine.open(tiny_index)
    try:
        queries = stored_queries(engine.reader.stores["texts"])[:6]
        rows, notes = compare.side_by_side(engine, "images", queries, relevant=None, peers=("hnsw", "seismic"),
                                           work=tmp_path, latency_queries=3)
    finally:
        engine.close()
    assert events == ["build hnsw", "close hnsw", "build seismic", "close seismic"] and not notes
    assert [r["engine"] for r in rows][:6] == ["duet"] * 3 + ["exact"] * 3 and len(rows) == 8


# ----- bad input -----
def test_index_from_another_checkpoint_is_refused(tiny_run: Path, tiny_backbone, synthetic_dataset: Path,  # type: ignore[no-untyped-def]
                                                   coco_fixture: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    other = save_tiny_checkpoint(tiny_backbone, synthetic_dataset, tmp_path / "other" / "best", seed=3)
    argv = ["run", "--checkpoint", str(other), "--dataset", "mscoco", "--data", str(coco_fixture),
            "--index", str(tiny_run / "work" / "index-test"), "--out", str(tmp_path / "out"),
            "--cache-root", str(tmp_path / "cache"), *TINY_RUN]
    assert bench_main(argv) == 2
    assert "index was built with checkpoint content hash" in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("data", "split", "message"), [
    ("missing", "test", "dataset directory not found"),
    ("coco", "dev", "unknown split 'dev'"),
])
def test_bad_dataset_arguments_exit_2(tiny_checkpoint: Path, coco_fixture: Path, tmp_path: Path, data: str,
                                      split: str, message: str, caplog: pytest.LogCaptureFixture) -> None:
    directory = coco_fixture if data == "coco" else tmp_path / "missing"
    argv = ["run", "--checkpoint", str(tiny_checkpoint), "--dataset", "mscoco", "--data", str(directory),
            "--split", split, "--out", str(tmp_path / "out"), "--cache-root", str(tmp_path / "cache"), *TINY_RUN]
    assert bench_main(argv) == 2
    assert message in caplog.text


def test_unknown_peer_is_rejected(tiny_checkpoint: Path, coco_fixture: Path, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    argv = ["run", "--checkpoint", str(tiny_checkpoint), "--dataset", "mscoco", "--data", str(coco_fixture),
            "--out", str(tmp_path / "out"), "--peers", "hnsw,elastic"]
    assert bench_main(argv) == 2
    assert "unknown peers ['elastic']" in caplog.text
