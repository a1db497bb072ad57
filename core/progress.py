"""Progress bars (tqdm) that show rate and ETA, and a module logger setup shared by all CLIs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        stream=sys.stderr,
    )


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str, unit: str = "it") -> Iterator[T]:
    """A tqdm bar on stderr with rate and ETA; silent when the root log level is above INFO."""
    disable = logging.getLogger().getEffectiveLevel() > logging.INFO
    yield from tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                    mininterval=1.0)


def progress_bar(*, total: int, desc: str, unit: str = "it") -> tqdm:
    """A manually updated bar (``bar.update(n)``), same rules as ``progress``."""
    disable = logging.getLogger().getEffectiveLevel() > logging.INFO
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, mininterval=1.0)
