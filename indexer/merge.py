"""What a shard answers for a search, and how the answers of every shard become one ranking.

A shard runs its searcher's legs but stops before ranking: each leg's candidates with their exact dense and sparse
scores, and each row's position in the whole collection (``ShardCandidates``). ``merge_candidates`` keeps each
leg's global top candidates (the depth one index would search), and ranks their union exactly with the one fusion.
Scores are dot products, with no per-shard statistics, and ties break by the collection position, so the ranking
over several shards is the one a single index of the same items gives, and a single index is the merge of one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from indexer.filters import Filter
from indexer.params import SearchParams
from indexer.query import Query
from indexer.searchers import Fuse, RankBy, ranked
from indexer.store import IndexManifest, IndexUnavailableError

# Rows with no collection position (an index that is no shard, rows written since the build, or a shard compacted
# since) sort after every built row, by row then shard: still one deterministic order across the collection.
UNORDERED = 1 << 40


class ShardUnavailableError(IndexUnavailableError):
    """A shard did not answer (its replicas are down or restarting)."""

    def __init__(self, shard: str, reason: str) -> None:
        super().__init__(f"shard {shard} is unavailable: {reason}")
        self.shard = shard


@dataclass(frozen=True)
class ShardCandidates:
    """One query's candidates on one shard: their ids, collection positions and exact scores, and for each leg the
    positions (into these arrays) of what it found, with the leg's own scores."""

    ids: list[str]
    keys: np.ndarray  # (n,) int64 collection positions: the tie order
    dense: np.ndarray  # (n,) float32
    sparse: np.ndarray  # (n,) float32
    legs: dict[str, tuple[np.ndarray, np.ndarray]]  # role -> (positions, leg scores)
    rows: int  # the shard's live rows the search may return (the legs' depth is capped by the whole collection's)
    candidate_k: int | None  # how deep the searcher's legs go beyond k (None: k)
    timings_ms: dict[str, float] = field(default_factory=dict)
    plan: str = "index"  # how the shard searched (indexer/planner.py)

    def placed(self, shard: int, shards: int) -> ShardCandidates:
        """These candidates as shard ``shard`` of ``shards`` answers them: rows with no collection position are
        ordered by row, then by shard."""
        if shards == 1:
            return self
        keys = np.where(self.keys >= UNORDERED, self.keys * shards + shard, self.keys)
        return dataclasses.replace(self, keys=keys.astype(np.int64))


@dataclass(frozen=True)
class ItemRecord:
    """A hit's item and sparse row, for the answer and its explanation."""

    side: str
    item: dict[str, Any]
    term_ids: np.ndarray
    term_weights: np.ndarray


class ShardReader(Protocol):
    """What a search asks of a shard, wherever it runs: this process, or a replica set on Ray."""

    name: str

    @property
    def manifest(self) -> IndexManifest: ...  # the shard's current version's (a compaction replaces it)

    def candidates(self, side: str, queries: Sequence[Query], params: SearchParams, k: int, *,
                   threads: int = 1) -> list[ShardCandidates]: ...  # threads: a Lucene batch's

    def records(self, side: str, ids: Sequence[str]) -> list[ItemRecord | None]: ...

    def find(self, item_id: str) -> tuple[str, dict[str, Any]] | None: ...

    def facets(self, side: str, field: str, filter_: Filter | None) -> dict[Any, int]: ...  # value -> live items

    def close(self) -> None: ...


@dataclass(frozen=True)
class MergedRanking:
    """The collection's top k: for each hit its shard, id and exact scores; and the distinct candidates ranked."""

    shards: np.ndarray  # (n,) int64 shard of each hit
    ids: list[str]
    scores: np.ndarray  # the ranking score (fused, or one leg's)
    dense: np.ndarray
    sparse: np.ndarray
    fused: np.ndarray
    candidates: int


def merge_candidates(answers: Sequence[ShardCandidates], fuse: Fuse, rank_by: RankBy, k: int) -> MergedRanking:
    """Each leg's global top candidates (by its own score, ties by collection position) across shards, their union
    ranked exactly: what one index's searcher does over all the rows."""
    total = sum(a.rows for a in answers)
    candidate_k = max((a.candidate_k or 0) for a in answers) if answers else 0
    depth = min(max(k, candidate_k), total)
    roles = sorted({role for a in answers for role in a.legs})
    picks: list[tuple[np.ndarray, ...]] = []  # per leg: its top candidates' shard, position, key, score, leg rank
    for role in roles:
        parts = [(np.full(positions.size, s, np.int64), positions, answer.keys[positions], leg_scores,
                  np.arange(positions.size)) for s, answer in enumerate(answers) if role in answer.legs
                 for positions, leg_scores in [answer.legs[role]]]
        shard, position, keys, scores, leg_rank = (np.concatenate(column) for column in zip(*parts, strict=True))
        top = np.lexsort((keys, -scores))[:depth]
        picks.append((shard[top], position[top], keys[top], scores[top], leg_rank[top]))
    shard, position, keys, scores, leg_rank = (np.concatenate(column) for column in zip(*picks, strict=True))
    _, first = np.unique(keys, return_index=True)  # a candidate two legs found, once (keys are unique per row)
    shard, position, keys, scores, leg_rank = (column[first] for column in (shard, position, keys, scores, leg_rank))
    # the candidates in the order a fusion by ranks (RRF) breaks ties by, as one index lists them: the union of
    # several legs in collection order; one leg's in its ranking (one shard: as the leg gave it, whose order of tied
    # scores is its own; several: by score, then collection position)
    if len(roles) > 1:
        listed = np.argsort(keys, kind="stable")
    elif len(answers) == 1:
        listed = np.lexsort((keys, leg_rank))
    else:
        listed = np.lexsort((keys, -scores))
    shard, position, keys = shard[listed], position[listed], keys[listed]

    def gathered(attribute: str) -> np.ndarray:
        out = np.zeros(keys.size, np.float32)
        for s in np.unique(shard).tolist():
            mask = shard == s
            out[mask] = getattr(answers[s], attribute)[position[mask]]
        return out

    # ranked in the listed order (a fusion by ranks breaks ties by it), the ranking's own ties by collection position
    result = ranked(keys, gathered("dense"), gathered("sparse"), fuse, rank_by, k)
    by_key = np.argsort(keys)
    order = by_key[np.searchsorted(keys, result.rows, sorter=by_key)]
    return MergedRanking(shard[order], [answers[int(shard[i])].ids[int(position[i])] for i in order], result.scores,
                         result.dense, result.sparse, result.fused, int(keys.size))
