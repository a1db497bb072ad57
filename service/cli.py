"""``python -m service --index DIR``: serve the hybrid search API and the web page with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from core.cli_args import Flag, ModelArgs
from core.progress import setup_logging
from service.settings import ServiceSettings

_logger = logging.getLogger("service")
# one flag per setting; an absent flag leaves it to DUET_* in the environment, else ServiceSettings' default
SETTINGS_ARGS = ModelArgs(ServiceSettings, flags={
    "index_dir": "--index", "host": Flag(help="address to listen on"), "port": Flag(help="port to listen on")})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    SETTINGS_ARGS.add_to(parser)
    parser.add_argument("--log-level", default="INFO")
    return parser


def settings_from(args: argparse.Namespace) -> ServiceSettings:
    """The flags given, over the environment's DUET_* settings, over the defaults."""
    return SETTINGS_ARGS.build(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        settings = settings_from(args)
    except ValueError as e:  # a flag or DUET_* value the settings reject
        _logger.error("%s", e)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if settings.engine == "ray":  # Serve's proxy serves the app; this process deploys it and waits
        from indexer.store import IndexUnavailableError
        from service.ray_serving import serve_on_ray

        try:
            return serve_on_ray(settings)
        except IndexUnavailableError as e:  # no cluster named, not a sharded collection, Serve held elsewhere
            _logger.error("%s", e)
            return 2
    from service.app import create_app
    from service.server import serve

    serve(create_app(settings), log_level=args.log_level)
    return 0
