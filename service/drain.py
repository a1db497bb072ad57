"""Draining: how the service stops. On SIGTERM or SIGINT it stops taking work (new requests get 503 with
Retry-After and ``Connection: close``), lets the requests in progress and a running compaction finish within the
drain timeout, then closes its collection and exits 0 (service/server.py runs the steps)."""

from __future__ import annotations

import time

# what a stopping service still answers: its liveness, why it is not ready, and its metrics
ANSWERED_WHILE_DRAINING = frozenset({"/healthz", "/readyz", "/metrics"})
RETRY_AFTER_S = 5  # a restart, or another replica behind the balancer, takes over within seconds


class Drain:
    """Whether the service is draining, since when, and how many requests it is still working on. Changed on the
    event loop only (the signal handler sets ``requested`` alone)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.requested: str | None = None  # the signal's name, set by the handler
        self.started: float | None = None  # time.monotonic() when draining began
        self.in_progress = 0

    @property
    def draining(self) -> bool:
        return self.started is not None

    def begin(self) -> None:
        if self.started is None:
            self.started = time.monotonic()

    def hasten(self) -> None:
        """A second signal: the drain ends now (a running compaction is rolled back)."""
        self.timeout_s = 0.0

    def elapsed_s(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    def remaining_s(self) -> float:
        if self.started is None:
            return self.timeout_s
        return max(0.0, self.started + self.timeout_s - time.monotonic())

    def refuses(self, path: str) -> bool:
        return self.draining and path not in ANSWERED_WHILE_DRAINING
