"""Progress bars (tqdm) that show rate and ETA, and a module logger setup shared by all CLIs."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"
# a message is one line: a line break, a carriage return or a terminal escape in it (from a client's path or text)
# would forge a line or rewrite the terminal; a traceback (exc_info) still follows on lines of its own
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
# libraries' start-up chatter at INFO: faiss names each SIMD build it tries, open_clip each step of building a model
_QUIET = {"faiss.loader": logging.WARNING}


def one_line(text: str) -> str:
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class OneLineFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = one_line(record.message)
        return super().formatMessage(record)


def _not_open_clip_chatter(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or f"{os.sep}open_clip{os.sep}" not in record.pathname


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    numeric = getattr(logging, level.upper(), logging.INFO)
    if numeric > logging.DEBUG:
        handler.addFilter(_not_open_clip_chatter)
    logging.basicConfig(level=numeric, handlers=[handler])
    for name, quiet_level in _QUIET.items():
        logging.getLogger(name).setLevel(quiet_level)


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str, unit: str = "it") -> Iterator[T]:
    """A tqdm bar on stderr with rate and ETA; silent when the root log level is above INFO."""
    disable = logging.getLogger().getEffectiveLevel() > logging.INFO
    yield from tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                    mininterval=1.0)


def progress_bar(*, total: int, desc: str, unit: str = "it") -> tqdm:
    """A manually updated bar (``bar.update(n)``), same rules as ``progress``."""
    disable = logging.getLogger().getEffectiveLevel() > logging.INFO
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, mininterval=1.0)
