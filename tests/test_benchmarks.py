"""The benchmark runners end to end on the tiny index (numbers are not checked against targets here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cli import main as bench_main
from benchmarks.search_bench import stored_queries
from benchmarks.stats import percentiles
from benchmarks.synthetic import CorpusStatistics, generate
from core.encoder import SparseRows
from core.metrics import success_of_lists
from indexer.search import SearchEngine
from indexer.searchers import ExactScores, Ranking


def test_percentiles() -> None:
    assert percentiles([1.0, 2.0, 3.0, 4.0, 100.0])["p50"] == 3.0
    assert percentiles([float(v) for v in range(1, 101)])["p99"] == 99.0


def test_search_report_on_a_real_index(tiny_index: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    assert bench_main(["search", "--index", str(tiny_index), "--output", str(out), "--latency-queries", "8"]) == 0
    report = json.loads(out.read_text())
    # text -> image recall through FAISS flat equals an exact ranking of the index's own stored vectors
    engine = SearchEngine.open(tiny_index)
    try:
        images, texts = engine.reader.stores["images"], engine.reader.stores["texts"]
        row_of = {item_id: row for row, item_id in enumerate(images.ids)}
        relevant = [{row_of[text_id.split("#")[0]]} for text_id in texts.ids]
        # every image scored by the search path's own exact dense scoring (identical images tie exactly, and a
        # tie counts against the query in both)
        every = np.arange(len(images.ids))
        scoring = ExactScores(images, engine.reader.vocab_size)
        exact = success_of_lists([Ranking(every, scoring.dense(q, every)) for q in stored_queries(texts)], relevant)
    finally:
        engine.close()
    assert report["quality"]["t2i"]["dense"] == pytest.approx(exact, abs=1e-6)
    assert 0 < exact["R@10"] < 100  # the tiny model is neither perfect nor useless: the comparison can tell
    assert report["latency_one_thread"]["search_only"]["hybrid"]["n"] == 8
    assert report["sizes"]["images"]["count"] == 32


def test_synthetic_corpus_follows_the_statistics(tiny_index: Path) -> None:
    store = SearchEngine.open(tiny_index).reader.stores["images"]
    stats = CorpusStatistics.of(store)
    corpus = generate(stats, 500, chunk=128)
    ids, _ = corpus.sparse.row(7)
    assert np.all(np.diff(ids) > 0)  # distinct, ascending
    assert corpus.dense.shape == (500, store.dense.shape[1])
    assert np.allclose(np.linalg.norm(corpus.dense, axis=1), 1.0, atol=1e-5)
    assert len(corpus.sparse) == 500
    assert set(np.unique(corpus.sparse.indices)) <= set(stats.token_ids)
    assert abs(corpus.sparse.terms_per_row().mean() - stats.terms_per_item.mean()) <= 0.15 * stats.terms_per_item.mean()
    assert set(np.unique(corpus.sparse.values)) <= set(stats.weights)  # weights are observed ones, re-ranked
    for i in range(len(corpus.sparse)):
        assert np.all(np.diff(corpus.sparse.row(i)[0]) > 0)
    assert np.array_equal(generate(stats, 500, chunk=128).dense, corpus.dense)  # seeded: reproducible


def test_synthetic_items_are_coherent_mixtures() -> None:
    """Two real items with disjoint terms and orthogonal dense vectors. Both sides of an item come from one mixture:
    most of its terms belong to the source its dense vector leans to, and where both sources' strongest terms are
    kept, the dominant one's carries the largest weight. Document frequencies and weights stay the observed ones."""
    real = SparseRows(np.array([0, 3, 6]), np.array([1, 2, 3, 4, 5, 6], np.int32),
                      np.array([1.0, 0.9, 0.8, 1.0, 0.9, 0.8], np.float32))
    stats = CorpusStatistics.of_vectors(real, np.eye(2, dtype=np.float32))
    corpus = generate(stats, 2000, noise=0.0, chunk=256)
    dominant_shares, checked = [], 0
    for i in range(len(corpus.sparse)):
        terms, weights = corpus.sparse.row(i)
        if abs(corpus.dense[i, 0] - corpus.dense[i, 1]) < 1e-6 or terms.size == 0:
            continue  # both draws were the same source, or no source dominates
        dominant = {1, 2, 3} if corpus.dense[i, 0] > corpus.dense[i, 1] else {4, 5, 6}
        dominant_shares.append(np.mean([t in dominant for t in terms.tolist()]))
        if {1, 4} <= set(terms.tolist()):
            checked += 1
            assert weights[terms == min(dominant)][0] == weights.max()
    assert checked > 50 and np.mean(dominant_shares) > 0.55  # lam is uniform on (0.3, 0.7): about 0.6
    df_share = np.bincount(corpus.sparse.indices, minlength=7)[1:] / len(corpus.sparse)
    assert np.allclose(df_share, 0.5, atol=0.05)  # each term is in half of the real items
    assert abs(corpus.sparse.terms_per_row().mean() - 3.0) < 0.15
    assert set(np.unique(corpus.sparse.values)) <= {np.float32(v) for v in (1.0, 0.9, 0.8)}


def test_missing_index_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert bench_main(["search", "--index", str(tmp_path / "none"), "--output", str(tmp_path / "r.json")]) == 2
    assert "index directory not found" in caplog.text
