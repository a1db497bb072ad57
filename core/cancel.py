"""Cooperative cancellation of long work that runs on another thread (a compaction while the service stops).

The work checks its token between steps and raises ``Cancelled``; whatever it staged is removed on the way out (a
version being written is discarded by ``versioned_directory``). A step that cannot check, a child process, registers
how to stop it (``on_cancel``), so cancelling does not wait for the step to finish.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Cancelled(Exception):
    """The work stopped on request before it finished; nothing it wrote was published."""


def check(cancel: Cancellation | None) -> None:
    """Raise ``Cancelled`` if ``cancel`` was cancelled (None: work nobody cancels)."""
    if cancel is not None:
        cancel.check()


class Cancellation:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._stoppers: list[Callable[[], None]] = []
        self.reason = ""

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            stoppers = list(self._stoppers)
        for stop in stoppers:
            stop()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason)

    @contextmanager
    def on_cancel(self, stop: Callable[[], None]) -> Iterator[None]:
        """``stop`` is called if the work is cancelled while inside the block (at once if it was already)."""
        with self._lock:
            self._stoppers.append(stop)
            already = self._event.is_set()
        if already:
            stop()
        try:
            yield
        finally:
            with self._lock:
                self._stoppers.remove(stop)
