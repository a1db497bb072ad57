"""The sharded build on a Ray cluster: Ray Data encodes the collection with a pool of encoder actors into Parquet,
then one Ray task per shard builds that shard's index from it (indexer/sharding.py has the steps, the same that run
in this process for an embedded build).

Every node must see the collection's files, the checkpoint and the output directory at the same paths (a shared
filesystem), as for any Ray job that reads and writes files by path.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.encoder import DuetEncoder, EncodedItems
from indexer.build import IndexBuildConfig, load_collection, with_source_payload
from indexer.collection import Collection
from indexer.sharding import (
    CollectionManifest,
    EncodedParquet,
    ShardEntry,
    build_shard,
    encoded_table,
    publish_collection,
    shard_name,
    shard_of,
)

_logger = logging.getLogger(__name__)


class RayBuildError(ValueError):
    """A Ray build that cannot run as configured."""


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
    """A Ray Data actor: one encoder, loaded once, encoding batches of items (either side) into Parquet rows."""

    def __init__(self, checkpoint: str, shards: int, prune: dict[str, int | None], device: str) -> None:
        self.encoder = DuetEncoder.from_checkpoint(checkpoint, device=device)
        self.shards, self.prune = shards, prune

    def _encode(self, side: str, inputs: list[str]) -> EncodedItems:
        if side == "texts":
            return self.encoder.encode_texts(inputs, prune=self.prune["texts"])
        # a CPU actor holds one core (the pool runs one actor per core); a GPU actor decodes on the node's cores
        threads = None if self.encoder.device.startswith("cuda") else 1
        return self.encoder.encode_image_files(inputs, prune=self.prune["images"], threads=threads)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        tables = []
        rows = batch.to_pylist()
        for side in sorted({row["side"] for row in rows}):
            part = [row for row in rows if row["side"] == side]
            encoded = self._encode(side, [row["input"] for row in part])
            table = encoded_table([json.loads(row["item"]) for row in part], encoded,
                                  np.array([row["ordinal"] for row in part], np.int64))
            shards = pa.array([shard_of(row["id"], self.shards) for row in part], pa.int32())
            tables.append(table.append_column("side", pa.array([side] * len(part))).append_column("shard", shards))
        return pa.concat_tables(tables)


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


def encode_on_ray(config: IndexBuildConfig, collection: Collection, encoded_dir: Path) -> dict[str, Any]:
    """Encode every item with a pool of ``config.workers`` actors (a GPU each where the cluster has them, else a
    CPU) into Parquet partitioned by side and shard; the pass's figures."""
    import ray

    gpus = _uses_gpus()
    rows = input_rows(collection)
    started = time.perf_counter()
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // 64 + 1, 8 * config.workers)))
    encoded = dataset.map_batches(
        EncodeBatch, batch_format="pyarrow", batch_size=config.actor_batch_size,
        compute=ray.data.ActorPoolStrategy(size=config.workers), num_gpus=1 if gpus else 0, num_cpus=1,
        fn_constructor_kwargs={"checkpoint": str(config.checkpoint), "shards": config.shards,
                               "prune": {"images": config.prune_image_terms, "texts": config.prune_text_terms},
                               "device": "cuda" if gpus else "cpu"})
    encoded.write_parquet(str(encoded_dir), partition_cols=["side", "shard"])
    seconds = time.perf_counter() - started
    return {"engine": "ray", "workers": config.workers, "gpus": gpus, "items": len(rows),
            "nodes": len([n for n in ray.nodes() if n.get("Alive")]), "seconds": seconds,
            "items_per_second": len(rows) / seconds if seconds else None}


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
    if config.skip_corrupt:
        raise RayBuildError("--skip-corrupt is not supported by the Ray build yet: check the images, or build "
                            "embedded")
    _connect(config.address)
    collection = load_collection(config)
    config = with_source_payload(config, collection)
    encoder = DuetEncoder.from_checkpoint(config.checkpoint)
    record = {"name": collection.name, "source": collection.source, "root": str(collection.root),
              "splits": list(collection.splits), "skipped_images": []}

    def encode(encoded_dir: Path) -> EncodedParquet:
        figures = encode_on_ray(config, collection, encoded_dir)
        rows = {side: [0] * config.shards for side in ("images", "texts") if side == "images" or collection.texts}
        for row in input_rows(collection):
            rows[row["side"]][shard_of(row["id"], config.shards)] += 1
        return EncodedParquet(rows, record, figures)

    return publish_collection(config, encoder, encode,
                              lambda encoded, shards_dir, recorded: build_shards_on_ray(config, encoded, shards_dir,
                                                                                        recorded))
