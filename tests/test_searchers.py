"""The searcher protocol: Duet's legs and every benchmark peer answer search_batch(queries, k) the same way, and
the hybrid searcher composes any legs, a peer's included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.peers import (
    ExactEngine,
    ExactScorer,
    HNSWEngine,
    MilvusLiteEngine,
    MilvusLiteStore,
    Peer,
    Scoring,
    SeismicEngine,
    Vectors,
)
from indexer.params import SearchParams, search_fusion
from indexer.query import Query
from indexer.search import SearchEngine
from indexer.searchers import HybridSearcher, Ranking, Searcher, search_one

pytestmark = [pytest.mark.java, pytest.mark.peers]


@pytest.fixture(scope="module")
def engine(tiny_index: Path) -> SearchEngine:
    return SearchEngine.open(tiny_index)


def _queries(engine: SearchEngine, count: int = 12) -> list[Query]:
    store = engine.reader.stores["texts"]
    return [Query(np.asarray(store.dense[r]), *store.sparse.row(r)) for r in range(count)]


def _exact(engine: SearchEngine, side: str) -> tuple[Vectors, Scoring, ExactScorer]:
    store = engine.reader.stores[side]
    vectors = Vectors(np.asarray(store.dense, np.float32), store.sparse)
    scoring = Scoring.of(engine)
    return vectors, scoring, ExactScorer(vectors, scoring)


def _check_contract(searcher: Searcher, queries: list[Query], k: int) -> list[Ranking]:
    """Rows unique and at most k, scores non-increasing, and the batch of one equals the batch."""
    found = searcher.search_batch(queries, k)
    assert len(found) == len(queries)
    for query, ranking in zip(queries, found, strict=True):
        assert ranking.rows.dtype == np.int64 and ranking.rows.shape == ranking.scores.shape
        assert 0 < len(ranking) <= k and np.unique(ranking.rows).size == len(ranking)
        assert np.all(np.diff(ranking.scores) <= 1e-5)
        single = search_one(searcher, query, k)
        assert set(single.rows.tolist()) == set(ranking.rows.tolist())
    return found


def test_every_peer_scores_its_rows_like_the_exact_rule(engine: SearchEngine, tmp_path: Path) -> None:
    """Each dense and sparse searcher's own scores are the exact scores of the rows it returns (Lucene's up to
    its quantisation); hybrid searchers just have to be rankings."""
    vectors, scoring, exact = _exact(engine, "images")
    queries = _queries(engine)
    milvus = MilvusLiteStore(vectors, tmp_path)
    peers: list[Peer] = [ExactEngine(exact, m) for m in ("dense", "sparse", "hybrid")]
    peers += [HNSWEngine(vectors), SeismicEngine(vectors, tmp_path)]
    peers += [MilvusLiteEngine(milvus, m, scoring) for m in ("dense", "sparse", "hybrid")]
    try:
        for peer in peers:
            found = _check_contract(peer, queries, 5)
            if peer.mode == "hybrid":
                continue
            for query, ranking in zip(queries, found, strict=True):
                truth = exact.scores([query], peer.mode)[0][ranking.rows]
                assert np.allclose(ranking.scores, truth, atol=1e-4), peer.name
        # Lucene scores impact products (both sides quantised by the scale), within one rounding step per term
        scale = engine.manifest.quantization["scale"]
        step = 0.5 / scale
        max_doc_mass = max(float(vectors.sparse.row(r)[1].sum()) for r in range(len(vectors)))
        found = _check_contract(engine.reader.sparse_leg("images"), queries, 5)
        for query, ranking in zip(queries, found, strict=True):
            truth = exact.scores([query], "sparse")[0][ranking.rows]
            bound = step * (float(query.term_weights.sum()) + max_doc_mass) + query.term_ids.size * step**2
            assert np.allclose(ranking.scores / scale**2, truth, atol=bound + 1e-6)
    finally:
        milvus.close()


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_duet_searcher_keeps_the_contract_and_exact_scores(engine: SearchEngine, mode: str) -> None:
    _, _, exact = _exact(engine, "images")
    queries = _queries(engine)
    searcher = engine.reader.searcher(SearchParams(side="images", mode=mode, candidate_k=8))
    for query, ranking in zip(queries, _check_contract(searcher, queries, 5), strict=True):
        assert np.allclose(ranking.dense, exact.scores([query], "dense")[0][ranking.rows], atol=1e-5)
        assert np.allclose(ranking.sparse, exact.scores([query], "sparse")[0][ranking.rows], atol=1e-5)
        assert np.allclose(ranking.fused, exact.scores([query], "hybrid")[0][ranking.rows], atol=1e-4)


def test_hybrid_searcher_composes_a_peer_leg(engine: SearchEngine) -> None:
    """A new backend is one more leg: exact brute force in place of FAISS flat, both asked for every item, gives
    Duet's hits exactly; HNSW in its place gives hits whose scores are still exact on both legs."""
    vectors, _, exact = _exact(engine, "images")
    queries = _queries(engine)
    params = SearchParams(side="images", mode="hybrid", candidate_k=len(vectors))
    duet = engine.reader.searcher(params)
    for peer in (ExactEngine(exact, "dense"), HNSWEngine(vectors, ef_search=len(vectors))):
        swapped = HybridSearcher({"dense": peer, "sparse": duet.legs["sparse"]}, engine.reader.exact_scores("images"),
                                 search_fusion(engine.manifest, params))
        for query, ours, theirs in zip(queries, duet.search_batch(queries, 5), swapped.search_batch(queries, 5),
                                       strict=True):
            assert np.allclose(theirs.fused, exact.scores([query], "hybrid")[0][theirs.rows], atol=1e-4)
            if isinstance(peer, ExactEngine):
                assert ours.rows.tolist() == theirs.rows.tolist()


def test_a_hybrid_searcher_needs_a_leg(engine: SearchEngine) -> None:
    with pytest.raises(ValueError, match="at least one leg"):
        HybridSearcher({}, engine.reader.exact_scores("images"), search_fusion(engine.manifest, SearchParams()))


def test_an_exact_dense_score_does_not_depend_on_the_other_rows_scored() -> None:
    """A sharded search scores other candidate sets than one index: each row's score must be the same bits."""
    from dataclasses import dataclass

    from core.encoder import SparseRows
    from indexer.searchers import ExactScores

    @dataclass
    class Vectors:
        dense: np.ndarray
        sparse: SparseRows

    rng = np.random.default_rng(3)
    dense = rng.standard_normal((4000, 384)).astype(np.float32)
    scores = ExactScores(Vectors(dense, SparseRows(np.zeros(4001, np.int64), np.zeros(0, np.int32),
                                                   np.zeros(0, np.float32))), 10)
    query = Query(rng.standard_normal(384).astype(np.float32), np.zeros(0, np.int32), np.zeros(0, np.float32))
    every = scores.dense(query, np.arange(4000))
    for rows in (np.array([7]), np.array([3999, 7, 1200]), np.arange(0, 4000, 3)):
        assert np.array_equal(scores.dense(query, rows), every[rows])
