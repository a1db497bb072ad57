"""``python -m indexer build|verify ...``: build the Lucene impact + FAISS indexes of a collection offline."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from core.checkpoint import CheckpointError
from core.cli_args import ModelArgs
from core.data import DatasetError
from core.feature_cache import CorruptImageError
from core.progress import setup_logging
from indexer.build import IndexBuildConfig, build_index, verify_index
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
    return parser


def build_config(args: argparse.Namespace) -> IndexBuildConfig:
    if args.folder:
        return BUILD_ARGS.build(args, source="folder", dataset=args.folder)
    # no --data: the field's own default (the DUET_DATA setting) applies
    return BUILD_ARGS.build(args, source="karpathy", **({"dataset": args.data} if args.data else {}))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.command == "build":
            config = build_config(args)
            manifest = build_index(config)
            summary = {side: {"count": s.count, "mean_terms": round(s.mean_terms, 1), "bytes": s.bytes}
                       for side, s in manifest.sides.items()}
            print(json.dumps({"index": str(config.output), "sides": summary,  # noqa: T201
                              "timings": manifest.build["timings"]}, indent=2))
        else:
            print(json.dumps(verify_index(args.index, checkpoint=args.checkpoint), indent=2))  # noqa: T201
    except USER_ERRORS as e:
        _logger.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
