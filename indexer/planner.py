"""How a shard answers one search: its plan, chosen per search from the exact number of rows it may return.

  exact  brute force over the allowed rows: both legs' exact scores from the forward store (dense dot products,
         sparse dot products over the full query through the term postings), each leg's top by its exact score.
         Chosen when the rows a filter allows (or all of a shard's live rows) are at most ``EXACT_ROWS``: there,
         scoring every row costs less than searching the indexes, and the answer is exact whatever the filter's
         selectivity (a graph index searched under a selective filter loses most of its recall).
  index  the legs over their indexes (FAISS, Lucene impacts, the delta as a leg), with the filter inside: FAISS
         skips rows outside it through an ``IDSelectorBitmap``, Lucene's candidates are filtered after the search
         with an over-fetch sized by the filter's selectivity (``Filtered``), then every candidate is rescored
         exactly on both legs as always.
A search may ask for either plan (``SearchParams.plan``). A sharded collection plans each shard on its own; the
merge (indexer/merge.py) is the same whichever plan each chose, since each answers its legs' candidates with exact
scores.

The exact plan's legs: ``dense`` and ``sparse`` (rows with a positive sparse score, as an inverted index finds
them) by their exact scores; a hybrid search fused by weights ranks every allowed row by its fused score (``fused``:
a function of the row alone, so each shard's top merges into the collection's); a fusion by ranks (RRF) fuses the
exact top ``candidate_k`` of each leg.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final, Literal

import numpy as np

from indexer.query import Query
from indexer.searchers import Candidates, Fuse, Ranking, RowScorer, Searcher, top_rows
from indexer.segments import OverFetching

Plan = Literal["exact", "index"]
PlanChoice = Literal["auto", "exact", "index"]
PLANS: Final = ("exact", "index")
# At or under this many allowed rows the exact plan runs. Measured on 100,000 synthetic items, one thread, hybrid top
# 10 (docs/benchmarks/filtered-100k, `python -m benchmarks filtered`): exact over all 100,000 rows 4.3 ms p50 against
# 5.7 ms through the indexes (HNSW + Lucene, 99.6% overlap@10); a 10% filter 2.7 ms exact against 21.9 ms through
# the indexes (Lucene over-fetching 20x, the graph searched under the filter).
EXACT_ROWS: Final = 100_000


def choose_plan(requested: PlanChoice, allowed_rows: int, *, exact_rows: int = EXACT_ROWS) -> Plan:
    """The plan of one shard's search over ``allowed_rows`` rows (the filter's, else the shard's live rows)."""
    if requested != "auto":
        return requested
    return "exact" if allowed_rows <= exact_rows else "index"


class ExactSearcher:
    """The exact plan over a fixed set of rows: every row scored on both legs, each leg's exact top."""

    def __init__(self, rows: np.ndarray, scores: RowScorer, fuse: Fuse, *, mode: str, fusion: str,
                 candidate_k: int) -> None:
        """``rows``: the allowed global rows (sorted); ``mode``: dense, sparse or hybrid; ``fusion``: weighted or
        rrf."""
        self.rows, self.scores, self.fuse = rows, scores, fuse
        self.mode, self.fusion = mode, fusion
        # a fusion by ranks fuses each leg's top candidate_k, as the index plan does; every other ranking is a
        # function of the row alone, so the top k is enough
        self.candidate_k: int | None = candidate_k if mode == "hybrid" and fusion == "rrf" else None

    def gather(self, queries: Sequence[Query], k: int) -> tuple[list[Candidates], dict[str, float]]:
        started = time.perf_counter()
        depth = min(max(k, self.candidate_k or 0), int(self.rows.size))
        gathered = []
        for query in queries:
            dense = self.scores.dense(query, self.rows)
            sparse = self.scores.sparse(query, self.rows)
            legs: dict[str, Ranking] = {}
            if self.mode == "hybrid" and self.fusion != "rrf":
                legs["fused"] = top_rows(self.rows, self.fuse(dense, sparse), depth)
            else:
                if self.mode in ("dense", "hybrid"):
                    legs["dense"] = top_rows(self.rows, dense, depth)
                if self.mode in ("sparse", "hybrid"):
                    matched = sparse > 0
                    legs["sparse"] = top_rows(self.rows[matched], sparse[matched], depth)
            found = np.unique(np.concatenate([leg.rows for leg in legs.values()]))
            at = np.searchsorted(self.rows, found)
            gathered.append(Candidates(legs, found, dense[at], sparse[at]))
        return gathered, {"exact_ms": (time.perf_counter() - started) * 1000}


class Filtered(OverFetching):
    """A base leg under a filter, over-fetching by the filter's selectivity. ``allowed``: a mask over the leg's rows
    (the filter, less deleted rows)."""

    def __init__(self, leg: Searcher, allowed: np.ndarray, allowed_count: int) -> None:
        super().__init__(leg)
        self.allowed, self.allowed_count = allowed, allowed_count

    def kept(self, rows: np.ndarray) -> np.ndarray:
        return self.allowed[rows]

    def depths(self, k: int) -> tuple[int, int]:
        rows = int(self.allowed.size)
        return min(rows, 2 * -(-k * rows // max(1, self.allowed_count)) + 8), rows

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        k = min(k, self.allowed_count)
        if k == 0:
            return [Ranking(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in queries]
        return super().search_batch(queries, k)
