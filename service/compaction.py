"""Compaction in the background: at most one at a time, on its own thread, so searches and writes go on.

It gets its own long-lived thread rather than the engine worker's: a compaction can take minutes, and the worker
must keep answering searches meanwhile (the live collection lets a compaction run beside them). One persistent
thread also means the JVM is attached to one more thread, once, not to a new one per compaction.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from datetime import UTC, datetime
from typing import Any

from core.cancel import Cancellation, Cancelled
from indexer.live import CompactionResult
from indexer.served import ServedCollection
from service.metrics import Metrics

_logger = logging.getLogger("service")
# after a failed compaction (a full disk, say), the threshold does not start another for this long: otherwise every
# write would start one that fails the same way; a request (POST /v1/compact) still can
RETRY_AFTER_S = 60.0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Compactor:
    """Runs ``live.compact()`` on the compaction thread and remembers how the last one went."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duet-compaction")
        self._lock = threading.Lock()  # start() is called from the event loop and from the engine worker
        self._running_since: str | None = None
        self._last: CompactionResult | None = None
        self._last_error: str | None = None
        self._last_finished: str | None = None
        self._reason: str | None = None
        self._failed_at: float | None = None  # time.monotonic() of the last failure, while it is the last outcome
        self._cancel = Cancellation()  # the running compaction's (a new one each start)
        self._future: Future[None] | None = None
        self._refusing = False  # the service is stopping: no compaction starts any more

    @property
    def running(self) -> bool:
        return self._running_since is not None

    def start(self, live: ServedCollection, *, automatic: bool = False) -> bool:
        """Start a compaction unless one is running (or, for an automatic one, the last failed lately); whether
        this call started one."""
        with self._lock:
            if self._running_since is not None or self._refusing:
                return False
            if automatic and self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_AFTER_S:
                return False
            self._running_since, self._reason = _now(), "threshold" if automatic else "request"
            self._cancel = Cancellation()
            try:
                self._future = self._executor.submit(self._run, live, self._cancel)
            except RuntimeError:  # shut down: no new work
                self._running_since = None
                return False
        return True

    def _run(self, live: ServedCollection, cancel: Cancellation) -> None:
        started = time.perf_counter()
        result: CompactionResult | None = None
        error: str | None = None
        outcome = "ok"
        try:
            result = live.compact(cancel=cancel)
            _logger.info("compaction done: %s", result.to_json())
        except Cancelled as e:  # nothing was published; the writes stay in the log for the next one
            error, outcome = f"rolled back: {e}", "rolled_back"
            _logger.warning("compaction %s", error)
        except Exception as e:  # reported by GET /v1/collection and the metrics; the writes stay in the log
            error, outcome = f"{type(e).__name__}: {e}", "error"
            _logger.exception("compaction failed")
        self._metrics.observe_compaction(outcome, time.perf_counter() - started)
        with self._lock:
            if result is not None:
                self._last = result
            self._last_error = error
            self._failed_at = None if outcome != "error" else time.monotonic()
            self._last_finished = _now()
            self._running_since = None

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"running": self._running_since is not None, "started_at": self._running_since,
                    "reason": self._reason, "last_finished_at": self._last_finished,
                    "last_result": self._last.to_json() if self._last is not None else None,
                    "last_error": self._last_error}

    def refuse_new(self) -> None:
        """From now on no compaction starts (the service is stopping); a running one goes on."""
        with self._lock:
            self._refusing = True

    def shutdown(self, finish_within_s: float) -> None:
        """Let a running compaction finish within ``finish_within_s``; past it, roll it back (it stops at its next
        step, its Lucene indexer killed, and publishes nothing); then stop the thread."""
        self.refuse_new()
        with self._lock:
            future, cancel = self._future, self._cancel
        if future is not None and not future.done():
            try:
                future.result(timeout=finish_within_s)
            except FutureTimeoutError:
                _logger.warning("the compaction did not finish within the drain timeout: rolling it back")
                cancel.cancel("the service stopped before it finished")
        self._executor.shutdown(wait=True)
