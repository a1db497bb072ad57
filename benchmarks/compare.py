"""Duet side by side with exact brute force and the peers, on the same vectors, queries and thread count.

Per engine and mode: recall against relevance (when the corpus has judgements), overlap@10 with the exact top 10
of the same scoring rule (recall against ground truth), latency p50/p95/p99 one query at a time, queries per second
batched, build time and index bytes; ratios are to Duet's own path in the same mode.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peers import (
    ExactEngine,
    ExactScorer,
    HNSWEngine,
    MilvusLiteEngine,
    MilvusLiteStore,
    Peer,
    PeerUnavailableError,
    Scoring,
    SeismicEngine,
    Vectors,
    duet_size_bytes,
)
from benchmarks.recall import KS, exact_top_k, overlap_with
from benchmarks.search_bench import time_calls
from core.metrics import success_of_lists
from core.progress import progress_bar
from indexer.params import DEFAULT_CANDIDATE_K, MODES, SearchParams
from indexer.query import Query
from indexer.search import SearchEngine
from indexer.searchers import Searcher, search_one

_logger = logging.getLogger("benchmarks.compare")

PEERS = ("hnsw", "milvus", "seismic")
PEER_MODES = {"hnsw": 1, "milvus": len(MODES), "seismic": 1}  # engines (rows) per peer
TOP_K = max(KS)


def set_threads(threads: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def side_by_side(engine: SearchEngine, side: str, queries: Sequence[Query], *, relevant: Sequence[set[int]] | None,
                 peers: Sequence[str], work: Path, candidate_k: int = DEFAULT_CANDIDATE_K, latency_queries: int = 200,
                 threads: int = 1, batch_threads: int = 2) -> tuple[list[dict[str, Any]], list[str]]:
    """Duet's modes and exact brute force, then each requested peer; returns (rows, unavailable notes).

    Each peer is built, measured and released before the next one is built: at 1M items the peers' indexes
    together do not fit in 24 GB, one at a time they do. ``relevant`` is None for synthetic corpora.
    """
    unknown = set(peers) - set(PEERS)
    if unknown:
        raise ValueError(f"unknown peers {sorted(unknown)}; choose from {PEERS}")
    vectors, scoring, exact = exact_reference(engine, side)
    measure = Measurement(GroundTruth(exact, queries), relevant, latency_queries, threads, batch_threads)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    with progress_bar(total=2 * len(MODES) + sum(PEER_MODES[p] for p in peers), desc="engines",
                      unit="engine") as bar:
        for mode in MODES:
            rows.append(measure.duet(engine, SearchParams(side=side, mode=mode, candidate_k=candidate_k)))
            bar.update(1)
        for mode in MODES:
            rows.append(measure.peer(ExactEngine(exact, mode)))
            bar.update(1)
        for peer in peers:
            _logger.info("building peer %s over %d items", peer, len(vectors))
            try:
                engines, closables = _build_peer(peer, vectors, scoring, work, candidate_k=candidate_k,
                                                 threads=batch_threads)
            except PeerUnavailableError as e:
                _logger.warning("%s", e)
                notes.append(f"{peer}: {e}")
                bar.update(PEER_MODES[peer])
                continue
            try:
                for e in engines:
                    rows.append(measure.peer(e))
                    bar.update(1)
            finally:
                for closable in closables:
                    closable.close()
                del engines, closables
                gc.collect()
    _add_ratios(rows)
    return rows, notes


def exact_reference(engine: SearchEngine, side: str) -> tuple[Vectors, Scoring, ExactScorer]:
    """One index side's vectors (what the peers index) and the exact brute force over them (the ground truth)."""
    store = engine.reader.stores[side]
    vectors = Vectors(np.asarray(store.dense, np.float32), store.sparse)
    scoring = Scoring.of(engine)
    return vectors, scoring, ExactScorer(vectors, scoring)


def _build_peer(peer: str, vectors: Vectors, scoring: Scoring, work: Path, *, candidate_k: int,
                threads: int) -> tuple[list[Peer], list[Any]]:
    """One peer's engines (one per mode it serves) and what must be closed after measuring them."""
    if peer == "hnsw":
        return [HNSWEngine(vectors)], []
    if peer == "seismic":
        return [SeismicEngine(vectors, work, threads=threads)], []
    milvus = MilvusLiteStore(vectors, work)
    return [MilvusLiteEngine(milvus, mode, scoring, candidate_k=candidate_k) for mode in MODES], [milvus]


class GroundTruth:
    """The exact top 10 of each mode for one query list, scored once and shared by every engine measured
    (at 1M items one exact hybrid pass over 100 queries takes about 40 s)."""

    def __init__(self, exact: ExactScorer, queries: Sequence[Query], *, chunk: int = 256) -> None:
        self.exact, self.queries, self.chunk = exact, list(queries), chunk
        self._top: dict[str, list[np.ndarray]] = {}

    def top(self, mode: str) -> list[np.ndarray]:
        if mode not in self._top:
            self._top[mode] = [rows for start in range(0, len(self.queries), self.chunk)
                               for rows in exact_top_k(self.exact.scores(self.queries[start:start + self.chunk],
                                                                         mode), TOP_K)]
        return self._top[mode]

    def overlap(self, mode: str, found: Sequence[np.ndarray]) -> float:
        """Mean overlap@10 (%) of an engine's results with the exact top 10, tie-aware."""
        return 100.0 * float(np.mean(overlap_with(found, self.top(mode), TOP_K)))


class Measurement:
    """One row per (searcher, mode): batched search with overlap (and recall), then one-query latency (the batch
    of one)."""

    def __init__(self, truth: GroundTruth, relevant: Sequence[set[int]] | None, latency_queries: int,
                 threads: int, batch_threads: int) -> None:
        self.truth, self.queries, self.relevant = truth, truth.queries, relevant
        self.threads, self.batch_threads = threads, batch_threads
        self.timed = self.queries[::max(1, len(self.queries) // latency_queries)][:latency_queries]

    def __call__(self, searcher: Searcher, mode: str, *, build_seconds: float,
                 size_bytes: int | None) -> dict[str, Any]:
        _logger.info("measuring %s (%s)", searcher.name, mode)
        set_threads(self.batch_threads)
        started = time.perf_counter()
        rankings = searcher.search_batch(self.queries, TOP_K)
        batch_seconds = time.perf_counter() - started
        found = [ranking.rows for ranking in rankings]
        set_threads(self.threads)
        row: dict[str, Any] = {"engine": searcher.name, "mode": mode, "build_seconds": build_seconds,
                               "size_bytes": size_bytes, "overlap@10": self.truth.overlap(mode, found),
                               "latency_ms": time_calls(lambda q: search_one(searcher, q, TOP_K), self.timed),
                               "batch_qps": len(self.queries) / batch_seconds, "batch_threads": self.batch_threads}
        if self.relevant is not None:
            row["recall"] = success_of_lists(rankings, self.relevant)
        return row

    def peer(self, peer: Peer) -> dict[str, Any]:
        return self(peer, peer.mode, build_seconds=peer.build_seconds, size_bytes=peer.size_bytes())

    def duet(self, engine: SearchEngine, params: SearchParams, *, label: str = "duet") -> dict[str, Any]:
        """Duet's searcher for ``params`` (its batches on the batch threads), as the service runs it."""
        searcher = engine.reader.searcher(params, threads=self.batch_threads, name=label)
        return self(searcher, params.mode, build_seconds=0.0,
                    size_bytes=duet_size_bytes(engine, params.side, params.mode))


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    duet = {r["mode"]: r for r in rows if r["engine"] == "duet"}
    for row in rows:
        base = duet.get(row["mode"])
        if base is None:
            continue
        row["latency_p50_vs_duet"] = row["latency_ms"]["p50"] / max(1e-9, base["latency_ms"]["p50"])
        row["qps_vs_duet"] = row["batch_qps"] / max(1e-9, base["batch_qps"])
        if row["size_bytes"] and base["size_bytes"]:
            row["size_vs_duet"] = row["size_bytes"] / base["size_bytes"]
