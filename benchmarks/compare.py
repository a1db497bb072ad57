"""Duet side by side with exact brute force and the peers, on the same vectors, queries and thread count.

Per engine and mode: recall against relevance (when the corpus has judgements), overlap@10 with the exact top 10
of the same scoring rule (recall against ground truth), latency p50/p95/p99 one query at a time, queries per second
batched, build time and index bytes; ratios are to Duet's own path in the same mode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peers import (
    MODES,
    DuetEngine,
    Engine,
    ExactEngine,
    HNSWEngine,
    MilvusLiteEngine,
    MilvusLiteStore,
    PeerUnavailableError,
    Scoring,
    SeismicEngine,
    Vectors,
)
from benchmarks.recall import KS, overlap_at_k, recall_at_k
from benchmarks.search_bench import time_calls
from core.progress import progress
from indexer.search import Query, SearchEngine

_logger = logging.getLogger("benchmarks.compare")

PEERS = ("hnsw", "milvus", "seismic")
TOP_K = max(KS)


def set_threads(threads: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def build_engines(engine: SearchEngine, side: str, peers: Sequence[str], work: Path, *, candidate_k: int = 100,
                  threads: int = 1) -> tuple[list[Engine], list[str], list[Any]]:
    """Duet's modes, exact per mode, then each requested peer; returns (engines, unavailable notes, closables)."""
    unknown = set(peers) - set(PEERS)
    if unknown:
        raise ValueError(f"unknown peers {sorted(unknown)}; choose from {PEERS}")
    store = engine.stores[side]
    vectors = Vectors(np.asarray(store.dense, np.float32), store.sparse)
    scoring = Scoring.of(engine)
    engines: list[Engine] = [DuetEngine(engine, side, mode, candidate_k=candidate_k) for mode in MODES]
    engines += [ExactEngine(vectors, mode, scoring) for mode in MODES]
    notes: list[str] = []
    closables: list[Any] = []
    for peer in peers:
        _logger.info("building peer %s over %d items", peer, len(vectors))
        try:
            if peer == "hnsw":
                engines.append(HNSWEngine(vectors))
            elif peer == "seismic":
                engines.append(SeismicEngine(vectors, work, threads=threads))
            elif peer == "milvus":
                milvus = MilvusLiteStore(vectors, work)
                closables.append(milvus)
                engines += [MilvusLiteEngine(milvus, mode, scoring, candidate_k=candidate_k) for mode in MODES]
        except PeerUnavailableError as e:
            _logger.warning("%s", e)
            notes.append(f"{peer}: {e}")
    return engines, notes, closables


def compare(engines: Sequence[Engine], queries: Sequence[Query], *, relevant: Sequence[set[int]] | None,
            latency_queries: int = 200, threads: int = 1, batch_threads: int = 2) -> list[dict[str, Any]]:
    """One row per (engine, mode); ``relevant`` None for synthetic corpora (overlap with exact only)."""
    exact = {e.mode: e for e in engines if isinstance(e, ExactEngine)}
    step = max(1, len(queries) // latency_queries)
    timed = list(queries)[::step][:latency_queries]
    rows: list[dict[str, Any]] = []
    for e in progress(engines, desc="engines", unit="engine"):
        set_threads(batch_threads)
        started = time.perf_counter()
        found = e.search_batch(queries, TOP_K, batch_threads)
        batch_seconds = time.perf_counter() - started
        set_threads(threads)
        overlap = ground_truth_overlap(exact[e.mode], queries, found)
        row: dict[str, Any] = {"engine": e.name, "mode": e.mode, "build_seconds": e.build_seconds,
                               "size_bytes": e.size_bytes(), "overlap@10": overlap,
                               "latency_ms": time_calls(lambda q, e=e: e.search(q, TOP_K), timed),
                               "batch_qps": len(queries) / batch_seconds, "batch_threads": batch_threads}
        if relevant is not None:
            row["recall"] = recall_at_k([list(f) for f in found], relevant)
        rows.append(row)
    _add_ratios(rows)
    return rows


def ground_truth_overlap(exact: ExactEngine, queries: Sequence[Query], found: Sequence[np.ndarray], *,
                         chunk: int = 256) -> float:
    """Mean overlap@10 with exact brute force, tie-aware, scoring the queries in chunks."""
    shares: list[float] = []
    for start in range(0, len(queries), chunk):
        shares += overlap_at_k(found[start:start + chunk], exact.scores(queries[start:start + chunk]), TOP_K)
    return 100.0 * float(np.mean(shares))


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
