"""Search-time knobs against recall at one corpus size: each approximate engine's latency/overlap trade-off.

The scale tables measure every engine at one fixed setting (Duet hybrid 100 candidates per leg, HNSW efSearch 64,
Seismic query_cut 20), and at 1M items those settings lose a third or more of the exact top 10. Here each engine's
own knob is swept on the same synthetic corpus as the scale point of that size (same generator, same seed):
Duet hybrid's candidate_k, FAISS HNSW's efSearch, Seismic's query_cut. Every row is measured like a scale-table
row: overlap@10 with exact brute force of the same scoring, p50/p95/p99 at one thread, batched queries per
second. Exact brute force per mode is the reference line. Indexes are built once per engine; only search-time
settings change.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from benchmarks.compare import GroundTruth, Measurement, exact_reference, set_threads
from benchmarks.peers import (
    ExactEngine,
    HNSWEngine,
    PeerUnavailableError,
    SeismicEngine,
)
from benchmarks.scale import caption_queries, synthetic_index
from benchmarks.synthetic import GENERATOR
from core.progress import progress_bar
from indexer.params import MODES, SearchParams
from indexer.query import Query
from indexer.search import SearchEngine

_logger = logging.getLogger("benchmarks.knobs")


class KnobGrid(BaseModel):
    """The values swept per engine; an empty tuple leaves that engine out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidate_k: tuple[int, ...] = Field((100, 300, 1000, 3000), description="Duet hybrid: candidates per leg")
    ef_search: tuple[int, ...] = Field((64, 128, 256, 512, 1024), description="FAISS HNSW (M 32) efSearch")
    query_cut: tuple[int, ...] = Field((10, 20, 40, 80), description="Seismic query terms kept (heap 0.7)")

    @field_validator("candidate_k", "ef_search", "query_cut")
    @classmethod
    def _positive(cls, values: tuple[int, ...]) -> tuple[int, ...]:
        if any(v <= 0 for v in values):
            raise ValueError("knob values are positive counts")
        return values


def knob_sweep(engine: SearchEngine, side: str, queries: Sequence[Query], *, grid: KnobGrid, peers: Sequence[str],
               work: Path, threads: int = 1, batch_threads: int = 2) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of (engine, mode, family, knob, value) with overlap@10 and latency; exact rows have knob None."""
    vectors, _, exact = exact_reference(engine, side)
    measure = Measurement(GroundTruth(exact, queries), None, len(queries), threads, batch_threads)
    hnsw = grid.ef_search if "hnsw" in peers else ()
    seismic = grid.query_cut if "seismic" in peers else ()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    with progress_bar(total=len(MODES) + len(grid.candidate_k) + len(hnsw) + len(seismic), desc="knob settings",
                      unit="setting") as bar:

        def add(row: dict[str, Any], family: str, knob: str | None, value: int | None) -> None:
            rows.append({**row, "family": family, "knob": knob, "value": value})
            bar.update(1)

        for mode in MODES:
            add(measure.peer(ExactEngine(exact, mode)), "exact", None, None)
        for k in grid.candidate_k:
            add(measure.duet(engine, SearchParams(side=side, mode="hybrid", candidate_k=k), label=f"duet-c{k}"),
                "duet", "candidate_k", k)
        if hnsw:
            set_threads(batch_threads)
            graph = HNSWEngine(vectors, ef_search=hnsw[0])
            for ef in hnsw:
                graph.set_ef_search(ef)
                add(measure.peer(graph), "faiss-hnsw", "ef_search", ef)
            del graph
            gc.collect()
        if seismic:
            try:
                index = SeismicEngine(vectors, work, threads=batch_threads, query_cut=seismic[0])
            except PeerUnavailableError as e:
                _logger.warning("%s", e)
                notes.append(f"seismic: {e}")
                bar.update(len(seismic))
            else:
                for cut in seismic:
                    index.set_search(query_cut=cut, heap_factor=index.heap_factor)
                    add(measure.peer(index), "seismic", "query_cut", cut)
                del index
                gc.collect()
    return rows, notes


def knob_point(real: SearchEngine, items: int, work: Path, *, grid: KnobGrid, peers: Sequence[str],
               queries: int = 100, threads: int = 1, batch_threads: int = 2) -> dict[str, Any]:
    """The sweep on the synthetic corpus of ``items`` items (the scale point's corpus, built again)."""
    sample = caption_queries(real, queries)
    with synthetic_index(real, items, work, batch_threads=batch_threads) as built:
        rows, notes = knob_sweep(built.engine, "images", sample, grid=grid, peers=peers, work=work,
                                 threads=threads, batch_threads=batch_threads)
    return {"items": items, "generator": GENERATOR, "grid": grid.model_dump(mode="json"), "queries": len(sample),
            "rows": rows, "unavailable": notes}
