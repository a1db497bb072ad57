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
from collections.abc import Callable, Sequence
from typing import Final, Literal

import numpy as np

from indexer.dense_first import DENSE_DEPTH, FusedBound, dense_depths
from indexer.filters import Allowed
from indexer.query import Query
from indexer.searchers import Candidates, Fuse, Ranking, RowScorer, Searcher, top_rows
from indexer.segments import OverFetching

Plan = Literal["exact", "index"]
PlanChoice = Literal["auto", "exact", "index"]
PLANS: Final = ("exact", "index")
# At or under this many allowed rows the exact plan runs over a side whose dense index is exact (flat): its index
# plan scans every row, so brute force over the allowed rows is never slower. Measured on 100,000 synthetic items,
# one thread, hybrid top 10 (docs/benchmarks/filtered-100k, `python -m benchmarks filtered`): exact over all 100,000
# rows 4.3 ms p50 against 5.7 ms through the indexes.
EXACT_ROWS: Final = 100_000
# Over a side with an approximate dense index (IVF, HNSW: built above EXACT_ROWS items) the index plan's time barely
# grows with the allowed rows, the exact plan's does: exact at or under this many. Measured on 1M synthetic items, one
# thread, hybrid top 10, p50 of 50 validation caption queries (docs/benchmarks/filtered-1m's index): a filter keeping a
# uniform share of the rows, 20,000 rows exact 2.0 ms against 3.4 ms through the indexes, 30,000 rows 3.0 against
# 3.0 ms, 50,000 rows 4.8 against 2.5 ms; a region far from the query (its rows listed by a keyword's posting), under
# 20,000 rows 1.6 against 1.8 ms, 30,000-35,000 rows 2.7 against 1.8 ms, 40,000-45,000 rows 4.0 against 3.1 ms.
INDEXED_EXACT_ROWS: Final = 30_000
# A Lucene hit costs about as much as scoring this many rows' sparse vectors exactly (1M synthetic items, 10 caption
# queries, one thread: Lucene about 12 us a hit more from 100 to 10,000 hits; 70,000 rows scored exactly from the
# forward store 13 ms, 1M rows 126 ms; a side of up to 100,000 items scores through its term postings, faster still).
EXACT_ROWS_PER_HIT: Final = 60


def choose_plan(requested: PlanChoice, allowed_rows: int, *, approximate_index: bool = False) -> Plan:
    """The plan of one shard's search over ``allowed_rows`` rows (the filter's, else the shard's live rows);
    ``approximate_index``: the side's dense leg costs about the same whatever the filter allows (an approximate
    index, or every row scored on a device: indexer/device_dense.py)."""
    if requested != "auto":
        return requested
    return "exact" if allowed_rows <= (INDEXED_EXACT_ROWS if approximate_index else EXACT_ROWS) else "index"


class ExactSearcher:
    """The exact plan over a fixed set of rows: each leg's exact top over every row.

    A leg the ranking does not need over every row is scored only for the rows found: a dense search scores every
    row densely and its top sparsely, a sparse search the other way round. A hybrid search fused by weights scores
    every row densely, its dense top (``DENSE_DEPTH``, deepening) on both legs, and every row sparsely only when the
    bound (indexer/dense_first.py) cannot settle its top k from those: the dense leg is exact, so is the answer."""

    def __init__(self, rows: np.ndarray, scores: RowScorer, fuse: Fuse, *, mode: str, fusion: str,
                 candidate_k: int, bound: FusedBound | None = None) -> None:
        """``rows``: the allowed global rows (sorted); ``mode``: dense, sparse or hybrid; ``fusion``: weighted or
        rrf; ``bound``: a weighted hybrid search's, None for another."""
        self.rows, self.scores, self.fuse = rows, scores, fuse
        self.mode, self.fusion, self.bound = mode, fusion, bound
        # a fusion by ranks fuses each leg's top candidate_k, as the index plan does; every other ranking is a
        # function of the row alone, so the top k is enough
        self.candidate_k: int | None = candidate_k if mode == "hybrid" and fusion == "rrf" else None

    def gather(self, queries: Sequence[Query], k: int) -> tuple[list[Candidates], dict[str, float]]:
        started = time.perf_counter()
        depth = min(max(k, self.candidate_k or 0), int(self.rows.size))
        gathered = [self._gather_one(query, depth) for query in queries]
        return gathered, {"exact_ms": (time.perf_counter() - started) * 1000}

    def _gather_one(self, query: Query, depth: int) -> Candidates:
        rows = self.rows
        dense = self.scores.dense(query, rows) if self.mode != "sparse" else None
        sparse: np.ndarray | None = None
        legs: dict[str, Ranking] = {}
        if self.mode == "hybrid" and self.fusion != "rrf":
            assert dense is not None
            settled = self._settled_by_dense(query, dense, depth) if self.bound is not None else None
            if settled is not None:
                legs["fused"] = settled
            else:
                sparse = self.scores.sparse(query, rows)
                legs["fused"] = top_rows(rows, self.fuse(dense, sparse), depth)
        else:
            if dense is not None:
                legs["dense"] = top_rows(rows, dense, depth)
            if self.mode in ("sparse", "hybrid"):
                sparse = self.scores.sparse(query, rows)
                matched = sparse > 0
                legs["sparse"] = top_rows(rows[matched], sparse[matched], depth)
        found = np.unique(np.concatenate([leg.rows for leg in legs.values()]))
        at = np.searchsorted(rows, found)
        return Candidates(legs, found, dense[at] if dense is not None else self.scores.dense(query, found),
                          sparse[at] if sparse is not None else self.scores.sparse(query, found))

    def _settled_by_dense(self, query: Query, dense: np.ndarray, depth: int) -> Ranking | None:
        """The fused top ``depth`` from the dense top alone (deepening as ``dense_depths`` does), when the bound
        settles it."""
        assert self.bound is not None
        for dense_depth in dense_depths(max(depth, DENSE_DEPTH), int(self.rows.size)):
            if dense_depth >= self.rows.size:
                return None  # every row: as cheap to score them all on both legs
            top = top_rows(self.rows, dense, dense_depth)
            fused = np.asarray(self.fuse(top.scores, self.scores.sparse(query, top.rows)), np.float32)
            if self.bound.settles_top(query, fused, depth, float(top.scores[-1])):
                return top_rows(top.rows, fused, depth)
        return None


class Filtered(OverFetching):
    """A base leg under a filter, over-fetching by the filter's selectivity (``allowed``: over the leg's rows, less
    deleted ones). Given the leg's exact scores (``exact``), a query the over-fetch would ask deeper than
    ``EXACT_ROWS_PER_HIT`` allowed rows per hit has every allowed row scored instead: a filter far from the query
    (few of the leg's top rows pass it) otherwise doubles the ask until it reaches them."""

    def __init__(self, leg: Searcher, allowed: Allowed,
                 exact: Callable[[Query, np.ndarray], np.ndarray] | None = None) -> None:
        super().__init__(leg)
        self.allowed, self.exact = allowed, exact

    def kept(self, rows: np.ndarray) -> np.ndarray:
        return self.allowed.mask[rows]

    def depths(self, k: int) -> tuple[int, int]:
        rows = int(self.allowed.mask.size)
        return min(rows, 2 * -(-k * rows // max(1, self.allowed.count)) + 8), rows

    def ranked_alone(self, depth: int) -> Callable[[Query, int], Ranking] | None:
        if self.exact is None or self.allowed.count > EXACT_ROWS_PER_HIT * depth:
            return None
        return self._every_allowed_row

    def _every_allowed_row(self, query: Query, k: int) -> Ranking:
        """The top k of the allowed rows by their exact scores (rows scoring 0 left out, as an inverted index
        never finds them)."""
        assert self.exact is not None  # ranked_alone offers this only with exact scores
        rows = self.allowed.rows
        scores = self.exact(query, rows)
        matched = scores > 0
        return top_rows(rows[matched], scores[matched], k)

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        k = min(k, self.allowed.count)
        if k == 0:
            return [Ranking(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in queries]
        return super().search_batch(queries, k)
