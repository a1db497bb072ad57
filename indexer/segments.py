"""What a side holds beyond its published index while it changes: a delta of items written since, and deletes.

Rows are global: the base index's rows 0..N-1, then the delta's N..N+M-1 in write order. A ``Segment`` is an
immutable snapshot (a search takes one and sees one state throughout); the writer builds the next one with
``DeltaBuffer.snapshot`` and swaps it in. The delta only ever grows by appending, so a snapshot's views of the
buffers stay valid while later rows are written beyond them.

Searching a changed side composes the searcher protocol: each base leg is wrapped by ``Excluding`` (deleted rows
never reach ranking), the delta is one more leg (``DeltaLeg``: exact scores over its live rows), and the exact
rescoring reads rows of either part (``SegmentScores``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from core.encoder import SparseRows
from indexer.query import Query
from indexer.searchers import ExactScores, Ranking, Searcher, top_rows
from indexer.store import SideStore


@dataclass(frozen=True)
class Delta:
    """The items written since the base generation, ``count`` rows (views into the writer's buffers)."""

    dense: np.ndarray  # (M, D) float32
    sparse: SparseRows
    ids: list[str]  # shared with the writer: only the first ``count`` entries belong to this snapshot
    items: list[dict[str, Any]]
    count: int

    @classmethod
    def empty(cls, dim: int) -> Delta:
        return cls(np.zeros((0, dim), np.float32), SparseRows.concatenate([]), [], [], 0)


def live_row(item_id: str, written: Mapping[str, int], removed: Container[str],
             base: Mapping[str, int]) -> int | None:
    """The live row of an id: its latest write, else its base row unless deleted; None when it has none."""
    if item_id in written:
        return written[item_id]
    return None if item_id in removed else base.get(item_id)


def unchanged(base: SideStore) -> Segment:
    """The segment of a side nothing was written to since its index was built."""
    return Segment(len(base.ids), Delta.empty(int(base.dense.shape[1])))


@dataclass(frozen=True)
class Segment:
    """One side's changes over its base index: the delta and the deleted global rows (sorted)."""

    base_count: int
    delta: Delta
    deleted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    row_of: dict[str, int] = field(default_factory=dict)  # id -> live global row, for ids the changes touched
    removed: frozenset[str] = frozenset()  # ids deleted and not written again

    @property
    def changed(self) -> bool:
        return self.delta.count > 0 or self.deleted.size > 0

    @functools.cached_property
    def deleted_base_rows(self) -> np.ndarray:
        return self.deleted[self.deleted < self.base_count]

    def is_deleted(self, rows: np.ndarray) -> np.ndarray:
        return np.isin(rows, self.deleted, assume_unique=False)


class SideView:
    """A side as one search sees it: the base store and one segment, addressed by global row."""

    def __init__(self, base: SideStore, segment: Segment | None = None) -> None:
        self.base = base
        self.segment = segment or unchanged(base)
        self.base_count = len(base.ids)

    def __len__(self) -> int:
        return self.base_count + self.segment.delta.count

    def id(self, row: int) -> str:
        return self.base.ids[row] if row < self.base_count else self.segment.delta.ids[row - self.base_count]

    def ids(self, rows: np.ndarray) -> list[str]:
        """The ids of many rows (a search's candidates) at once."""
        in_base = rows < self.base_count
        if in_base.all():
            return list(self.base.id_array[rows])
        return [self.id(int(row)) for row in rows]

    def item(self, row: int) -> dict[str, Any]:
        return self.base.items[row] if row < self.base_count else self.segment.delta.items[row - self.base_count]

    def sparse_row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        if row < self.base_count:
            return self.base.sparse.row(row)
        return self.segment.delta.sparse.row(row - self.base_count)

    def row_of(self, item_id: str) -> int | None:
        """The live row of an id, or None (never written, or deleted)."""
        return live_row(item_id, self.segment.row_of, self.segment.removed, self.base.row_of)


class SegmentScores:
    """Exact scores of global rows: base rows from the base store, delta rows from the delta."""

    def __init__(self, base: ExactScores, delta: ExactScores, base_count: int) -> None:
        self.base, self.delta, self.base_count = base, delta, base_count

    def __len__(self) -> int:
        return self.base_count + len(self.delta)

    def _split(self, rows: np.ndarray, score: str, query: Query) -> np.ndarray:
        out = np.zeros(rows.size, np.float32)
        in_delta = rows >= self.base_count
        out[~in_delta] = getattr(self.base, score)(query, rows[~in_delta])
        out[in_delta] = getattr(self.delta, score)(query, rows[in_delta] - self.base_count)
        return out

    def dense(self, query: Query, rows: np.ndarray) -> np.ndarray:
        return self._split(rows, "dense", query)

    def sparse(self, query: Query, rows: np.ndarray) -> np.ndarray:
        return self._split(rows, "sparse", query)


class OverFetching:
    """A leg some of whose rows must never reach ranking: it over-fetches, drops them, and asks again (twice as
    deep, up to ``bound``) for the queries that came back short, so k kept rows come back whenever the leg has
    them. Subclasses say which rows are kept and how deep to ask first."""

    def __init__(self, leg: Searcher) -> None:
        self.leg, self.name = leg, leg.name

    def kept(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def depths(self, k: int) -> tuple[int, int]:
        """The first depth to ask for a top k, and the depth past which asking deeper finds nothing more."""
        raise NotImplementedError

    def ranked_alone(self, depth: int) -> Callable[[Query, int], Ranking] | None:  # noqa: ARG002 (a subclass may)
        """A query's top k of the kept rows found without the leg, where that costs less than asking it ``depth``
        deep (None: ask the leg)."""
        return None

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        depth, bound = self.depths(k)
        out: list[Ranking | None] = [None] * len(queries)
        pending = list(range(len(queries)))
        while pending:
            alone = self.ranked_alone(depth)
            if alone is not None:
                for n in pending:
                    out[n] = alone(queries[n], k)
                break
            short = []
            for n, ranking in zip(pending, self.leg.search_batch([queries[n] for n in pending], depth), strict=True):
                keep = self.kept(ranking.rows)
                found = Ranking(ranking.rows[keep][:k], ranking.scores[keep][:k])
                if len(found) >= k or len(ranking) < depth or depth >= bound:  # enough, all the leg has, or surely
                    out[n] = found
                else:
                    short.append(n)
            pending, depth = short, min(bound, 2 * depth)
        return [ranking for ranking in out if ranking is not None]


class Excluding(OverFetching):
    """A base leg whose deleted rows never reach ranking.

    The first ask covers about twice the deleted share of k, not all deletes: with 10% of 100k rows deleted, asking
    every query for k + 10,000 made Lucene 100x slower. The depth never needs to pass k + the number deleted."""

    def __init__(self, leg: Searcher, deleted: np.ndarray, rows: int) -> None:
        super().__init__(leg)
        self.deleted, self.rows = deleted, rows

    def kept(self, rows: np.ndarray) -> np.ndarray:
        return ~np.isin(rows, self.deleted)

    def depths(self, k: int) -> tuple[int, int]:
        deleted = int(self.deleted.size)
        bound = k + deleted
        return min(bound, k + 2 * -(-k * deleted // max(1, self.rows - deleted)) + 8), bound


class DeltaLeg:
    """The delta as a leg: every live delta row scored exactly, its top k by the dense or the sparse score (the
    sparse leg, like an inverted index, finds only rows sharing a term with the query)."""

    def __init__(self, delta: ExactScores, segment: Segment, by: Literal["dense", "sparse"], *,
                 rows: np.ndarray | None = None) -> None:
        """``rows``: the global delta rows to search (a filter's); default: every live one."""
        self.delta, self.by, self.name = delta, by, f"delta-{by}"
        base = segment.base_count
        if rows is None:
            rows = np.arange(base, base + segment.delta.count, dtype=np.int64)
            rows = rows[~segment.is_deleted(rows)]
        self.rows = rows
        self.base_count = base

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        out = []
        local = self.rows - self.base_count
        for query in queries:
            scores = getattr(self.delta, self.by)(query, local)
            rows = self.rows
            if self.by == "sparse":
                rows, scores = rows[scores > 0], scores[scores > 0]
            out.append(top_rows(rows, scores, k))
        return out
