"""Deleted rows never reach ranking: the over-fetching filter asks again, deeper, until k live rows or the leg's end."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from indexer.query import Query
from indexer.searchers import Ranking
from indexer.segments import Excluding


class ScoredRows:
    """A leg over ``rows`` items whose score is minus the row: row 0 is everyone's best; it counts its depths."""

    name = "fake"

    def __init__(self, rows: int) -> None:
        self.rows, self.depths = rows, []  # type: ignore[var-annotated]

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        self.depths.append(k)
        found = np.arange(min(k, self.rows), dtype=np.int64)
        return [Ranking(found, -found.astype(np.float32)) for _ in queries]


QUERY = Query(np.zeros(4, np.float32), np.zeros(0, np.int32), np.zeros(0, np.float32))


@pytest.mark.parametrize("deleted", [np.arange(5), np.arange(0, 200, 2), np.arange(150), np.arange(995)])
def test_k_live_rows_in_order_whatever_is_deleted(deleted: np.ndarray) -> None:
    leg = ScoredRows(1000)
    found = Excluding(leg, deleted, 1000).search_batch([QUERY, QUERY], 10)
    live = np.setdiff1d(np.arange(1000), deleted)[:10]
    for ranking in found:
        assert ranking.rows.tolist() == live.tolist()
    assert max(leg.depths) <= 10 + deleted.size


def test_the_first_ask_is_shallow_when_deletes_are_spread() -> None:
    leg = ScoredRows(100_000)
    deleted = np.arange(0, 100_000, 10)  # 10% deleted, spread over the ranking
    Excluding(leg, deleted, 100_000).search_batch([QUERY], 100)
    assert leg.depths == [100 + 2 * 12 + 8]  # not 100 + 10,000


def test_a_leg_with_fewer_live_rows_than_k_returns_them_all() -> None:
    leg = ScoredRows(20)
    found = Excluding(leg, np.arange(15), 20).search_batch([QUERY], 10)
    assert found[0].rows.tolist() == [15, 16, 17, 18, 19]
