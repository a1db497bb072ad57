"""The inverted-file dense index under a filter: probe the lists nearest the query that hold the filter's rows.

An IVF index scores only the rows of the ``nprobe`` lists whose centroids are nearest the query. Under a filter
that plain rule fails two ways: a selective filter leaves few allowed rows in those lists (too few candidates), and
a filter correlated with the query (a region far from it) leaves none. ``FilteredIvfLeg`` probes lists nearest
first, skipping lists without an allowed row, until the allowed rows they hold reach the filter's share of the rows
an unfiltered search scores (``nprobe`` lists of average size), at least ``PROBED_ROWS_SHARE`` of them and
``ROWS_PER_HIT`` per row asked for. FAISS then scores only the allowed rows of those lists (an ``IDSelectorBitmap``),
through ``search_preassigned`` with the chosen lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.query import Query
from indexer.searchers import Ranking, ragged_positions, ranking_of

PROBE_CHUNK = 64  # lists whose allowed rows are counted together while choosing the probes
PROBED_ROWS_SHARE = 0.25  # allowed rows to score under a filter, as a share of the rows an unfiltered search scores
ROWS_PER_HIT = 4  # allowed rows scored per row asked for, at least
COUNTED_CHUNKS = 8  # chunks of the nearest lists counted one by one before every list's rows are counted at once


@dataclass(frozen=True)
class IvfLists:
    """Which rows each list of an IVF index holds: list l's rows are ``rows[offsets[l]:offsets[l+1]]``."""

    offsets: np.ndarray  # (nlist + 1,) int64
    rows: np.ndarray  # (ntotal,) int64
    centroids: np.ndarray  # (nlist, d) float32: a list's centroid (its coarse score is the inner product)
    list_of_row: np.ndarray  # (ntotal,) int32: the list each row is in

    @classmethod
    def of(cls, index: Any) -> IvfLists | None:
        """The lists of an IVF index (None for another kind)."""
        import faiss

        ops: Any = faiss  # its type stubs lack the inverted-list accessors
        inner = ops.extract_index_ivf(index) if isinstance(ops.downcast_index(index), ops.IndexIVF) else None
        if inner is None or inner.metric_type != ops.METRIC_INNER_PRODUCT:
            return None
        lists = inner.invlists
        sizes = np.array([lists.list_size(n) for n in range(inner.nlist)], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        rows = np.empty(int(offsets[-1]), np.int64)
        for n in range(inner.nlist):
            if sizes[n]:
                rows[offsets[n]:offsets[n + 1]] = ops.rev_swig_ptr(lists.get_ids(n), int(sizes[n]))
        centroids = inner.quantizer.reconstruct_n(0, inner.nlist).astype(np.float32)
        list_of_row = np.empty(rows.size, np.int32)
        list_of_row[rows] = np.repeat(np.arange(inner.nlist, dtype=np.int32), sizes)
        return cls(offsets, rows, centroids, list_of_row)

    @property
    def count(self) -> int:
        return int(self.offsets.size - 1)

    def allowed_per_list(self, allowed: np.ndarray) -> np.ndarray:
        """How many allowed rows each list holds (one pass over the allowed rows: for a selective filter)."""
        return np.bincount(self.list_of_row[np.flatnonzero(allowed)], minlength=self.count)

    def probes(self, order: np.ndarray, per_list: np.ndarray, target: int) -> np.ndarray:
        """The lists to probe, nearest first (``order``): those holding an allowed row (``per_list``: how many each
        holds), until they hold ``target`` allowed rows (or every list is taken)."""
        running = np.cumsum(per_list[order])
        lists = order[:int(np.searchsorted(running, target)) + 1]
        return lists[per_list[lists] > 0]

    def nearest_probes(self, order: np.ndarray, allowed: np.ndarray, target: int) -> np.ndarray | None:
        """The same lists, counting the allowed rows of the nearest lists only (a broad filter: the first lists
        hold enough); None when ``COUNTED_CHUNKS`` chunks of lists do not."""
        chosen: list[np.ndarray] = []
        covered = 0
        for start in range(0, min(order.size, COUNTED_CHUNKS * PROBE_CHUNK), PROBE_CHUNK):
            lists = order[start:start + PROBE_CHUNK]
            starts, ends = self.offsets[lists], self.offsets[lists + 1]
            lengths = ends - starts
            kept = allowed[self.rows[ragged_positions(starts, lengths)]]
            firsts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            counts = np.add.reduceat(kept, firsts) if kept.size else np.zeros(lists.size, np.int64)
            counts = np.where(lengths > 0, counts, 0)  # reduceat repeats the next value for an empty list
            running = covered + np.cumsum(counts)
            enough = np.flatnonzero(running >= target)
            last = int(enough[0]) + 1 if enough.size else lists.size
            chosen.append(lists[:last][counts[:last] > 0])
            covered = int(running[last - 1])
            if enough.size:
                return np.concatenate(chosen)
        return None if order.size > COUNTED_CHUNKS * PROBE_CHUNK else np.concatenate(chosen)


class FilteredIvfLeg:
    """Dense leg over an IVF index under a filter (``allowed``: a mask over the index's rows): the probes are
    chosen per query by ``IvfLists.probes``, and only allowed rows are scored."""

    def __init__(self, index: Any, lists: IvfLists, allowed: np.ndarray, allowed_count: int, *,
                 name: str = "faiss") -> None:
        """``allowed_count``: the allowed rows (the caller counted them)."""
        import faiss

        ops: Any = faiss
        self.index, self.lists, self.allowed, self.name = index, lists, allowed, name
        self.ivf = ops.extract_index_ivf(index)
        # the rows an unfiltered search scores (nprobe lists of average size), a share of them as allowed rows: the
        # filter's own share, at least PROBED_ROWS_SHARE (a broad filter scores about what an unfiltered search does)
        share = max(PROBED_ROWS_SHARE, allowed_count / max(1, int(allowed.size)))
        self.target = max(1, round(share * self.ivf.nprobe * int(allowed.size) / max(1, lists.count)))
        self._per_list: np.ndarray | None = None  # every list's allowed rows, counted once if a query needs them
        bits = np.packbits(np.asarray(allowed, bool), bitorder="little")
        self.selector = ops.IDSelectorBitmap(int(allowed.size), ops.swig_ptr(bits))
        self.selector.referenced = bits  # the bitmap must live as long as the selector

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        import faiss

        ops: Any = faiss
        out = []
        for query in queries:
            vector = np.ascontiguousarray(query.dense, np.float32)[None, :]
            coarse = self.lists.centroids @ vector[0]
            order = np.argsort(-coarse, kind="stable")
            target = max(self.target, ROWS_PER_HIT * k)  # a deeper ask scores more of the allowed rows
            probes = self.lists.nearest_probes(order, self.allowed, target)
            if probes is None:  # a selective filter (or one far from the query): every list's rows counted once
                if self._per_list is None:
                    self._per_list = self.lists.allowed_per_list(self.allowed)
                probes = self.lists.probes(order, self._per_list, target)
            if probes.size == 0:
                out.append(Ranking(np.zeros(0, np.int64), np.zeros(0, np.float32)))
                continue
            parameters = ops.SearchParametersIVF()
            parameters.nprobe = int(probes.size)
            parameters.sel = self.selector
            keys = np.ascontiguousarray(probes[None, :], np.int64)
            distances = np.ascontiguousarray(coarse[probes][None, :], np.float32)
            scores = np.empty((1, k), np.float32)
            rows = np.empty((1, k), np.int64)
            # the C entry point: FAISS's Python wrapper of search_preassigned takes no search parameters
            self.ivf.search_preassigned_c(1, ops.swig_ptr(vector), k, ops.swig_ptr(keys), ops.swig_ptr(distances),
                                          ops.swig_ptr(scores), ops.swig_ptr(rows), False, parameters)
            out.append(ranking_of(rows[0], scores[0]))
        return out
