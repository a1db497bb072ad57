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
holds rows in half the lists of a 4,096-list index), where a selector would read every row of those lists. When
the allowed rows are listed (a keyword's posting: indexer/filters.py ``Allowed``), the gathering reads only them,
each with its list's place in the query's order, not the lists' rows: the same rows for a tenth of the reads.
Listed by a keyword field's values, the lists are read in the order of the centroids of those values' rows in each
(``ValueLists``), which finds more of the filter's top rows in fewer lists than the lists' own centroids do.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.filters import Allowed
from indexer.query import Query
from indexer.searchers import Ranking, ragged_positions, ranking_of, top_rows

PROBE_CHUNK = 64  # lists whose allowed rows are gathered together, nearest first
PROBED_ROWS_SHARE = 0.25  # allowed rows scored away from the query, as a share of those an unfiltered search scores
# the same, reading lists in the order of their centroids of the filter's values (``ValueLists``). Measured on 1M
# synthetic items, 50 validation captions, a region far from the query, IVF leg at p50 / overlap@10: by list
# centroids at 0.25, 2.24 ms / 99.0% (0.15: 2.05 ms / 98.6%); by value centroids at 0.15, 2.13 ms / 99.6%.
VALUE_PROBED_ROWS_SHARE = 0.15
NEAR_SAMPLE = 16  # the nearest lists whose allowed rows tell whether the filter's rows are spread near the query
NEAR_SHARE = 0.5  # the nearest lists hold at least this much of the filter's share: its rows are spread near the query
ROWS_PER_HIT = 4  # allowed rows scored per row asked for, at least
VALUE_LISTS_PER_LIST = 16  # a keyword field's (value, list) centroids are kept up to this many pairs per list


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

    @functools.cached_property
    def list_of_row(self) -> np.ndarray:
        """Each row's list (2 bytes a row under 32,768 lists)."""
        dtype = np.int16 if self.count <= np.iinfo(np.int16).max else np.int32
        out = np.zeros(int(self.rows.max()) + 1 if self.rows.size else 0, dtype)
        out[self.rows] = np.repeat(np.arange(self.count, dtype=dtype), self.sizes)
        return out

    def places(self, order: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Where in ``order`` (every list, nearest first) each of ``rows``' lists is."""
        place = np.empty(self.count, np.int32)
        place[order] = np.arange(order.size, dtype=np.int32)
        return place[self.list_of_row[rows]]

    def listed_rows(self, rows: np.ndarray, places: np.ndarray, target: int, start: int = 0) -> tuple[np.ndarray, int]:
        """``allowed_rows`` from the allowed rows themselves (``rows``, with their lists' ``places`` in the order):
        the same rows, the same stop, without reading the lists."""
        reached = np.cumsum(np.bincount(places, minlength=self.count)[start:])
        lists = int(np.searchsorted(reached, target)) + 1  # the lists read from start until target (or all)
        stop = min(self.count, start + PROBE_CHUNK * -(-lists // PROBE_CHUNK))
        return rows[(places >= start) & (places < stop)], stop


@dataclass(frozen=True)
class ValueLists:
    """A keyword field's rows in each list, per value, summarised by their centroid: a filter keeping some values
    ranks the lists by the centroid of those values' rows in each, not of all its rows. The rows of a region far from
    the query lie at the edge of each list they share with other regions, where the list's own centroid says little
    of them (Qdrant adds graph edges per payload value for the same reason). Kept for a field with at most
    ``VALUE_LISTS_PER_LIST`` (value, list) pairs per list: 16 per list is 64 MB at 4,096 lists of 256-d vectors."""

    keys: np.ndarray  # (pairs,) int64 ascending: value code * lists + list
    centroids: np.ndarray  # (pairs, d) float32
    lists: int

    @classmethod
    def of(cls, lists: IvfLists, code_rows: np.ndarray, codes: np.ndarray, dense: np.ndarray) -> ValueLists | None:
        """From a keyword column's codes (``codes[i]`` held by row ``code_rows[i]``) and the side's vectors; None
        when the field has too many (value, list) pairs."""
        import scipy.sparse

        keys = codes.astype(np.int64) * lists.count + lists.list_of_row[code_rows]
        pairs, pair_of, counts = np.unique(keys, return_inverse=True, return_counts=True)
        if pairs.size > VALUE_LISTS_PER_LIST * lists.count:
            return None
        members = scipy.sparse.csr_matrix((np.ones(keys.size, np.float32), (pair_of, code_rows)),
                                          shape=(pairs.size, dense.shape[0]))
        sums = np.asarray(members @ dense)  # every vector read once, in order
        return cls(pairs, (sums / counts[:, None]).astype(np.float32), lists.count)

    def scores(self, codes: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Each list's best score against the centroids of its rows holding one of ``codes`` (-inf for a list that
        holds none)."""
        out = np.full(self.lists, -np.inf, np.float32)
        for code in codes.tolist():
            low, high = np.searchsorted(self.keys, [code * self.lists, (code + 1) * self.lists])
            held = self.keys[low:high] - code * self.lists
            out[held] = np.maximum(out[held], self.centroids[low:high] @ query)
        return out


@dataclass
class _Gathering:
    """One query's gathering so far: the lists nearest first, how many of them it read, the allowed rows found
    there and their exact scores; ``places``: the listed allowed rows' lists' places in ``order``."""

    query: Query
    order: np.ndarray
    places: np.ndarray | None
    read: int = 0
    rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))


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

    def __init__(self, index: Any, lists: IvfLists, allowed: Allowed,
                 exact_dense: Callable[[Query, np.ndarray], np.ndarray], *, name: str = "faiss",
                 list_scores: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        """``allowed``: over the index's rows; ``exact_dense(query, rows)``: the rows' exact dense scores;
        ``list_scores(query vector)``: each list's score for the filter's rows (``ValueLists``), the order the
        gathering reads lists in (else their centroids' scores)."""
        import faiss

        ops: Any = faiss
        self.index, self.lists, self.exact_dense, self.name = index, lists, exact_dense, name
        self.list_scores = list_scores
        self.allowed, self.listed = allowed.mask, allowed.listed
        self.ivf = ops.extract_index_ivf(index)
        self.share = allowed.count / max(1, int(self.allowed.size))
        # away from the query: the rows an unfiltered search scores (nprobe lists of average size), a share of them as
        # allowed rows: the filter's own share, at least PROBED_ROWS_SHARE (VALUE_PROBED_ROWS_SHARE in a better order)
        scanned = self.ivf.nprobe * int(self.allowed.size) / max(1, lists.count)
        least = PROBED_ROWS_SHARE if list_scores is None else VALUE_PROBED_ROWS_SHARE
        self.target = max(1, round(max(least, self.share) * scanned))
        # per query of this search (the leg lives for one): what the gathering path read and scored so far
        self._held: dict[int, _Gathering] = {}
        bits = np.packbits(np.asarray(self.allowed, bool), bitorder="little")
        self.selector = ops.IDSelectorBitmap(int(self.allowed.size), ops.swig_ptr(bits))
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
        if held is None or held.query is not query:  # the order lists are read in, once per query
            by = coarse if self.list_scores is None else self.list_scores(np.asarray(query.dense, np.float32))
            order = np.argsort(-by, kind="stable")
            places = None if self.listed is None else self.lists.places(order, self.listed)
            held = _Gathering(query, order, places)
            self._held[id(query)] = held
        if held.rows.size < target and held.read < held.order.size:
            wanted = target - held.rows.size
            if self.listed is not None and held.places is not None:  # (places are held exactly when listed)
                more, held.read = self.lists.listed_rows(self.listed, held.places, wanted, held.read)
            else:
                more, held.read = self.lists.allowed_rows(held.order, self.allowed, wanted, held.read)
            held.rows = np.concatenate([held.rows, more])
            held.scores = np.concatenate([held.scores, self.exact_dense(query, more)])
        return held.rows, held.scores

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
