"""Searching and writing a sharded collection: each shard answers with its candidates, the ingress merges them.

A shard (``ShardService``) is a live collection over one shard's index; for a search it runs the single index's
searcher but stops before ranking: each leg's candidates with their exact dense and sparse scores
(``HybridSearcher.gather``), and each row's position in the whole collection. The ingress (``ShardedEngine``)
encodes the query once, asks every shard at once, keeps each leg's global top candidates (the depth one index
would search), ranks their union exactly with the same fusion, then fetches the hits' items and sparse rows from
their shards for the explanation. Scores are dot products, with no per-shard statistics, and ties break by the
collection position, so the ranking is the one a single index of the same items gives.

A shard is reached through ``ShardClient``: the service in this process, or a Ray Serve deployment
(service/ray_serving.py). A shard that cannot answer raises ``ShardUnavailableError`` naming it: a search then
fails as a whole rather than silently returning another ranking.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from core.cancel import Cancellation
from core.encoder import DuetEncoder, vocabulary_digest
from indexer.live import LIVE, UPLOADS, CompactionResult, ItemNotFoundError, LiveCollection, WriteResult
from indexer.query import Query
from indexer.search import (
    EXPLAINED_HITS,
    Hit,
    QueryEncoding,
    SearchParams,
    SearchResult,
    explain_terms,
    search_fusion,
    search_weights,
    sparse_leg_warnings,
)
from indexer.searchers import Fuse, RankBy, ranked
from indexer.sharding import ShardedLayout, read_layout, shard_of
from indexer.store import IndexManifest, IndexUnavailableError, SideManifest, check_binding, manifest_path
from indexer.writes import IdConflictError, PreparedWrite, prepare_image, prepare_text

T = TypeVar("T")
# Rows with no collection position (written since the build, or a shard compacted since) sort after every built
# row, by shard row then shard: still one deterministic order across the collection.
UNORDERED = 1 << 40


class ShardUnavailableError(IndexUnavailableError):
    """A shard did not answer (its replicas are down or restarting)."""

    def __init__(self, shard: str, reason: str) -> None:
        super().__init__(f"shard {shard} is unavailable: {reason}")
        self.shard = shard


# ----- what a shard answers -----
@dataclass(frozen=True)
class ShardCandidates:
    """One query's candidates on one shard: their ids, collection positions and exact scores, and for each leg the
    positions (into these arrays) of what it found, with the leg's own scores."""

    ids: list[str]
    keys: np.ndarray  # (n,) int64 collection positions: the tie order
    dense: np.ndarray  # (n,) float32
    sparse: np.ndarray  # (n,) float32
    legs: dict[str, tuple[np.ndarray, np.ndarray]]  # role -> (positions, leg scores)
    rows: int  # the shard's live rows on the side (the legs' depth is capped by the whole collection's)
    candidate_k: int | None  # how deep the searcher's legs go beyond k (None: k)
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemRecord:
    """A hit's item and sparse row, for the answer and its explanation."""

    side: str
    item: dict[str, Any]
    term_ids: np.ndarray
    term_weights: np.ndarray


class ShardService:
    """One shard: a live collection over its index, answering candidates, items and writes."""

    def __init__(self, index_dir: str | Path, *, shard: int, shards: int, encoder: DuetEncoder | None = None,
                 checkpoint: str | Path | None = None, auto_compact_ratio: float | None = None,
                 follow: bool = False) -> None:
        """``follow``: a read replica of the shard, following the log its one writer keeps (no writes here)."""
        self.shard, self.shards = shard, shards
        if follow:
            self.live = LiveCollection.follow(index_dir, encoder=encoder, checkpoint=checkpoint)
        else:
            self.live = LiveCollection.open(index_dir, encoder=encoder, checkpoint=checkpoint,
                                            auto_compact_ratio=auto_compact_ratio)

    def _keys(self, order: np.ndarray | None, base_count: int, rows: np.ndarray) -> np.ndarray:
        keys = (UNORDERED + rows) * self.shards + self.shard
        if order is not None:
            built = rows < base_count
            keys[built] = order[rows[built]]
        return keys.astype(np.int64)

    def candidates(self, side: str, queries: Sequence[Query], params: SearchParams, k: int) -> list[ShardCandidates]:
        with self.live.reading() as engine:
            view = engine.view(side)
            searcher = engine.searcher(params, view=view)
            gathered, timings = searcher.gather(queries, k)
            live_rows = len(view) - int(view.segment.deleted.size)
            out = []
            for found in gathered:
                keys = self._keys(view.base.order, view.base_count, found.rows)
                by_row = np.argsort(found.rows, kind="stable")  # a single leg's rows come in its ranking's order
                legs = {role: (by_row[np.searchsorted(found.rows[by_row], ranking.rows)], ranking.scores)
                        for role, ranking in found.legs.items()}
                out.append(ShardCandidates([view.id(int(r)) for r in found.rows], keys, found.dense, found.sparse,
                                           legs, live_rows, searcher.candidate_k, timings))
            return out

    def records(self, side: str, ids: Sequence[str]) -> list[ItemRecord | None]:
        """The live items of these ids on a side (None for one gone since it was found)."""
        with self.live.reading() as engine:
            view = engine.view(side)
            out: list[ItemRecord | None] = []
            for item_id in ids:
                row = view.row_of(item_id)
                if row is None:
                    out.append(None)
                    continue
                term_ids, weights = view.sparse_row(row)
                out.append(ItemRecord(side, view.item(row), np.asarray(term_ids), np.asarray(weights)))
            return out

    def find(self, item_id: str) -> tuple[str, dict[str, Any]] | None:
        with self.live.reading() as engine:
            try:
                return engine.item(item_id)
            except KeyError:
                return None

    def apply(self, write: PreparedWrite) -> WriteResult:
        return self.live.apply(write)

    def delete(self, item_id: str) -> WriteResult:
        return self.live.delete(item_id)

    def stats(self) -> dict[str, Any]:
        return self.live.stats()

    def needs_compaction(self) -> bool:
        return self.live.needs_compaction()

    def compact(self, cancel: Cancellation | None = None) -> CompactionResult:
        return self.live.compact(cancel=cancel)

    def close(self) -> None:
        self.live.close()


class ShardClient(Protocol):
    """How the ingress reaches a shard: ``ShardService`` itself, or a remote replica set."""

    name: str

    def candidates(self, side: str, queries: Sequence[Query], params: SearchParams,
                   k: int) -> list[ShardCandidates]: ...

    def records(self, side: str, ids: Sequence[str]) -> list[ItemRecord | None]: ...

    def find(self, item_id: str) -> tuple[str, dict[str, Any]] | None: ...

    def apply(self, write: PreparedWrite) -> WriteResult: ...

    def delete(self, item_id: str) -> WriteResult: ...

    def stats(self) -> dict[str, Any]: ...

    def needs_compaction(self) -> bool: ...

    def compact(self, cancel: Cancellation | None = None) -> CompactionResult: ...

    def close(self) -> None: ...


class LocalShard(ShardService):
    """A shard served in this process."""

    def __init__(self, name: str, index_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(index_dir, **kwargs)
        self.name = name


# ----- the merge -----
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
    chosen: set[tuple[int, int]] = set()
    roles = sorted({role for a in answers for role in a.legs})
    for role in roles:
        shard_of_hit, position, keys, scores = [], [], [], []
        for s, answer in enumerate(answers):
            if role in answer.legs:
                positions, leg_scores = answer.legs[role]
                shard_of_hit.append(np.full(positions.size, s, np.int64))
                position.append(positions)
                keys.append(answer.keys[positions])
                scores.append(leg_scores)
        if not position:
            continue
        all_keys, all_scores = np.concatenate(keys), np.concatenate(scores)
        top = np.lexsort((all_keys, -all_scores))[:depth]
        chosen.update(zip(np.concatenate(shard_of_hit)[top].tolist(), np.concatenate(position)[top].tolist(),
                          strict=True))
    # in collection order, as one index's union of rows is: a fusion by ranks (RRF) ranks tied scores in this order
    picked = sorted(chosen, key=lambda hit: int(answers[hit[0]].keys[hit[1]]))
    shard_ids = np.array([s for s, _ in picked], np.int64)
    rows = np.array([p for _, p in picked], np.int64)

    def gathered(attribute: str) -> np.ndarray:
        return np.array([getattr(answers[s], attribute)[p] for s, p in picked], np.float32)

    result = ranked(np.arange(len(picked), dtype=np.int64), gathered("dense"), gathered("sparse"), fuse, rank_by, k)
    order = result.rows
    return MergedRanking(shard_ids[order], [answers[shard_ids[i]].ids[rows[i]] for i in order], result.scores,
                         result.dense, result.sparse, result.fused, len(picked))


# ----- the ingress -----
def summed_manifest(manifests: Sequence[IndexManifest]) -> IndexManifest:
    """One manifest for the whole collection: the first shard's, with each side's counts and bytes summed."""
    first = manifests[0]
    sides: dict[str, SideManifest] = {}
    for side, entry in first.sides.items():
        parts = [m.sides[side] for m in manifests if side in m.sides]
        count = sum(p.count for p in parts)
        mean = sum(p.mean_terms * p.count for p in parts) / max(count, 1)
        sides[side] = entry.model_copy(update={
            "count": count, "lucene_docs": sum(p.lucene_docs for p in parts), "mean_terms": mean, "files": {},
            "bytes": {key: sum(p.bytes.get(key, 0) for p in parts) for key in entry.bytes}})
    return first.model_copy(update={"sides": sides})


class ShardedEngine(QueryEncoding):
    """The ingress of a sharded collection: the encoder, the shards, and the merge (a ``SearchEngine`` to its
    callers: same queries, same results)."""

    def __init__(self, layout: ShardedLayout, shards: Sequence[ShardClient], manifests: Sequence[IndexManifest],
                 *, encoder: DuetEncoder | None = None, checkpoint: str | Path | None = None) -> None:
        self.layout, self.shards = layout, list(shards)
        self.index_dir = layout.root
        self.manifest = summed_manifest(manifests)
        self.encoder = encoder or DuetEncoder.from_checkpoint(checkpoint or layout.checkpoint_dir)
        bound = layout.manifest.checkpoint
        check_binding(self.manifest, content_hash=self.encoder.checkpoint.content_hash,
                      backbone_fingerprint=self.encoder.checkpoint.backbone_fingerprint,
                      vocabulary_digest=vocabulary_digest(self.encoder.vocabulary))
        if bound.content_hash != self.manifest.checkpoint.content_hash:
            raise IndexUnavailableError("the collection and its shards name different checkpoints")
        self._pool = ThreadPoolExecutor(max_workers=max(2, len(self.shards)), thread_name_prefix="duet-fanout")

    @property
    def sides(self) -> tuple[str, ...]:
        return tuple(self.manifest.sides)

    @property
    def collection_root(self) -> Path:
        return manifest_path(self.index_dir, self.layout.manifest.collection.get("root", "."))

    def fan_out(self, call: Callable[[ShardClient], T], shards: Sequence[int] | None = None) -> list[T]:
        """``call(shard)`` on every shard (or on these) at once, answers in that order; the first failure raises."""
        chosen = range(len(self.shards)) if shards is None else shards
        futures = [self._pool.submit(call, self.shards[s]) for s in chosen]
        return [future.result() for future in futures]

    # ----- fusion -----
    def weights(self, params: SearchParams) -> tuple[float, float]:
        return search_weights(self.manifest, params)

    def fuse(self, params: SearchParams) -> Fuse:
        return search_fusion(self.manifest, params)

    # ----- search -----
    def search(self, query: Query, params: SearchParams) -> SearchResult:
        return self.search_batch([query], params)[0]

    def search_batch(self, queries: Sequence[Query], params: SearchParams) -> list[SearchResult]:
        if params.side not in self.sides:
            raise KeyError(f"this collection has no {params.side!r} side (sides: {list(self.sides)})")
        warnings = [sparse_leg_warnings(q, params) for q in queries]
        k = params.offset + params.top_k
        answers = self.fan_out(lambda shard: shard.candidates(params.side, queries, params, k))
        rank_by: RankBy = "fused" if params.mode == "hybrid" else params.mode
        fuse = self.fuse(params)
        w_dense, w_sparse = self.weights(params)
        weights = {"w_dense": w_dense, "w_sparse": w_sparse, "temperature": self.manifest.temperature}
        results = []
        for n, query in enumerate(queries):
            per_shard = [answer[n] for answer in answers]
            merged = merge_candidates(per_shard, fuse, rank_by, k)
            # the slowest shard's time per leg: the fan-out waits for all of them
            timings = {key: max(a.timings_ms.get(key, 0.0) for a in per_shard)
                       for key in {key for a in per_shard for key in a.timings_ms}}
            results.append(SearchResult(self._hits(query, params, merged), merged.candidates, weights,
                                        timings_ms=timings, warnings=warnings[n]))
        return results

    def _hits(self, query: Query, params: SearchParams, merged: MergedRanking) -> list[Hit]:
        page = range(params.offset, len(merged.ids))
        wanted: dict[int, list[str]] = {}
        for position in page:
            wanted.setdefault(int(merged.shards[position]), []).append(merged.ids[position])
        owners = sorted(wanted)
        futures = [self._pool.submit(self.shards[s].records, params.side, wanted[s]) for s in owners]
        records = {(s, item_id): record for s, future in zip(owners, futures, strict=True)
                   for item_id, record in zip(wanted[s], future.result(), strict=True)}
        hits = []
        for position in page:
            record = records[(int(merged.shards[position]), merged.ids[position])]
            if record is None:  # deleted between the two calls: the page is one short rather than wrong
                continue
            explained = params.explain and position - params.offset < EXPLAINED_HITS
            explanation = (explain_terms(query, record.term_ids, record.term_weights, self.encoder.vocabulary)
                           if explained else None)
            hits.append(Hit(-1, merged.ids[position], position + 1, float(merged.dense[position]),
                            float(merged.sparse[position]), float(merged.fused[position]), record.item,
                            explanation))
        return hits

    def owner(self, item_id: str) -> int:
        return shard_of(item_id, len(self.shards))

    def item(self, item_id: str) -> tuple[str, dict[str, Any]]:
        """The live item with this id: asked of its owner first, then of every shard (an id built elsewhere)."""
        owner = self.owner(item_id)
        found = self.shards[owner].find(item_id)
        if found is not None:
            return found
        others = [s for s in range(len(self.shards)) if s != owner]
        for answer in self.fan_out(lambda shard: shard.find(item_id), others):
            if answer is not None:
                return answer
        raise KeyError(item_id)

    def holder(self, item_id: str) -> int | None:
        """The shard that holds a live item with this id, if any."""
        owner = self.owner(item_id)
        if self.shards[owner].find(item_id) is not None:
            return owner
        others = [s for s in range(len(self.shards)) if s != owner]
        for s, answer in zip(others, self.fan_out(lambda shard: shard.find(item_id), others), strict=True):
            if answer is not None:
                return s
        return None

    def image_path(self, item: dict[str, Any], *, root: Path | None = None) -> Path | None:
        """An image item's file: an upload kept by its shard, else under the collection root, never outside."""
        if item.get("upload"):
            uploads = (self.layout.shard_dirs[self.owner(str(item["id"]))] / LIVE / UPLOADS).resolve()
            path = (uploads / str(item["upload"])).resolve()
            return path if path.parent == uploads and path.is_file() else None
        resolved = (root or self.collection_root).resolve()
        path = (resolved / str(item.get("path", ""))).resolve()
        return path if path.is_relative_to(resolved) and path.is_file() else None

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for shard in self.shards:
            shard.close()


class ShardedCollection:
    """A sharded collection as the service sees a live one: searches through the ingress, each write on the shard
    that owns its id."""

    def __init__(self, engine: ShardedEngine) -> None:
        self._engine = engine

    @classmethod
    def open_local(cls, collection_dir: str | Path, *, checkpoint: str | Path | None = None,
                   auto_compact_ratio: float | None = None) -> ShardedCollection:
        """Every shard in this process (the embedded way to serve a sharded collection)."""
        layout = read_layout(collection_dir)
        encoder = DuetEncoder.from_checkpoint(checkpoint or layout.checkpoint_dir)
        shards: list[LocalShard] = []
        try:
            for n, (entry, shard_dir) in enumerate(zip(layout.manifest.shards, layout.shard_dirs, strict=True)):
                shards.append(LocalShard(entry.name, shard_dir, shard=n, shards=len(layout.shard_dirs),
                                         encoder=encoder, auto_compact_ratio=auto_compact_ratio))
            manifests = [shard.live.engine.manifest for shard in shards]
            return cls(ShardedEngine(layout, shards, manifests, encoder=encoder))
        except BaseException:
            for shard in shards:
                shard.close()
            raise

    @property
    def engine(self) -> ShardedEngine:
        return self._engine

    @contextlib.contextmanager
    def reading(self) -> Iterator[ShardedEngine]:
        yield self._engine  # each shard holds its own generation for the length of each call

    def image_path(self, side: str, item: dict[str, Any], *, root: Path | None = None) -> Path | None:
        return self._engine.image_path(item, root=root) if side == "images" else None

    def stats(self) -> dict[str, Any]:
        per_shard = self._engine.fan_out(lambda shard: shard.stats())
        sides: dict[str, dict[str, int]] = {}
        for stats in per_shard:
            for side, counts in stats["sides"].items():
                total = sides.setdefault(side, dict.fromkeys(counts, 0))
                for key, value in counts.items():
                    total[key] = total.get(key, 0) + int(value)
        names = [shard.name for shard in self._engine.shards]
        return {"generation": self._engine.layout.version.name, "sides": sides,
                "wal_bytes": sum(int(s["wal_bytes"]) for s in per_shard),
                "needs_compaction": any(bool(s["needs_compaction"]) for s in per_shard),
                "shards": dict(zip(names, per_shard, strict=True))}

    def needs_compaction(self) -> bool:
        return any(self._engine.fan_out(lambda shard: shard.needs_compaction()))

    # ----- writes: prepared here (the encoder), applied on the owner -----
    def add_image(self, data: bytes, *, item_id: str | None = None, captions: Sequence[str] = (),
                  metadata: Mapping[str, Any] | None = None) -> WriteResult:
        engine = self._engine
        return self.apply(prepare_image(engine.encoder, engine.manifest.pruning, engine.sides, data,
                                        item_id=item_id, captions=captions, metadata=metadata))

    def add_text(self, text: str, *, item_id: str | None = None,
                 metadata: Mapping[str, Any] | None = None) -> WriteResult:
        engine = self._engine
        return self.apply(prepare_text(engine.encoder, engine.manifest.pruning, engine.sides, text,
                                       item_id=item_id, metadata=metadata))

    def apply(self, write: PreparedWrite) -> WriteResult:
        engine = self._engine
        owner = engine.owner(write.item_id)
        holder = engine.holder(write.item_id)
        if holder is not None and holder != owner:  # only a caption built with its image sits off its own shard
            raise IdConflictError(f"id {write.item_id!r} belongs to an item of shard "
                                  f"{engine.shards[holder].name} (a caption of another image); ids are unique "
                                  "across the collection")
        return engine.shards[owner].apply(write)

    def delete(self, item_id: str) -> WriteResult:
        holder = self._engine.holder(item_id)
        if holder is None:
            raise ItemNotFoundError(item_id)
        return self._engine.shards[holder].delete(item_id)

    def compact(self, cancel: Cancellation | None = None) -> CompactionResult:
        """Compact every shard that has changes; the counts summed, the slowest shard's time."""
        results = self._engine.fan_out(lambda shard: shard.compact(cancel=cancel))
        counts: dict[str, int] = {}
        for result in results:
            for side, count in result.counts.items():
                counts[side] = counts.get(side, 0) + count
        return CompactionResult(self._engine.layout.version.name, counts, max(r.seconds for r in results),
                                max(r.wal_seq for r in results))

    def close(self) -> None:
        self._engine.close()
