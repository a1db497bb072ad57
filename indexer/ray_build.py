"""The sharded build on a Ray cluster: Ray Data encodes the collection with a pool of encoder actors into Parquet,
then one Ray task per shard builds that shard's index from it (indexer/sharding.py has the steps, the same that run
in this process for an embedded build).

The encode resumes: each actor writes every batch's rows as Parquet files of their own, atomically, under
``<output>/.encoding/<key>``, the key a digest of what the vectors depend on (checkpoint, inputs and their order,
shards, pruning, device). A build of the same inputs after an interruption (a crash, Ctrl-C, an unreadable image
without --skip-corrupt) encodes only the items that have no row there yet, or whose row is stale: its stored record
differs from the item's record now (a payload edited), or its image file changed since (each image row records the
file's size and modification time). The directory is removed once the collection is published.

Every node must see the collection's files, the checkpoint and the output directory at the same paths (a shared
filesystem), as for any Ray job that reads and writes files by path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_file
from core.encoder import DuetEncoder, EncodedItems
from core.image_pipeline import CorruptImageError
from core.progress import progress_bar
from indexer.build import IndexBuildConfig, load_collection, with_source_payload
from indexer.collection import Collection
from indexer.sharding import (
    CollectionManifest,
    EncodedParquet,
    ShardEntry,
    build_shard,
    encoded_table,
    parquet_dir,
    publish_collection,
    shard_name,
    shard_of,
)
from indexer.store import SIDES

_logger = logging.getLogger(__name__)

ENCODING_DIR = ".encoding"  # beside the versions: a Ray build's encoded rows, kept until the collection is published
MAX_BLOCKS = 4096  # of the encode's input: Ray Data schedules each block as a task
STAMP = "stamp"  # the column of an image row that holds its file's stamp when it was encoded


class RayBuildError(ValueError):
    """A Ray build that cannot run as configured."""


def file_stamp(path: str) -> str:
    """A file's size and modification time: a changed or replaced file gets another stamp ("" if it cannot be read)."""
    try:
        facts = os.stat(path)
    except OSError:
        return ""
    return f"{facts.st_size}:{facts.st_mtime_ns}"


def input_rows(collection: Collection) -> list[dict[str, Any]]:
    """What the encoder actors read: each item's side, id, collection position, input (a file or a text) and the
    record its side stores."""
    images = [{"side": "images", "id": i.id, "ordinal": n, "input": str(collection.image_path(i)),
               "item": json.dumps(collection.image_record(i), ensure_ascii=False)}
              for n, i in enumerate(collection.images)]
    texts = [{"side": "texts", "id": t.id, "ordinal": n, "input": t.text,
              "item": json.dumps(record, ensure_ascii=False)}
             for n, (t, record) in enumerate(zip(collection.texts, collection.text_records(), strict=True))]
    return images + texts


class EncodeBatch:
    """A Ray Data actor: one encoder, loaded once, encoding batches of items (either side) into Parquet files of the
    encode's directory, one per side and shard of a batch, each written atomically; it returns how many inputs the
    batch held (the driver's progress)."""

    def __init__(self, checkpoint: str, encoded_dir: str, shards: int, prune: dict[str, int | None], device: str,
                 skip_corrupt: bool = False) -> None:
        self.encoder = DuetEncoder.from_checkpoint(checkpoint, device=device)
        self.encoded_dir = Path(encoded_dir)
        self.shards, self.prune, self.skip_corrupt = shards, prune, skip_corrupt

    def _encode(self, side: str, inputs: list[str]) -> tuple[EncodedItems, list[int]]:
        """The side's vectors and which inputs they are (with skip_corrupt an unreadable image has no row: the
        driver lists it from the rows that are missing)."""
        if side == "texts":
            return self.encoder.encode_texts(inputs, prune=self.prune["texts"]), list(range(len(inputs)))
        # a CPU actor holds one core (the pool runs one actor per core); a GPU actor decodes on the node's cores
        threads = None if self.encoder.device.startswith("cuda") else 1
        files = self.encoder.encode_readable_image_files(inputs, prune=self.prune["images"], threads=threads,
                                                         skip_corrupt=self.skip_corrupt)
        return files.encoded, files.kept

    def _write(self, side: str, shard: int, table: Any) -> None:
        """One shard's rows of a batch. The name is a digest of the ids, so a batch Ray retries replaces its own
        file instead of adding its rows twice."""
        import pyarrow.parquet as pq

        digest = hashlib.sha256("\n".join(table.column("id").to_pylist()).encode()).hexdigest()[:24]
        with atomic_file(parquet_dir(self.encoded_dir, side, shard) / f"{digest}.parquet") as handle:
            pq.write_table(table, handle)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        rows = batch.to_pylist()
        for side in sorted({row["side"] for row in rows}):
            part = [row for row in rows if row["side"] == side]
            # stamped before reading: a file that changes while it is encoded is encoded again by the next run
            stamps = [file_stamp(row["input"]) for row in part] if side == "images" else []
            encoded, kept = self._encode(side, [row["input"] for row in part])
            part = [part[n] for n in kept]
            table = encoded_table([json.loads(row["item"]) for row in part], encoded,
                                  np.array([row["ordinal"] for row in part], np.int64))
            if side == "images":
                table = table.append_column(STAMP, pa.array([stamps[n] for n in kept], pa.string()))
            owners = np.array([shard_of(row["id"], self.shards) for row in part], np.int64)
            for shard in np.unique(owners):
                self._write(side, int(shard), table.filter(pa.array(owners == shard)))
        return pa.table({"inputs": [len(rows)]})


def _partition_files(encoded_dir: Path, side: str, shard: int) -> list[Path]:
    directory = parquet_dir(encoded_dir, side, shard)  # absent where no row of the side fell in the shard
    return sorted(directory.glob("*.parquet")) if directory.is_dir() else []


def encoded_ids(encoded_dir: Path, side: str, shard: int) -> list[str]:
    """The ids of a side's rows the encode pass wrote for a shard."""
    import pyarrow.parquet as pq

    return [item_id for path in _partition_files(encoded_dir, side, shard)
            for item_id in pq.read_table(path, columns=["id"]).column("id").to_pylist()]


def encoded_facts(encoded_dir: Path, side: str, shard: int) -> dict[str, tuple[str, str]]:
    """What each of a shard's rows of ``side`` was encoded from, by id: its record (JSON) and, for an image, its
    file's stamp (texts: "")."""
    import pyarrow.parquet as pq

    facts: dict[str, tuple[str, str]] = {}
    for path in _partition_files(encoded_dir, side, shard):
        table = pq.read_table(path, columns=["id", "item", STAMP] if side == "images" else ["id", "item"])
        stamps = table.column(STAMP).to_pylist() if side == "images" else [""] * table.num_rows
        facts.update(zip(table.column("id").to_pylist(), zip(table.column("item").to_pylist(), stamps, strict=True),
                         strict=True))
    return facts


def drop_encoded_rows(encoded_dir: Path, side: str, shard: int, ids: set[str]) -> None:
    """Rewrite a shard's Parquet of ``side`` without the rows of ``ids``, each file at once (an interrupted rewrite
    leaves the directory as it was, for the next run to resume)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for path in _partition_files(encoded_dir, side, shard):
        table = pq.read_table(path)
        kept = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=pa.array(sorted(ids), pa.string()))))
        if kept.num_rows < table.num_rows:
            with atomic_file(path) as handle:
                pq.write_table(kept, handle)


def _leave_out_unreadable(encoded_dir: Path, collection: Collection,
                          image_ids: list[list[str]]) -> tuple[list[str], set[str]]:
    """The images the actors could not read (absent from ``image_ids``, the written ids per shard), their captions
    dropped from the Parquet as an embedded build leaves them out: the images' paths, for the collection's record,
    and the dropped captions' ids."""
    kept = {item_id for ids in image_ids for item_id in ids}
    skipped = [image for image in collection.images if image.id not in kept]
    if not skipped:
        return [], set()
    _logger.warning("indexing without %d unreadable images: %s", len(skipped),
                    [image.relative_path for image in skipped[:5]])
    if len(skipped) == len(collection.images):
        raise ValueError(f"nothing to index: no readable images in {collection.root}")
    gone = {image.id for image in skipped}
    orphans = {text.id for text in collection.texts if text.image_id in gone}
    for shard in range(len(image_ids)):
        drop_encoded_rows(encoded_dir, "texts", shard, orphans)
    return [image.relative_path for image in skipped], orphans


def _connect(address: str | None) -> None:
    import ray

    target = address or os.environ.get("RAY_ADDRESS")
    if not target:
        raise RayBuildError("--engine ray needs a cluster: --address HOST:PORT or the RAY_ADDRESS setting")
    if not ray.is_initialized():
        ray.init(address=target, log_to_driver=False, logging_level=logging.WARNING)


def _uses_gpus() -> bool:
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) >= 1


def encoding_key(content_hash: str, config: IndexBuildConfig, rows: list[dict[str, Any]], gpus: bool) -> str:
    """A digest of what the encoded vectors depend on: the checkpoint's weights, every input (file or text) with its
    id and position, the shard count, the pruning and the device (a GPU encodes under bf16). Records are checked row
    by row instead (``_fresh_rows``), so an edited payload costs its rows, not the whole encode."""
    digest = hashlib.sha256(json.dumps({"checkpoint": content_hash, "shards": config.shards,
                                        "prune": [config.prune_image_terms, config.prune_text_terms],
                                        "device": "cuda" if gpus else "cpu"}).encode())
    for row in rows:
        digest.update(json.dumps([row["side"], row["id"], row["ordinal"], row["input"]], ensure_ascii=False).encode()
                      + b"\n")
    return digest.hexdigest()[:20]


def resumable_encoding_dir(output: Path, key: str) -> Path:
    """The encode's directory for inputs of ``key``; one left by a build of other inputs is removed."""
    root = output / ENCODING_DIR
    if root.is_dir():
        for stale in [entry for entry in root.iterdir() if entry.name != key]:
            _logger.info("removing the encoded rows of a build of other inputs: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
    return root / key


def _encoded_ids(encoded_dir: Path, shards: int) -> dict[str, list[list[str]]]:
    """Each side's ids with a row in the directory, per shard."""
    return {side: [encoded_ids(encoded_dir, side, shard) for shard in range(shards)] for side in SIDES}


def _fresh_rows(encoded_dir: Path, rows: list[dict[str, Any]], shards: int) -> set[tuple[str, str]]:
    """The (side, id) of the rows already encoded for ``rows``, after dropping those whose item changed since they
    were encoded: its record differs, or its image file's stamp."""
    current = {(row["side"], row["id"]): row for row in rows}
    fresh: set[tuple[str, str]] = set()
    for side in SIDES:
        for shard in range(shards):
            stored = encoded_facts(encoded_dir, side, shard)
            if not stored:
                continue
            ids = list(stored)
            inputs = [current.get((side, item_id)) for item_id in ids]
            stamps = [""] * len(ids)
            if side == "images":
                with ThreadPoolExecutor(max_workers=16) as pool:  # a shared filesystem answers many stats at once
                    stamps = list(pool.map(file_stamp, [row["input"] if row else "" for row in inputs]))
            stale = {item_id for item_id, row, stamp in zip(ids, inputs, stamps, strict=True)
                     if row is None or stored[item_id] != (row["item"], stamp)}
            if stale:
                _logger.info("%s of shard %d: encoding again %d whose item or file changed since", side, shard,
                             len(stale))
                drop_encoded_rows(encoded_dir, side, shard, stale)
            fresh.update((side, item_id) for item_id in ids if item_id not in stale)
    return fresh


def encode_on_ray(config: IndexBuildConfig, rows: list[dict[str, Any]], encoded_dir: Path,
                  gpus: bool) -> dict[str, Any]:
    """Encode the rows that have no fresh row in ``encoded_dir`` yet (none, or a stale one) with a pool of
    ``config.workers`` actors (a GPU each where the cluster has them, else a CPU) into Parquet partitioned by side
    and shard; the pass's figures."""
    import ray

    written = _fresh_rows(encoded_dir, rows, config.shards)
    todo = [row for row in rows if (row["side"], row["id"]) not in written]
    if written:
        _logger.info("resuming the encode: %d of %d items already encoded in %s", len(rows) - len(todo), len(rows),
                     encoded_dir)
    started = time.perf_counter()
    if todo:
        context = ray.data.DataContext.get_current()
        # an actor's own error (an unreadable image names its file) reaches the driver as itself, not as Ray Data's
        # generic UserCodeException whose cause is only text
        context.raise_original_map_exception = True
        context.enable_progress_bars = False  # the driver's own bar counts the items
        # blocks of a few batches: an actor returns a block's count when the block is done, so the bar moves that
        # often (each actor gets one at least; each block is a task of its own)
        blocks = min(len(todo), MAX_BLOCKS, max(config.workers, len(todo) // (4 * config.actor_batch_size)))
        dataset = ray.data.from_items(todo, override_num_blocks=blocks)
        encoded = dataset.map_batches(
            EncodeBatch, batch_format="pyarrow", batch_size=config.actor_batch_size,
            compute=ray.data.ActorPoolStrategy(size=config.workers), num_gpus=1 if gpus else 0, num_cpus=1,
            fn_constructor_kwargs={"checkpoint": str(config.checkpoint), "encoded_dir": str(encoded_dir),
                                   "shards": config.shards,
                                   "prune": {"images": config.prune_image_terms, "texts": config.prune_text_terms},
                                   "device": "cuda" if gpus else "cpu", "skip_corrupt": config.skip_corrupt})
        with progress_bar(total=len(todo), desc="encode on ray", unit="item") as bar:
            for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(int(np.sum(batch["inputs"])))
    seconds = time.perf_counter() - started
    return {"engine": "ray", "workers": config.workers, "gpus": gpus, "items": len(todo),
            "resumed_items": len(rows) - len(todo),
            "nodes": len([n for n in ray.nodes() if n.get("Alive")]), "seconds": seconds,
            "items_per_second": len(todo) / seconds if todo and seconds else None}


def _build_shard_task(encoded_dir: str, shard: int, config_json: str, collection: Mapping[str, Any],
                      output: str) -> ShardEntry:
    """One shard's index, on whichever node Ray runs it."""
    return build_shard(Path(encoded_dir), shard, IndexBuildConfig.model_validate_json(config_json), collection,
                       Path(output))


def build_shards_on_ray(config: IndexBuildConfig, encoded_dir: Path, shards_dir: Path,
                        collection: Mapping[str, Any]) -> list[ShardEntry]:
    import ray

    task = ray.remote(num_cpus=1)(_build_shard_task)
    refs = [task.remote(str(encoded_dir), n, config.model_dump_json(), dict(collection), str(shards_dir /
                                                                                              shard_name(n)))
            for n in range(config.shards)]
    return list(ray.get(refs))


def build_collection_on_ray(config: IndexBuildConfig) -> CollectionManifest:
    """The sharded build of ``config`` on the Ray cluster at ``config.address``."""
    _connect(config.address)
    collection = load_collection(config)
    config = with_source_payload(config, collection)
    encoder = DuetEncoder.from_checkpoint(config.checkpoint)
    record = {"name": collection.name, "source": collection.source, "root": str(collection.root),
              "splits": list(collection.splits), "skipped_images": []}

    def encode(_: Path) -> EncodedParquet:
        gpus = _uses_gpus()
        rows = input_rows(collection)
        encoded_dir = resumable_encoding_dir(Path(config.output),
                                             encoding_key(encoder.checkpoint.content_hash, config, rows, gpus))
        try:
            figures = encode_on_ray(config, rows, encoded_dir, gpus)
        except CorruptImageError as e:  # Ray's wrapper class derives from the actor's error and holds it as cause
            original = getattr(e, "cause", e)
            _note_kept(encoded_dir)
            # Ray appends its retry advice to the message: keep the error's own first line
            raise CorruptImageError(str(original).split("\n", 1)[0]).with_skip_hint() from None
        except BaseException:
            _note_kept(encoded_dir)
            raise
        written = _encoded_ids(encoded_dir, config.shards)
        record["skipped_images"], dropped = _leave_out_unreadable(encoded_dir, collection, written["images"])
        rows_per_shard = {"images": [len(ids) for ids in written["images"]]}
        if collection.texts:
            rows_per_shard["texts"] = [sum(i not in dropped for i in ids) for ids in written["texts"]]
        return EncodedParquet(rows_per_shard, record, figures, directory=encoded_dir)

    manifest = publish_collection(config, encoder, encode,
                                  lambda encoded, shards_dir, recorded: build_shards_on_ray(config, encoded, shards_dir,
                                                                                            recorded))
    shutil.rmtree(Path(config.output) / ENCODING_DIR, ignore_errors=True)
    return manifest


def _note_kept(encoded_dir: Path) -> None:
    """Say where an interrupted encode's rows wait for the next build of the same inputs."""
    files = len(list(encoded_dir.glob("side=*/shard=*/*.parquet"))) if encoded_dir.is_dir() else 0
    if files:
        _logger.warning("the items encoded so far stay in %s (%d files): a build of the same inputs resumes there",
                        encoded_dir, files)
