"""``python -m indexer build|verify ...``: build the Lucene impact + FAISS indexes of a collection offline."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from core.checkpoint import CheckpointError
from core.data import DatasetError
from core.feature_cache import CorruptImageError
from core.progress import setup_logging
from indexer.build import IndexBuildConfig, build_index, verify_index
from indexer.store import IndexUnavailableError

_logger = logging.getLogger("indexer")
USER_ERRORS = (DatasetError, CheckpointError, CorruptImageError, IndexUnavailableError, FileNotFoundError,
               ValidationError, ValueError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m indexer", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="encode a collection and publish its indexes (atomically)")
    p.add_argument("--checkpoint", required=True, help="Duet checkpoint directory, e.g. runs/skd/best")
    p.add_argument("--out", required=True, help="index directory to publish (replaced only when complete)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", help="Karpathy-format dataset directory (default: the DUET_DATA setting)")
    source.add_argument("--folder", help="a plain folder of images (optional metadata.jsonl with captions)")
    p.add_argument("--image-root", help="image root of the Karpathy dataset (default <data>/images)")
    p.add_argument("--splits", default="test", help="comma-separated Karpathy splits, e.g. test or train,val,test")
    p.add_argument("--faiss-factory", default="Flat", help="FAISS index_factory string (inner product)")
    p.add_argument("--scale", type=float, default=100.0, help="sparse impact quantisation: round(weight * scale)")
    p.add_argument("--prune-image-terms", type=int, help="keep each image's top-k terms")
    p.add_argument("--prune-text-terms", type=int, help="keep each text's top-k terms")
    p.add_argument("--cache-root", default="artifacts/cache", help="feature cache root (shared with training)")
    p.add_argument("--skip-corrupt", action="store_true", help="list and skip unreadable images")
    p.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("verify", help="check an index's counts, ids and file hashes")
    p.add_argument("--index", required=True)
    p.add_argument("--checkpoint", help="also check the index was built from this checkpoint")
    return parser


def _build_config(args: argparse.Namespace) -> IndexBuildConfig:
    fields: dict[str, object] = {
        "checkpoint": args.checkpoint, "output": args.out, "splits": tuple(s for s in args.splits.split(",") if s),
        "faiss_factory": args.faiss_factory, "sparse_scale": args.scale, "prune_image_terms": args.prune_image_terms,
        "prune_text_terms": args.prune_text_terms, "cache_root": args.cache_root, "skip_corrupt": args.skip_corrupt,
        "threads": args.threads,
    }
    if args.folder:
        fields.update(source="folder", dataset=args.folder)
    else:
        fields.update(source="karpathy", image_root=args.image_root)
        if args.data:
            fields["dataset"] = args.data
    return IndexBuildConfig.model_validate(fields)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.command == "build":
            manifest = build_index(_build_config(args))
            summary = {side: {"count": s.count, "mean_terms": round(s.mean_terms, 1), "bytes": s.bytes}
                       for side, s in manifest.sides.items()}
            print(json.dumps({"index": str(Path(args.out)), "sides": summary,  # noqa: T201
                              "timings": manifest.build["timings"]}, indent=2))
        else:
            print(json.dumps(verify_index(args.index, checkpoint=args.checkpoint), indent=2))  # noqa: T201
    except USER_ERRORS as e:
        _logger.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
