"""``python -m service --index DIR``: serve the hybrid search API and the web page with uvicorn."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from core.progress import setup_logging
from service.settings import ServiceSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    # no defaults here: an absent flag leaves the setting to DUET_* in the environment, else ServiceSettings
    parser.add_argument("--index", dest="index_dir", help="index directory built by `python -m indexer` "
                        "(DUET_INDEX_DIR; default indexes/flickr8k)")
    parser.add_argument("--checkpoint", help="checkpoint to load (DUET_CHECKPOINT; default: the one the index was "
                        "built from)")
    parser.add_argument("--collection-root", help="image root (DUET_COLLECTION_ROOT; default: the one recorded in "
                        "the index)")
    parser.add_argument("--host", help="DUET_HOST; default 127.0.0.1")
    parser.add_argument("--port", type=int, help="DUET_PORT; default 8000")
    parser.add_argument("--log-level", default="INFO")
    return parser


def settings_from(args: argparse.Namespace) -> ServiceSettings:
    """The flags given, over the environment's DUET_* settings, over the defaults."""
    flags = {name: getattr(args, name) for name in ("index_dir", "checkpoint", "collection_root", "host", "port")}
    return ServiceSettings(**{name: value for name, value in flags.items() if value is not None})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import uvicorn

    from service.app import create_app

    settings = settings_from(args)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level.lower())
    return 0
