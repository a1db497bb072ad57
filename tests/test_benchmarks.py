"""The benchmark runners end to end on the tiny index (numbers are not checked against targets here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cli import main as bench_main
from benchmarks.search_bench import percentiles
from benchmarks.synthetic import CorpusStatistics, generate
from indexer.search import SearchEngine


def test_percentiles() -> None:
    assert percentiles([1.0, 2.0, 3.0, 4.0, 100.0])["p50"] == 3.0
    assert percentiles([float(v) for v in range(1, 101)])["p99"] == 99.0


def test_search_report_on_a_real_index(tiny_index: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    assert bench_main(["search", "--index", str(tiny_index), "--output", str(out), "--latency-queries", "8"]) == 0
    report = json.loads(out.read_text())
    for direction in ("t2i", "i2t"):
        for mode in ("dense", "sparse", "hybrid", "sparse_exact"):
            r = report["quality"][direction][mode]
            assert 0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 100
    assert report["latency_one_thread"]["search_only"]["hybrid"]["n"] == 8
    assert report["sizes"]["images"]["count"] == 32


def test_synthetic_corpus_follows_the_statistics(tiny_index: Path) -> None:
    store = SearchEngine(tiny_index).stores["images"]
    stats = CorpusStatistics.of(store)
    corpus = generate(stats, 500, chunk=128)
    ids, _ = corpus.sparse.row(7)
    assert np.all(np.diff(ids) > 0)  # distinct, ascending
    assert corpus.dense.shape == (500, store.dense.shape[1])
    assert np.allclose(np.linalg.norm(corpus.dense, axis=1), 1.0, atol=1e-5)
    assert len(corpus.sparse) == 500
    assert set(np.unique(corpus.sparse.indices)) <= set(stats.token_ids)
    assert abs(corpus.sparse.terms_per_row().mean() - stats.terms_per_item.mean()) <= 0.15 * stats.terms_per_item.mean()


def test_missing_index_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert bench_main(["search", "--index", str(tmp_path / "none"), "--output", str(tmp_path / "r.json")]) == 2
    assert "index directory not found" in caplog.text
