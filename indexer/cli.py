"""``python -m indexer build|verify|add|delete|compact|snapshot|restore|alias ...``: build the Lucene impact + FAISS
indexes of a collection offline; add, replace or delete items of a built index and compact it, while no service
holds it; snapshot it into one archive and restore an archive as a new index; name a data directory's collections
by aliases."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.checkpoint import CheckpointError
from core.cli_args import ModelArgs
from core.data import DatasetError
from core.image_pipeline import CorruptImageError
from core.progress import setup_logging
from indexer.build import IndexBuildConfig, build_index, verify_index
from indexer.catalog import Catalog
from indexer.live import CollectionLockedError, ItemNotFoundError, LiveCollection
from indexer.served import ServedCollection
from indexer.sharding import build_collection_embedded, is_sharded, verify_collection
from indexer.snapshots import SnapshotStore, UnsupportedCollectionError, restore_snapshot, snapshots_of
from indexer.store import IndexUnavailableError

_logger = logging.getLogger("indexer")
USER_ERRORS = (DatasetError, CheckpointError, CorruptImageError, IndexUnavailableError, FileNotFoundError,
               ValidationError, ValueError)


# flags keep the names scripts and docs use; --data/--folder (dataset and source together) are added by hand
BUILD_ARGS = ModelArgs(IndexBuildConfig, exclude=("source", "dataset"), flags={"output": "--out",
                                                                               "sparse_scale": "--scale"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m indexer", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="encode a collection and publish its indexes (atomically)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", help="Karpathy-format dataset directory (default: the DUET_DATA setting)")
    source.add_argument("--folder", help="a plain folder of images (optional metadata.jsonl with captions)")
    BUILD_ARGS.add_to(p)
    p = sub.add_parser("verify", help="check an index's counts, ids and file hashes")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--checkpoint", help="also check the index was built from this checkpoint")
    _add_write_commands(sub)
    _add_snapshot_commands(sub)
    _add_alias_command(sub)
    return parser


def _add_write_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("add", help="add an image (with captions) or a text to an index; an item with its id is "
                       "replaced")
    p.add_argument("--index", required=True, help="index directory")
    item = p.add_mutually_exclusive_group(required=True)
    item.add_argument("--image", type=Path, help="image file (the images side)")
    item.add_argument("--text", help="a text item (the texts side)")
    p.add_argument("--caption", action="append", default=[], help="a caption of the image (repeat for more)")
    p.add_argument("--id", help="the item's id (default: a hash of its content)")
    p.add_argument("--metadata", help="a JSON object kept with the item")
    p = sub.add_parser("delete", help="delete an item (an image with its captions) from an index")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--id", required=True, help="the item's id")
    p = sub.add_parser("compact", help="merge an index's writes since it was built into a new published version")
    p.add_argument("--index", required=True, help="index directory")


def _add_snapshot_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("snapshot", help="copy an index (its live version and every write logged since) into one "
                       "archive, <out>/<name>.tar; not while a service holds it (use its API then)")
    p.add_argument("--index", required=True, help="index directory (sharded collections are not supported yet)")
    p.add_argument("--out", type=Path, help="directory of the index's snapshots (default: <index>.snapshots, beside "
                   "the index directory)")
    p.add_argument("--name", help="the snapshot's name, [A-Za-z0-9._-] (default: the UTC time, e.g. "
                   "20250101T120000.000000Z); an existing name is refused")
    p = sub.add_parser("restore", help="restore a snapshot archive as a new index directory (checked file by file, "
                       "verified, then renamed into place)")
    p.add_argument("--snapshot", required=True, type=Path, help="the snapshot archive (.tar)")
    p.add_argument("--index", required=True, type=Path, help="the new index directory (must not exist)")
    p.add_argument("--checkpoint", help="refuse a snapshot bound to another checkpoint than this one (a checkpoint "
                   "directory, or its content hash)")


def _add_alias_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("alias", help="list, set or delete the aliases of a data directory's collections (a running "
                       "service resolves each request's alias afresh, so a swap here takes effect at once)")
    p.add_argument("--data-dir", required=True, type=Path, help="the data directory (one collection per folder)")
    p.add_argument("alias", nargs="?", help="the alias to set or delete (none: list them)")
    p.add_argument("collection", nargs="?", help="the collection it names (swapped atomically)")
    p.add_argument("--delete", action="store_true", help="delete the alias")


def _run_alias(args: argparse.Namespace) -> dict[str, Any]:
    catalog = Catalog(args.data_dir)
    if args.alias is None:
        return {"aliases": catalog.aliases(), "collections": catalog.names()}
    if args.delete:
        return {"alias": args.alias, "collection": catalog.delete_alias(args.alias), "deleted": True}
    if args.collection is None:
        raise ValueError("name the collection the alias is to name, or --delete it")
    previous = catalog.set_alias(args.alias, args.collection)
    return {"alias": args.alias, "collection": args.collection, "previous": previous}


def _run_snapshot(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "restore":
        expected = args.checkpoint
        if expected is not None and Path(expected).is_dir():
            from core.checkpoint import read_manifest as read_checkpoint_manifest

            expected = str(read_checkpoint_manifest(expected)["content_hash"])
        return restore_snapshot(args.snapshot, args.index, checkpoint_hash=expected).model_dump()
    if is_sharded(args.index):
        raise UnsupportedCollectionError(f"{args.index}: snapshots of sharded collections are not supported yet "
                                         "(a collection.json over several indexes; their points would differ)")
    store = SnapshotStore(args.out or snapshots_of(args.index))
    live = LiveCollection.open(args.index, auto_compact_ratio=None)
    try:
        info = store.take(live, args.name)
    finally:
        live.close()
    return {**info.model_dump(), "path": str(store.path(info.name))}


def build_config(args: argparse.Namespace) -> IndexBuildConfig:
    if args.folder:
        return BUILD_ARGS.build(args, source="folder", dataset=args.folder)
    # no --data: the field's own default (the DUET_DATA setting) applies
    return BUILD_ARGS.build(args, source="karpathy", **({"dataset": args.data} if args.data else {}))


def _metadata(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--metadata is not valid JSON: {e}") from e
    if not isinstance(metadata, dict):
        raise ValueError("--metadata must be a JSON object")
    return metadata


def _write(live: ServedCollection, args: argparse.Namespace, metadata: dict[str, Any] | None) -> dict[str, Any]:
    if args.command == "delete":
        return live.delete(args.id).to_json()
    if args.command == "compact":
        return live.compact().to_json()
    if args.text is not None:
        return live.add_text(args.text, item_id=args.id, metadata=metadata).to_json()
    return live.add_image(args.image.read_bytes(), item_id=args.id, captions=args.caption,
                          metadata=metadata).to_json()


def _run_write(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "caption", None) and args.text is not None:
        raise ValueError("--caption goes with --image; a text item has no captions")
    metadata = _metadata(getattr(args, "metadata", None))  # checked before the index (and its model) is opened
    live = ServedCollection.open(args.index, auto_compact_ratio=None)  # compaction: its own command
    try:
        return _write(live, args, metadata)
    finally:
        live.close()


def _run(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "build":
        return _build(build_config(args))
    if args.command == "verify":
        if is_sharded(args.index):
            return verify_collection(args.index, checkpoint=args.checkpoint)
        return verify_index(args.index, checkpoint=args.checkpoint)
    if args.command in ("snapshot", "restore"):
        return _run_snapshot(args)
    if args.command == "alias":
        return _run_alias(args)
    return _run_write(args)


def _build(config: IndexBuildConfig) -> dict[str, Any]:
    """One index, or a sharded collection (in this process, or on a Ray cluster)."""
    if config.engine == "ray" or config.shards > 1:
        if config.engine == "ray":
            from indexer.ray_build import build_collection_on_ray

            collection = build_collection_on_ray(config)
        else:
            collection = build_collection_embedded(config)
        return {"collection": str(config.output), "shards": [e.model_dump() for e in collection.shards],
                "timings": collection.build["timings"], "encode": collection.build["encode"]}
    manifest = build_index(config)
    summary = {side: {"count": s.count, "mean_terms": round(s.mean_terms, 1), "bytes": s.bytes}
               for side, s in manifest.sides.items()}
    return {"index": str(config.output), "sides": summary, "timings": manifest.build["timings"]}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        print(json.dumps(_run(args), indent=2))  # noqa: T201
    except CollectionLockedError as e:
        _logger.error("%s. When a running service holds it, write through the service's HTTP API instead "
                      "(POST /v1/items, PUT or DELETE /v1/items/{id}, POST /v1/compact).", e)
        return 2
    except ItemNotFoundError as e:
        _logger.error("no live item has the id %s", e)
        return 2
    except USER_ERRORS as e:
        _logger.error("%s", e)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; every output is written atomically
        resumes = (": the same command resumes from the feature cache (a Ray build from its encoded rows)"
                   if args.command == "build" else "")
        _logger.error("interrupted%s", resumes)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
