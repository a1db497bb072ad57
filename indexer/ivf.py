"""The inverted-file dense index under a filter: the lists nearest the query that hold the filter's rows.

An IVF index scores only the rows of the ``nprobe`` lists whose centroids are nearest the query. Under a filter
that plain rule fails two ways: a selective filter leaves few allowed rows in those lists (too few candidates), and
a filter correlated with the query (a region far from it) leaves none. ``FilteredIvfLeg`` first counts the allowed
rows of the ``NEAR_SAMPLE`` nearest lists. When they hold the filter's share of their rows (at least ``NEAR_SHARE``
of it), the filter's rows are spread near the query as elsewhere, and the ``nprobe`` nearest lists are searched as
unfiltered, FAISS scoring only their allowed rows (an ``IDSelectorBitmap`` through ``search_preassigned``), if they
hold ``ROWS_PER_HIT`` allowed rows per row asked for: a filter passing 10% of the rows scores a tenth of the rows an
unfiltered search does, and its top 10 lie among them as often. Otherwise the filter's rows lie away from the query
(or the ask is deep): the allowed rows of the lists nearest the query are gathered, list after list, until they
reach the filter's share of the rows an unfiltered search scores (at least ``PROBED_ROWS_SHARE`` of them), and are
scored exactly from the stored vectors. Such rows are few and spread thin over many lists (a region of the space
holds rows in half the lists of a 4,096-list index), where a selector would read every row of those lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.query import Query
from indexer.searchers import Ranking, ragged_positions, ranking_of, top_rows

PROBE_CHUNK = 64  # lists whose allowed rows are gathered together, nearest first
PROBED_ROWS_SHARE = 0.25  # allowed rows scored away from the query, as a share of those an unfiltered search scores
NEAR_SAMPLE = 16  # the nearest lists whose allowed rows tell whether the filter's rows are spread near the query
NEAR_SHARE = 0.5  # the nearest lists hold at least this much of the filter's share: its rows are spread near the query
ROWS_PER_HIT = 4  # allowed rows scored per row asked for, at least


@dataclass(frozen=True)
class IvfLists:
    """Which rows each list of an IVF index holds: list l's rows are ``rows[offsets[l]:offsets[l+1]]``."""

    offsets: np.ndarray  # (nlist + 1,) int64
    rows: np.ndarray  # (ntotal,) int64
    centroids: np.ndarray  # (nlist, d) float32: a list's centroid (its coarse score is the inner product)

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
        return cls(offsets, rows, centroids)

    @property
    def count(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def allowed_in(self, lists: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """How many allowed rows each of ``lists`` holds."""
        lengths = self.sizes[lists]
        kept = allowed[self.rows[ragged_positions(self.offsets[lists], lengths)]]
        counts = np.zeros(lengths.size, np.int64)
        held = lengths > 0  # reduceat sums from each start to the next one, so empty lists are left out
        if held.any():
            firsts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[held]
            counts[held] = np.add.reduceat(kept.view(np.uint8), firsts, dtype=np.int64)
        return counts

    def allowed_rows(self, order: np.ndarray, allowed: np.ndarray, target: int,
                     start: int = 0) -> tuple[np.ndarray, int]:
        """The allowed rows of the lists in ``order[start:]`` (nearest first), ``PROBE_CHUNK`` lists at a time,
        until at least ``target`` are found (or every list is read); and where in ``order`` it stopped."""
        found: list[np.ndarray] = []
        count = 0
        while start < order.size and count < target:
            lists = order[start:start + PROBE_CHUNK]
            rows = self.rows[ragged_positions(self.offsets[lists], self.sizes[lists])]
            found.append(rows[allowed[rows]])
            count += found[-1].size
            start += lists.size
        return (np.concatenate(found) if found else np.zeros(0, np.int64)), start


def nearest_lists(coarse: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` lists with the highest coarse scores, nearest first (a partial sort)."""
    if count >= coarse.size:
        return np.argsort(-coarse, kind="stable")
    nearest = np.argpartition(-coarse, count - 1)[:count]
    return nearest[np.argsort(-coarse[nearest], kind="stable")]


class FilteredIvfLeg:
    """Dense leg over an IVF index under a filter (``allowed``: a mask over the index's rows). A filter spread near
    the query: FAISS scores the allowed rows of the lists an unfiltered search probes. Otherwise: the allowed rows
    of the lists nearest the query are gathered until they reach the target and scored exactly (``exact_dense``)."""

    def __init__(self, index: Any, lists: IvfLists, allowed: np.ndarray, allowed_count: int,
                 exact_dense: Callable[[Query, np.ndarray], np.ndarray], *, name: str = "faiss") -> None:
        """``allowed_count``: the allowed rows (the caller counted them); ``exact_dense(query, rows)``: the rows'
        exact dense scores."""
        import faiss

        ops: Any = faiss
        self.index, self.lists, self.allowed, self.exact_dense, self.name = index, lists, allowed, exact_dense, name
        self.ivf = ops.extract_index_ivf(index)
        self.share = allowed_count / max(1, int(allowed.size))
        # away from the query: the rows an unfiltered search scores (nprobe lists of average size), a share of them as
        # allowed rows: the filter's own share, at least PROBED_ROWS_SHARE
        scanned = self.ivf.nprobe * int(allowed.size) / max(1, lists.count)
        self.target = max(1, round(max(PROBED_ROWS_SHARE, self.share) * scanned))
        # per query of this search (the leg lives for one): what the gathering path read and scored so far
        self._held: dict[int, tuple[Query, np.ndarray, int, np.ndarray, np.ndarray]] = {}
        bits = np.packbits(np.asarray(allowed, bool), bitorder="little")
        self.selector = ops.IDSelectorBitmap(int(allowed.size), ops.swig_ptr(bits))
        self.selector.referenced = bits  # the bitmap must live as long as the selector

    def near_lists(self, coarse: np.ndarray, k: int) -> np.ndarray | None:
        """The ``nprobe`` lists nearest the query (``coarse``: its score against each list's centroid) when the
        filter's rows are spread near it as elsewhere and those lists hold enough of them; else None."""
        near = nearest_lists(coarse, min(int(self.ivf.nprobe), coarse.size))
        sample = near[:NEAR_SAMPLE]
        density = self.lists.allowed_in(sample, self.allowed).sum() / max(1, int(self.lists.sizes[sample].sum()))
        spread = density >= NEAR_SHARE * self.share
        return near if spread and density * int(self.lists.sizes[near].sum()) >= ROWS_PER_HIT * k else None

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        out = []
        for query in queries:
            vector = np.ascontiguousarray(query.dense, np.float32)[None, :]
            coarse = self.lists.centroids @ vector[0]
            near = self.near_lists(coarse, k)
            if near is not None:  # as unfiltered: the same lists, their allowed rows only
                out.append(self._preassigned(vector, coarse, near, k))
                continue
            # away from the query, or a deep ask: the nearest lists' allowed rows, scored where they lie
            rows, scores = self._gathered(query, coarse, max(self.target, ROWS_PER_HIT * k))
            out.append(top_rows(rows, scores, k))
        return out

    def _gathered(self, query: Query, coarse: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
        """At least ``target`` allowed rows of the lists nearest the query, with their exact scores. A deeper ask
        of the same query (a dense-first search deepening) goes on from the lists already read: the rows gathered
        and scored before are kept, not gathered and scored again."""
        held = self._held.get(id(query))
        if held is None or held[0] is not query:
            held = (query, np.argsort(-coarse, kind="stable"), 0, np.zeros(0, np.int64), np.zeros(0, np.float32))
        _, order, start, rows, scores = held
        if rows.size < target and start < order.size:
            more, start = self.lists.allowed_rows(order, self.allowed, target - rows.size, start)
            rows, scores = np.concatenate([rows, more]), np.concatenate([scores, self.exact_dense(query, more)])
            held = (query, order, start, rows, scores)
        self._held[id(query)] = held
        return rows, scores

    def _preassigned(self, vector: np.ndarray, coarse: np.ndarray, probes: np.ndarray, k: int) -> Ranking:
        """FAISS's top k of the allowed rows of ``probes``."""
        import faiss

        ops: Any = faiss
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
        return ranking_of(rows[0], scores[0])
