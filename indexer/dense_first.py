"""The index plan of a hybrid search fused by weights: the dense legs first, the sparse legs only when needed.

The integrated score is ``a * dense + b * sparse`` (``a = w_dense / temperature``, ``b = w_sparse``, both >= 0).
The dense legs are searched ``DENSE_DEPTH`` deep and their candidates rescored exactly on both legs, which gives the
k-th best fused score ``f_k`` among them. A row no dense leg returned scores at most the lowest dense score a full
leg returned (``d_last``) on the dense leg, and at most ``sparse_ceiling`` on the sparse leg: the sum over the
query's terms of its weight times the largest weight any row holds for that term. So when
``a * d_last + b * sparse_ceiling < f_k`` no other row can enter the top k and the sparse legs are not searched;
otherwise the dense legs are asked again, ``DEEPENING`` times deeper, up to ``DENSE_DEPTH_MAX``, and past that the
sparse legs are searched as the general searcher does, their candidates joining the rescoring. With an exact dense leg
the answer is then exactly the brute-force one; with an approximate one (IVF) it is exact up to the rows that leg
missed, as any answer through it is.

Measured on 1M synthetic items (one thread, 50 caption queries): the exact dense top 500 holds every row of the
exact fused top 10, and the bound settled 72% of the queries at 500 rows, 90% at 2,000 and 94% at 8,000, so most
searches skip Lucene.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from indexer.query import Query
from indexer.searchers import Candidates, HybridSearcher, Ranking, Searcher, top_rows
from indexer.segments import DeltaLeg

DENSE_DEPTH: Final = 500  # how deep the dense legs go before the bound is first checked
DEEPENING: Final = 4  # a query the bound does not settle asks the dense legs this many times deeper
DENSE_DEPTH_MAX: Final = 8_000  # past this depth an unsettled query asks the sparse legs instead
DENSE_ROLES: Final = ("dense", "delta_dense")
SETTLE_MARGIN: Final = 1e-5


def dense_depths(first: int, rows: int) -> list[int]:
    """The depths the dense legs are asked at, deepening while the bound does not settle a query: ``first``, then
    ``DEEPENING`` times deeper up to ``DENSE_DEPTH_MAX`` (at least ``first``), none past the rows there are."""
    depths = [min(first, rows)]
    while depths[-1] < min(max(first, DENSE_DEPTH_MAX), rows):
        depths.append(min(depths[-1] * DEEPENING, max(first, DENSE_DEPTH_MAX), rows))
    return depths


@dataclass(frozen=True)
class FusedBound:
    """The module's bound: the best fused score a row outside a set of candidates could have.

    ``ceilings``: per stored part (base, delta), each token id's largest weight in it."""

    dense_weight: float  # w_dense / temperature, >= 0
    sparse_weight: float  # w_sparse, >= 0
    ceilings: tuple[np.ndarray, ...]

    def sparse_ceiling(self, query: Query) -> float:
        """The largest sparse score any row of any part could have."""
        best = 0.0
        for ceiling in self.ceilings:
            known = query.term_ids < ceiling.size
            best = max(best, float(np.dot(query.term_weights[known].astype(np.float64),
                                          ceiling[query.term_ids[known]].astype(np.float64))))
        return best

    def settles_top(self, query: Query, fused: np.ndarray, k: int, dense_last: float) -> bool:
        """Whether the k best of some rows' ``fused`` scores are the k best of all, every other row's dense score
        being at most ``dense_last``."""
        if fused.size < k:
            return False
        return self.settles(query, float(np.partition(fused, fused.size - k)[fused.size - k]), dense_last)

    def settles(self, query: Query, kth: float, dense_last: float) -> bool:
        """Whether no row whose dense score is at most ``dense_last`` can reach the k-th fused score ``kth``."""
        if (query.term_weights < 0).any():
            return False
        bound = self.dense_weight * dense_last + self.sparse_weight * self.sparse_ceiling(query)
        return bound < kth - SETTLE_MARGIN * max(1.0, abs(kth))  # a margin for float32 rounding; a tie is not settled


class DenseFirstSearcher:
    """A weighted hybrid searcher whose sparse legs run only for the queries the dense candidates do not settle
    (``FusedBound``). Answers one ranked leg, ``fused`` (each candidate's exact fused score, a function of the row
    alone), as the exact plan does, so shards merge by it."""

    def __init__(self, general: HybridSearcher, bound: FusedBound, *, depth: int = DENSE_DEPTH) -> None:
        self.general, self.bound, self.depth = general, bound, depth
        self.candidate_k: int | None = None  # the fused leg's top k is all a merge needs
        self.name = general.name

    def gather(self, queries: Sequence[Query], k: int) -> tuple[list[Candidates], dict[str, float]]:
        general = self.general
        rows_total = len(general.scores)
        timings: dict[str, float] = {"dense_ms": 0.0, "sparse_ms": 0.0, "rescore_ms": 0.0}
        dense_legs = {role: leg for role, leg in general.legs.items() if role in DENSE_ROLES}
        sparse_legs = {role: leg for role, leg in general.legs.items() if role not in DENSE_ROLES}
        gathered: dict[int, Candidates] = {}
        pending = list(range(len(queries)))
        for depth in dense_depths(max(k, self.depth, general.candidate_k or 0), rows_total):
            started = time.perf_counter()
            asked = [queries[n] for n in pending]
            found = {role: leg.search_batch(asked, depth) for role, leg in dense_legs.items()}
            timings["dense_ms"] += (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            unsettled = []
            for i, n in enumerate(pending):
                legs = {role: rankings[i] for role, rankings in found.items()}
                gathered[n] = self._rescored(queries[n], [ranking.rows for ranking in legs.values()], gathered.get(n))
                if not self._settled(queries[n], gathered[n], legs, dense_legs, depth, k):
                    unsettled.append(n)
            timings["rescore_ms"] += (time.perf_counter() - started) * 1000
            pending = unsettled
            if not pending:
                break
        if pending and sparse_legs:  # the bound could not settle them: the sparse legs' candidates join
            started = time.perf_counter()
            asked = [queries[n] for n in pending]
            sparse_depth = general.leg_depth(k, rows_total)
            extra = {role: leg.search_batch(asked, sparse_depth) for role, leg in sparse_legs.items()}
            timings["sparse_ms"] = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            for i, n in enumerate(pending):
                gathered[n] = self._rescored(queries[n], [rankings[i].rows for rankings in extra.values()],
                                             gathered[n])
            timings["rescore_ms"] += (time.perf_counter() - started) * 1000
        return [self._fused_leg(gathered[n], k) for n in range(len(queries))], timings

    def _rescored(self, query: Query, leg_rows: Sequence[np.ndarray], before: Candidates | None) -> Candidates:
        """The legs' rows with their exact scores, joined to those found ``before`` (a shallower ask): only rows
        not scored yet are scored."""
        rows = np.unique(np.concatenate(leg_rows)) if leg_rows else np.zeros(0, np.int64)
        if before is not None:
            rows = np.setdiff1d(rows, before.rows, assume_unique=True)
        scores = self.general.scores
        found = Candidates({}, rows, scores.dense(query, rows), scores.sparse(query, rows))
        if before is None or not before.rows.size:
            return found
        joined = np.concatenate([before.rows, found.rows])
        order = np.argsort(joined, kind="stable")
        return Candidates({}, joined[order], np.concatenate([before.dense, found.dense])[order],
                          np.concatenate([before.sparse, found.sparse])[order])

    def _settled(self, query: Query, found: Candidates, legs: dict[str, Ranking],
                 dense_legs: Mapping[str, Searcher], depth: int, k: int) -> bool:
        """Whether no row outside the dense candidates can enter the top k (the module's bound)."""
        last = -np.inf  # the best dense score a row no leg returned could have
        for role, ranking in legs.items():
            if len(ranking) < depth:
                if isinstance(dense_legs[role], DeltaLeg):  # it scored every row it holds
                    continue
                return False  # an approximate leg that came back short says nothing of the rows it skipped
            at = np.searchsorted(found.rows, ranking.rows)
            last = max(last, float(found.dense[at].min()))
        return self.bound.settles_top(query, self._fused(found.dense, found.sparse), k, last)

    def _fused(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        return np.asarray(self.general.fuse(dense, sparse))

    def _fused_leg(self, found: Candidates, k: int) -> Candidates:
        fused = self._fused(found.dense, found.sparse)
        return Candidates({"fused": top_rows(found.rows, fused.astype(np.float32), k)}, found.rows, found.dense,
                          found.sparse)
