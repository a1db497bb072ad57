"""The inverted-file dense index under a filter: probe the lists nearest the query that hold the filter's rows.

An IVF index scores only the rows of the ``nprobe`` lists whose centroids are nearest the query. Under a filter
that plain rule fails two ways: a selective filter leaves few allowed rows in those lists (too few candidates), and
a filter correlated with the query (a region far from it) leaves none. ``FilteredIvfLeg`` first counts the allowed
rows of the ``NEAR_SAMPLE`` nearest lists. When they hold the filter's share of their rows (at least ``NEAR_SHARE``
of it), the filter's rows are spread near the query as elsewhere, and the ``nprobe`` nearest lists are probed as
unfiltered, if they hold ``ROWS_PER_HIT`` allowed rows per row asked for: a filter passing 10% of the rows scores a
tenth of the rows an unfiltered search does, and its top 10 lie among them as often. Otherwise the filter's rows
lie away from the query, and lists are probed nearest first, skipping lists without an allowed row, until they
hold the filter's share of the rows an unfiltered search scores, at least ``PROBED_ROWS_SHARE`` of them. FAISS
then scores only the allowed rows of the chosen lists (an ``IDSelectorBitmap``), through ``search_preassigned``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.query import Query
from indexer.searchers import Ranking, ragged_positions, ranking_of

PROBE_CHUNK = 64  # lists whose allowed rows are counted together while choosing the probes
PROBED_ROWS_SHARE = 0.25  # allowed rows scored away from the query, as a share of those an unfiltered search scores
NEAR_SAMPLE = 16  # the nearest lists whose allowed rows tell whether the filter's rows are spread near the query
NEAR_SHARE = 0.5  # the nearest lists hold at least this much of the filter's share: its rows are spread near the query
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

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def allowed_per_list(self, allowed: np.ndarray) -> np.ndarray:
        """How many allowed rows each list holds (every row looked up in list order: a gather and one sum per list
        cost less than finding the allowed rows of a mask that is neither sparse nor dense)."""
        return self._per_list(allowed[self.rows], self.sizes)

    def allowed_in(self, lists: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """How many allowed rows each of ``lists`` holds."""
        lengths = self.sizes[lists]
        return self._per_list(allowed[self.rows[ragged_positions(self.offsets[lists], lengths)]], lengths)

    @staticmethod
    def _per_list(kept: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Sums of ``kept`` (a mask of lists' rows, one list after the other) per list of ``lengths`` rows."""
        counts = np.zeros(lengths.size, np.int64)
        held = lengths > 0  # reduceat sums from each start to the next one, so empty lists are left out
        if held.any():
            firsts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[held]
            counts[held] = np.add.reduceat(kept.view(np.uint8), firsts, dtype=np.int64)
        return counts

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
            counts = self.allowed_in(lists, allowed)
            running = covered + np.cumsum(counts)
            enough = np.flatnonzero(running >= target)
            last = int(enough[0]) + 1 if enough.size else lists.size
            chosen.append(lists[:last][counts[:last] > 0])
            covered = int(running[last - 1])
            if enough.size:
                return np.concatenate(chosen)
        return None if order.size > COUNTED_CHUNKS * PROBE_CHUNK else np.concatenate(chosen)


def nearest_lists(coarse: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` lists with the highest coarse scores, nearest first (a partial sort)."""
    if count >= coarse.size:
        return np.argsort(-coarse, kind="stable")
    nearest = np.argpartition(-coarse, count - 1)[:count]
    return nearest[np.argsort(-coarse[nearest], kind="stable")]


class FilteredIvfLeg:
    """Dense leg over an IVF index under a filter (``allowed``: a mask over the index's rows): the probes are
    chosen per query (``probes_for``), and only allowed rows are scored."""

    def __init__(self, index: Any, lists: IvfLists, allowed: np.ndarray, allowed_count: int, *,
                 name: str = "faiss") -> None:
        """``allowed_count``: the allowed rows (the caller counted them)."""
        import faiss

        ops: Any = faiss
        self.index, self.lists, self.allowed, self.name = index, lists, allowed, name
        self.ivf = ops.extract_index_ivf(index)
        self.share = allowed_count / max(1, int(allowed.size))
        # away from the query: the rows an unfiltered search scores (nprobe lists of average size), a share of them as
        # allowed rows: the filter's own share, at least PROBED_ROWS_SHARE
        scanned = self.ivf.nprobe * int(allowed.size) / max(1, lists.count)
        self.target = max(1, round(max(PROBED_ROWS_SHARE, self.share) * scanned))
        self._per_list: np.ndarray | None = None  # every list's allowed rows, counted once if a query needs them
        bits = np.packbits(np.asarray(allowed, bool), bitorder="little")
        self.selector = ops.IDSelectorBitmap(int(allowed.size), ops.swig_ptr(bits))
        self.selector.referenced = bits  # the bitmap must live as long as the selector

    def probes_for(self, coarse: np.ndarray, k: int) -> np.ndarray:
        """The lists to probe for a query (``coarse``: its score against each list's centroid), nearest first."""
        needed = ROWS_PER_HIT * k
        near = nearest_lists(coarse, min(int(self.ivf.nprobe), coarse.size))
        sample = near[:NEAR_SAMPLE]
        density = self.lists.allowed_in(sample, self.allowed).sum() / max(1, int(self.lists.sizes[sample].sum()))
        spread = density >= NEAR_SHARE * self.share  # the filter's rows lie near the query as much as elsewhere
        if spread and density * int(self.lists.sizes[near].sum()) >= needed:
            return near  # as unfiltered: the same lists, their allowed rows only (a list without one costs a skim)
        order = np.argsort(-coarse, kind="stable")
        target = max(self.target, needed)  # a deeper ask scores more of the allowed rows
        # spread near the query, the nearest lists soon hold enough: count theirs only
        probes = self.lists.nearest_probes(order, self.allowed, target) if spread else None
        if probes is None:  # a selective filter, or one away from the query: every list's rows counted once
            if self._per_list is None:
                self._per_list = self.lists.allowed_per_list(self.allowed)
            probes = self.lists.probes(order, self._per_list, target)
        return probes

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        out = []
        for query in queries:
            vector = np.ascontiguousarray(query.dense, np.float32)[None, :]
            coarse = self.lists.centroids @ vector[0]
            out.append(self._selected(vector, coarse, self.probes_for(coarse, k), k))
        return out

    def _selected(self, vector: np.ndarray, coarse: np.ndarray, probes: np.ndarray, k: int) -> Ranking:
        if probes.size == 0:
            return Ranking(np.zeros(0, np.int64), np.zeros(0, np.float32))
        return self._preassigned(vector, coarse, probes, k, self.selector)

    def _preassigned(self, vector: np.ndarray, coarse: np.ndarray, probes: np.ndarray, k: int,
                     selector: Any) -> Ranking:
        """FAISS's top k of the rows of ``probes`` (those ``selector`` passes, or every one)."""
        import faiss

        ops: Any = faiss
        parameters = ops.SearchParametersIVF()
        parameters.nprobe = int(probes.size)
        if selector is not None:
            parameters.sel = selector
        keys = np.ascontiguousarray(probes[None, :], np.int64)
        distances = np.ascontiguousarray(coarse[probes][None, :], np.float32)
        scores = np.empty((1, k), np.float32)
        rows = np.empty((1, k), np.int64)
        # the C entry point: FAISS's Python wrapper of search_preassigned takes no search parameters
        self.ivf.search_preassigned_c(1, ops.swig_ptr(vector), k, ops.swig_ptr(keys), ops.swig_ptr(distances),
                                      ops.swig_ptr(scores), ops.swig_ptr(rows), False, parameters)
        return ranking_of(rows[0], scores[0])
