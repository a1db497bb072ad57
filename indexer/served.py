"""A collection as the service serves it, whatever its size: the one read engine (indexer/search.py) over its
shards, and each write on the shard that owns its id.

A single index is a collection of one shard; a sharded collection (indexer/sharding.py) has several. A shard is
reached through ``ShardClient``: a live collection in this process (``LocalShard``), or a Ray Serve deployment
(service/ray_serving.py). A shard that cannot answer raises ``ShardUnavailableError`` naming it: a search then
fails as a whole rather than silently returning another ranking.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from core.cancel import Cancellation
from core.encoder import DuetEncoder
from indexer.filters import Filter
from indexer.live import CompactionResult, ItemNotFoundError, LiveCollection, WriteResult
from indexer.merge import ItemRecord, ShardCandidates, ShardReader
from indexer.params import SearchParams
from indexer.query import Query
from indexer.search import SearchEngine
from indexer.sharding import ShardedLayout, is_sharded, read_layout
from indexer.snapshots import UnsupportedCollectionError
from indexer.store import IndexManifest, IndexUnavailableError, manifest_in, manifest_path, opening_index
from indexer.writes import IdConflictError, PreparedWrite, prepare_image, prepare_text


class ShardService:
    """One shard: a live collection over its index, answering candidates, items and writes."""

    def __init__(self, index_dir: str | Path, *, shard: int = 0, shards: int = 1, encoder: DuetEncoder | None = None,
                 checkpoint: str | Path | None = None, auto_compact_ratio: float | None = None,
                 follow: bool = False) -> None:
        """``follow``: a read replica of the shard, following the log its one writer keeps (no writes here)."""
        self.shard, self.shards = shard, shards
        if follow:
            self.live = LiveCollection.follow(index_dir, encoder=encoder, checkpoint=checkpoint)
        else:
            self.live = LiveCollection.open(index_dir, encoder=encoder, checkpoint=checkpoint,
                                            auto_compact_ratio=auto_compact_ratio)

    @property
    def manifest(self) -> IndexManifest:
        return self.live.reader.manifest

    def candidates(self, side: str, queries: Sequence[Query], params: SearchParams, k: int, *,
                   threads: int = 1) -> list[ShardCandidates]:
        with self.live.reading() as reader:
            found = reader.candidates(side, queries, params, k, threads=threads)
        return [answer.placed(self.shard, self.shards) for answer in found]

    def records(self, side: str, ids: Sequence[str]) -> list[ItemRecord | None]:
        with self.live.reading() as reader:
            return reader.records(side, ids)

    def find(self, item_id: str) -> tuple[str, dict[str, Any]] | None:
        with self.live.reading() as reader:
            return reader.find(item_id)

    def facets(self, side: str, field: str, filter_: Filter | None) -> dict[Any, int]:
        with self.live.reading() as reader:
            return reader.facets(side, field, reader.compiled(filter_))

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


class ShardClient(ShardReader, Protocol):
    """How the collection reaches a shard for reads and writes: ``LocalShard``, or a remote replica set."""

    def apply(self, write: PreparedWrite) -> WriteResult: ...

    def delete(self, item_id: str) -> WriteResult: ...

    def stats(self) -> dict[str, Any]: ...

    def needs_compaction(self) -> bool: ...

    def compact(self, cancel: Cancellation | None = None) -> CompactionResult: ...


class LocalShard(ShardService):
    """A shard served in this process."""

    def __init__(self, name: str, index_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(index_dir, **kwargs)
        self.name = name


def sharded_engine(layout: ShardedLayout, shards: Sequence[ShardClient], encoder: DuetEncoder) -> SearchEngine:
    """The read engine of a sharded collection over its shards, wherever they run."""
    engine = SearchEngine(shards, encoder, root=layout.root, shard_dirs=layout.shard_dirs,
                          collection_root=manifest_path(layout.root, layout.manifest.collection.get("root", ".")))
    if layout.manifest.checkpoint.content_hash != engine.manifest.checkpoint.content_hash:
        engine.close()
        raise IndexUnavailableError("the collection and its shards name different checkpoints")
    return engine


def bound_encoder(path: str | Path, checkpoint: str | Path | None, device: str) -> DuetEncoder:
    """The encoder of ``checkpoint``, else of the one the collection at ``path`` is bound to, on ``device``."""
    if checkpoint is not None:
        return DuetEncoder.from_checkpoint(checkpoint, device=device)
    if is_sharded(path):
        return DuetEncoder.from_checkpoint(read_layout(path).checkpoint_dir, device=device)
    with opening_index(path) as contents:  # the version is held while its checkpoint copy is read
        return DuetEncoder.from_checkpoint(manifest_path(contents, manifest_in(contents, path).checkpoint.path),
                                           device=device)


class ServedCollection:
    """A collection as the service sees it: searches through the read engine, each write on the shard that owns
    its id."""

    def __init__(self, engine: SearchEngine, shards: Sequence[ShardClient], *, generation: str | None = None) -> None:
        """``generation``: the name of a sharded collection's version (one index: its shard's own)."""
        self._engine, self._shards, self._generation = engine, list(shards), generation

    @classmethod
    def open(cls, path: str | Path, *, checkpoint: str | Path | None = None, encoder: DuetEncoder | None = None,
             auto_compact_ratio: float | None = None, device: str = "cpu") -> ServedCollection:
        """A collection directory, every shard in this process: one index, or a sharded collection. ``device``:
        where a loaded encoder runs (on an accelerator the dense leg runs there too: indexer/device_dense.py)."""
        if encoder is None and device != "cpu":
            encoder = bound_encoder(path, checkpoint, device)
        if is_sharded(path):
            return cls.open_sharded(path, checkpoint=checkpoint, encoder=encoder,
                                    auto_compact_ratio=auto_compact_ratio)
        shard = LocalShard("index", path, encoder=encoder, checkpoint=checkpoint,
                           auto_compact_ratio=auto_compact_ratio)
        try:
            reader = shard.live.reader
            engine = SearchEngine([shard], reader.encoder, root=Path(path), collection_root=reader.collection_root,
                                  shard_dirs=[Path(path)])
        except BaseException:
            shard.close()
            raise
        return cls(engine, [shard])

    @classmethod
    def open_sharded(cls, collection_dir: str | Path, *, checkpoint: str | Path | None = None,
                     encoder: DuetEncoder | None = None,
                     auto_compact_ratio: float | None = None) -> ServedCollection:
        """A sharded collection, every shard in this process (the embedded way to serve one)."""
        layout = read_layout(collection_dir)
        encoder = encoder or DuetEncoder.from_checkpoint(checkpoint or layout.checkpoint_dir)
        shards: list[LocalShard] = []
        try:
            for n, (entry, shard_dir) in enumerate(zip(layout.manifest.shards, layout.shard_dirs, strict=True)):
                shards.append(LocalShard(entry.name, shard_dir, shard=n, shards=len(layout.shard_dirs),
                                         encoder=encoder, auto_compact_ratio=auto_compact_ratio))
            return cls(sharded_engine(layout, shards, encoder), shards, generation=layout.version.name)
        except BaseException:
            for shard in shards:
                shard.close()
            raise

    @property
    def engine(self) -> SearchEngine:
        return self._engine

    @property
    def sharded(self) -> bool:
        return self._generation is not None

    def live_collection(self) -> LiveCollection:
        """The one live collection of a single index in this process (what a snapshot is taken of)."""
        shard = self._shards[0] if not self.sharded else None
        if not isinstance(shard, ShardService):
            raise UnsupportedCollectionError("snapshots of sharded collections are not supported yet; snapshot each "
                                             "shard's index instead")
        return shard.live

    @contextlib.contextmanager
    def reading(self) -> Iterator[SearchEngine]:
        yield self._engine  # each shard holds its own generation for the length of each call

    def image_path(self, side: str, item: dict[str, Any], *, root: Path | None = None) -> Path | None:
        return self._engine.image_path(item, root=root) if side == "images" else None

    def stats(self) -> dict[str, Any]:
        per_shard = self._engine.fan_out(lambda s: self._shards[s].stats())
        if not self.sharded:
            return per_shard[0]
        sides: dict[str, dict[str, int]] = {}
        for stats in per_shard:
            for side, counts in stats["sides"].items():
                total = sides.setdefault(side, dict.fromkeys(counts, 0))
                for key, value in counts.items():
                    total[key] = total.get(key, 0) + int(value)
        names = [shard.name for shard in self._shards]
        return {"generation": self._generation, "sides": sides,
                "wal_bytes": sum(int(s["wal_bytes"]) for s in per_shard),
                "needs_compaction": any(bool(s["needs_compaction"]) for s in per_shard),
                "shards": dict(zip(names, per_shard, strict=True))}

    def needs_compaction(self) -> bool:
        return any(self._engine.fan_out(lambda s: self._shards[s].needs_compaction()))

    # ----- writes: prepared here (the encoder), applied on the owner -----
    def add_image(self, data: bytes, *, item_id: str | None = None, captions: Sequence[str] = (),
                  metadata: Mapping[str, Any] | None = None) -> WriteResult:
        engine = self._engine
        return self.apply(prepare_image(engine.encoder, engine.manifest.pruning, engine.sides, data,
                                        item_id=item_id, captions=captions, metadata=metadata,
                                        payload=engine.manifest.payload))

    def add_text(self, text: str, *, item_id: str | None = None,
                 metadata: Mapping[str, Any] | None = None) -> WriteResult:
        engine = self._engine
        return self.apply(prepare_text(engine.encoder, engine.manifest.pruning, engine.sides, text,
                                       item_id=item_id, metadata=metadata,
                                       payload=engine.manifest.payload))

    def apply(self, write: PreparedWrite) -> WriteResult:
        engine = self._engine
        owner = engine.owner(write.item_id)
        holder = engine.holder(write.item_id) if len(self._shards) > 1 else owner
        if holder is not None and holder != owner:  # only a caption built with its image sits off its own shard
            raise IdConflictError(f"id {write.item_id!r} belongs to an item of shard "
                                  f"{self._shards[holder].name} (a caption of another image); ids are unique "
                                  "across the collection")
        return self._shards[owner].apply(write)

    def delete(self, item_id: str) -> WriteResult:
        holder = self._engine.holder(item_id)
        if holder is None:
            raise ItemNotFoundError(item_id)
        return self._shards[holder].delete(item_id)

    def compact(self, cancel: Cancellation | None = None) -> CompactionResult:
        """Compact every shard that has changes; the counts summed, the slowest shard's time."""
        results = self._engine.fan_out(lambda s: self._shards[s].compact(cancel=cancel))
        if not self.sharded:
            return results[0]
        counts: dict[str, int] = {}
        for result in results:
            for side, count in result.counts.items():
                counts[side] = counts.get(side, 0) + count
        return CompactionResult(self._generation or "", counts, max(r.seconds for r in results),
                                max(r.wal_seq for r in results))

    def close(self) -> None:
        self._engine.close()
