"""A sharded collection: several Duet indexes (shards) bound to one checkpoint, each item on the shard its id picks.

Layout (published like an index: ``<collection>/current -> versions/<id>``, one rename):
  collection.json        CollectionManifest: the shards, the checkpoint binding, the placement rule
  checkpoint/            the checkpoint every shard was encoded with (the ingress encodes queries with it)
  shards/<name>/         a whole Duet index (indexer/store.py), with its own versions and its own ``live/`` log
A shard's sides keep ``order.npy``: each row's position in the whole collection, so a merge of the shards' answers
breaks ties as one index would. Scores need no per-shard statistics (dot products), so merging every shard's top
candidates and ranking them exactly gives one index's ranking.

A build encodes the collection once, writes the vectors as Parquet (id, ordinal, dense, terms, weights, item) a
directory per side and shard, then builds each shard from its Parquet with the single-index stages
(``publish_index``). The embedded build runs these steps in this process; ``indexer/ray_build.py`` runs the same
functions on a Ray cluster.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.atomic import versioned_directory
from core.checkpoint import WEIGHTS, sha256_file
from core.encoder import DuetEncoder, EncodedItems, SparseRows
from indexer.build import EncodedSide, IndexBuildConfig, copy_checkpoint, publish_index
from indexer.store import (
    MANIFEST,
    SIDES,
    CheckpointBinding,
    IndexUnavailableError,
    check_publishable,
    opening_index,
    read_manifest,
    relative_to,
)
from indexer.writes import owner_id

COLLECTION_FORMAT: Final = "duet-collection/1"
COLLECTION_MANIFEST = "collection.json"
SHARDS_DIR = "shards"
ENCODED_DIR = "encoded"  # the build's Parquet, removed once the shards are published
PLACEMENT = "blake2b-64(owner id) mod shards; a caption '<image>#<n>' lives with its image"


def shard_of(item_id: str, shards: int) -> int:
    """The shard that owns an id: stable across processes, machines and Python versions (not ``hash``)."""
    digest = hashlib.blake2b(owner_id(item_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_name(shard: int) -> str:
    return f"shard-{shard:03d}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShardEntry(_Strict):
    name: str
    path: str  # relative to the collection's version
    counts: dict[str, int]  # side -> items


class CollectionManifest(_Strict):
    format: Literal["duet-collection/1"] = COLLECTION_FORMAT
    created_at: str
    checkpoint: CheckpointBinding
    placement: str = PLACEMENT
    shards: list[ShardEntry] = Field(min_length=1)
    collection: dict[str, Any]
    build: dict[str, Any] = {}


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` holds a sharded collection (rather than one index)."""
    if not Path(path).is_dir():
        return False
    with opening_index(path) as contents:
        return (contents / COLLECTION_MANIFEST).is_file()


@dataclass(frozen=True)
class ShardedLayout:
    """A sharded collection's live version, resolved once: its manifest and where each shard is."""

    root: Path  # the collection directory
    version: Path  # its live version
    manifest: CollectionManifest

    @property
    def shard_dirs(self) -> list[Path]:
        return [self.version / entry.path for entry in self.manifest.shards]

    @property
    def checkpoint_dir(self) -> Path:
        return self.version / self.manifest.checkpoint.path


def read_layout(path: str | Path) -> ShardedLayout:
    """The live version of a sharded collection; refuses a directory that is not one, or whose shards disagree."""
    root = Path(path)
    if not root.is_dir():
        raise IndexUnavailableError(f"collection directory not found: {root}")
    with opening_index(root) as version:
        file = version / COLLECTION_MANIFEST
        if not file.is_file():
            raise IndexUnavailableError(f"not a sharded Duet collection (no {COLLECTION_MANIFEST}): {root}")
        try:
            manifest = CollectionManifest.model_validate_json(file.read_text())
        except ValidationError as e:
            first = e.errors()[0]
            raise IndexUnavailableError(f"invalid collection manifest {file}: {first['loc']} {first['msg']}") from e
    layout = ShardedLayout(root, version, manifest)
    for entry, shard_dir in zip(manifest.shards, layout.shard_dirs, strict=True):
        bound = read_manifest(shard_dir).checkpoint
        if bound.content_hash != manifest.checkpoint.content_hash:
            raise IndexUnavailableError(f"shard {entry.name} was built with checkpoint {bound.content_hash[:12]}, "
                                        f"the collection with {manifest.checkpoint.content_hash[:12]}")
    return layout


def verify_collection(path: str | Path, *, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Every shard verified as an index (counts, ids, file hashes, its checkpoint), and the collection's binding."""
    from indexer.build import verify_index

    layout = read_layout(path)
    report: dict[str, Any] = {"collection": str(path), "version": str(layout.version), "shards": {}}
    for entry, shard_dir in zip(layout.manifest.shards, layout.shard_dirs, strict=True):
        shard = verify_index(shard_dir, checkpoint=checkpoint)
        counts = {side: s["count"] for side, s in shard["sides"].items()}
        if counts != entry.counts:
            raise IndexUnavailableError(f"shard {entry.name} holds {counts}, the collection manifest {entry.counts}")
        report["shards"][entry.name] = shard
    weights = layout.checkpoint_dir / WEIGHTS
    if not weights.is_file() or sha256_file(weights) != layout.manifest.checkpoint.content_hash:
        raise IndexUnavailableError(f"{layout.checkpoint_dir}: the collection's checkpoint is missing or not the one "
                                    "its shards were built with")
    report["ok"] = True
    return report


# ----- the build's Parquet: one directory per side and shard -----
def parquet_dir(encoded_dir: Path, side: str, shard: int) -> Path:
    return encoded_dir / f"side={side}" / f"shard={shard}"


def encoded_table(items: list[dict[str, Any]], encoded: EncodedItems, ordinals: np.ndarray) -> Any:
    """Rows of one side as an Arrow table: (id, ordinal, dense, terms, weights, item JSON)."""
    import pyarrow as pa

    sparse = encoded.sparse
    dense = np.ascontiguousarray(encoded.dense, np.float32)
    offsets = pa.array(sparse.indptr.astype(np.int32))
    return pa.table({
        "id": pa.array([str(item["id"]) for item in items], pa.string()),
        "ordinal": pa.array(np.asarray(ordinals, np.int64)),
        "dense": pa.FixedSizeListArray.from_arrays(pa.array(dense.reshape(-1)), dense.shape[1]),
        "terms": pa.ListArray.from_arrays(offsets, pa.array(sparse.indices.astype(np.int32))),
        "weights": pa.ListArray.from_arrays(offsets, pa.array(sparse.values.astype(np.float32))),
        "item": pa.array([json.dumps(item, ensure_ascii=False) for item in items], pa.string()),
    })


def side_from_table(table: Any) -> EncodedSide:
    """A side (items, vectors, ordinals) from Parquet rows, in collection order."""
    table = table.sort_by("ordinal")
    dense = np.asarray(table.column("dense").combine_chunks().flatten().to_numpy(), np.float32)
    terms = table.column("terms").combine_chunks()
    weights = table.column("weights").combine_chunks()
    lengths = np.asarray(terms.value_lengths().to_numpy(zero_copy_only=False), np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    sparse = SparseRows(indptr, np.asarray(terms.flatten().to_numpy(), np.int32),
                        np.asarray(weights.flatten().to_numpy(), np.float32))
    count = table.num_rows
    items = [json.loads(text) for text in table.column("item").to_pylist()]
    dim = dense.size // count if count else 1
    return EncodedSide(items, EncodedItems(dense.reshape(count, dim), sparse),
                       order=np.asarray(table.column("ordinal").to_numpy(), np.int64))


def write_encoded(encoded_dir: Path, sides: Mapping[str, EncodedSide], shards: int) -> dict[str, list[int]]:
    """Each side's rows as Parquet, split by owning shard; the rows per side and shard."""
    import pyarrow.parquet as pq

    counts: dict[str, list[int]] = {}
    for side, encoded_side in sides.items():
        owners = np.array([shard_of(str(item["id"]), shards) for item in encoded_side.items], np.int64)
        counts[side] = []
        for shard in range(shards):
            rows = np.flatnonzero(owners == shard)
            part = EncodedItems(encoded_side.encoded.dense[rows], _sparse_rows(encoded_side.encoded.sparse, rows))
            target = parquet_dir(encoded_dir, side, shard)
            target.mkdir(parents=True, exist_ok=True)
            pq.write_table(encoded_table([encoded_side.items[r] for r in rows], part, rows),
                           target / "part-0.parquet")
            counts[side].append(int(rows.size))
    return counts


def _sparse_rows(sparse: SparseRows, rows: np.ndarray) -> SparseRows:
    parts = [sparse.row(int(r)) for r in rows]
    indptr = np.concatenate([[0], np.cumsum([ids.size for ids, _ in parts])]).astype(np.int64)
    indices = np.concatenate([ids for ids, _ in parts]) if parts else np.zeros(0, np.int32)
    values = np.concatenate([v for _, v in parts]) if parts else np.zeros(0, np.float32)
    return SparseRows(indptr, indices.astype(np.int32), values.astype(np.float32))


def read_shard_sides(encoded_dir: Path, shard: int) -> dict[str, EncodedSide]:
    """A shard's sides from the build's Parquet (a side the collection lacks is absent)."""
    import pyarrow.parquet as pq

    sides: dict[str, EncodedSide] = {}
    for side in SIDES:
        directory = parquet_dir(encoded_dir, side, shard)
        files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
        if files:
            sides[side] = side_from_table(pq.ParquetDataset([str(f) for f in files]).read())
    return sides


def shard_config(config: IndexBuildConfig, output: Path) -> IndexBuildConfig:
    """A shard is built like one index of the collection: its factory, scale, pruning and threads."""
    return config.model_copy(update={"output": output, "shards": 1, "engine": "embedded", "address": None,
                                      "workers": 1})


def build_shard(encoded_dir: Path, shard: int, config: IndexBuildConfig, collection: Mapping[str, Any],
                output: Path, encoder: DuetEncoder | None = None) -> ShardEntry:
    """One shard's index from its Parquet: forward store, FAISS and Lucene through ``publish_index``."""
    sides = read_shard_sides(encoded_dir, shard)
    encoder = encoder or DuetEncoder.from_checkpoint(config.checkpoint)
    manifest = publish_index(shard_config(config, output), encoder, sides, collection)
    return ShardEntry(name=output.name, path=f"{SHARDS_DIR}/{output.name}",
                      counts={side: s.count for side, s in manifest.sides.items()})


# ----- the build skeleton every engine shares -----
@dataclass(frozen=True)
class EncodedParquet:
    """What an encode step wrote: rows per side and shard, the collection's record, and its own figures."""

    rows: dict[str, list[int]]
    collection: dict[str, Any]
    figures: dict[str, Any]
    # where the Parquet is when the step keeps it outside the new version (a resumable encode, which its engine
    # removes once the collection is published); None: the directory the step was given
    directory: Path | None = None


EncodeStep = Callable[[Path], EncodedParquet]  # writes the Parquet into the directory (or says where it kept it)
ShardStep = Callable[[Path, Path, Mapping[str, Any]], list[ShardEntry]]  # (Parquet, shards dir, record) -> shards


def publish_collection(config: IndexBuildConfig, encoder: DuetEncoder, encode: EncodeStep,
                       build_shards: ShardStep) -> CollectionManifest:
    """Encode into Parquet, build every shard from it, copy the checkpoint, and publish the whole collection in
    one rename; an interrupted build leaves the live version as it was."""
    check_publishable(config.output)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with versioned_directory(config.output, keep_previous=config.keep_previous) as contents:
        encoded_dir = contents / ENCODED_DIR
        encoded = encode(encoded_dir)
        timings["encode_seconds"] = time.perf_counter() - started
        entries = build_shards(encoded.directory or encoded_dir, contents / SHARDS_DIR, encoded.collection)
        timings["shards_seconds"] = time.perf_counter() - started - timings["encode_seconds"]
        shutil.rmtree(encoded_dir, ignore_errors=True)
        binding = copy_checkpoint(encoder, Path(config.checkpoint), contents)
        timings["total_seconds"] = time.perf_counter() - started
        recorded = json.loads(config.model_dump_json(exclude={"output"}))
        collection = dict(encoded.collection)
        if collection.get("root") is not None:
            collection["root"] = relative_to(config.output, collection["root"])
        manifest = CollectionManifest(
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), checkpoint=binding,
            shards=entries, collection=collection,
            build={"timings": timings, "rows": encoded.rows, "encode": encoded.figures, "config": recorded})
        (contents / COLLECTION_MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return manifest


def build_collection_embedded(config: IndexBuildConfig) -> CollectionManifest:
    """The sharded build in this process: the single index's stages, then one shard after another."""
    from indexer.build import (
        collection_record,
        encode_collection,
        extract_features,
        load_collection,
        with_source_payload,
    )

    collection = load_collection(config)
    config = with_source_payload(config, collection)
    encoder = DuetEncoder.from_checkpoint(config.checkpoint, device=config.device)

    def encode(encoded_dir: Path) -> EncodedParquet:
        features = extract_features(collection, encoder.backbone, cache_root=config.cache_root,
                                    skip_corrupt=config.skip_corrupt)
        encoded = encode_collection(features, encoder, batch_size=config.batch_size,
                                    prune_image_terms=config.prune_image_terms,
                                    prune_text_terms=config.prune_text_terms)
        return EncodedParquet(write_encoded(encoded_dir, encoded.sides, config.shards), collection_record(encoded),
                              {"engine": "embedded", "workers": 1})

    def build_shards(encoded_dir: Path, shards_dir: Path, record: Mapping[str, Any]) -> list[ShardEntry]:
        return [build_shard(encoded_dir, shard, config, record, shards_dir / shard_name(shard), encoder)
                for shard in range(config.shards)]

    return publish_collection(config, encoder, encode, build_shards)


__all__ = ["COLLECTION_MANIFEST", "MANIFEST", "CollectionManifest", "ShardEntry", "ShardedLayout",
           "EncodedParquet", "build_collection_embedded", "build_shard", "is_sharded", "publish_collection",
           "read_layout", "shard_of", "verify_collection", "write_encoded"]
