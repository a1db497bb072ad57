"""``python -m service --index DIR``: serve the hybrid search API and the web page with uvicorn."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from core.progress import setup_logging
from service.settings import ServiceSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--index", default="indexes/flickr8k", help="index directory built by `python -m indexer`")
    parser.add_argument("--checkpoint", help="checkpoint to load (default: the one the index was built from)")
    parser.add_argument("--collection-root", help="image root (default: the one recorded in the index)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import uvicorn

    from service.app import create_app

    settings = ServiceSettings(index_dir=args.index, checkpoint=args.checkpoint,
                               collection_root=args.collection_root, host=args.host, port=args.port)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level.lower())
    return 0
