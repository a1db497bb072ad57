"""Admission: how many requests may hold engine work at once, and what happens to the rest.

A request that needs the engine (a search, an item read, a write) takes a ticket once its body has arrived (bodies
in flight are bounded apart, by bytes: service/body_intake.py) and before it decodes an image, so a burst cannot hold
more than ``max_pending`` decoded images in memory, and a client trickling a body holds no ticket. Past the bound it
is refused at once with 503 and Retry-After (load shed, not queued without bound); so is one that would wait longer
than ``max_queue_wait_s`` behind the requests already admitted, at the engine's recent time per request. The count
bounds memory, the wait bounds latency: a count alone would shed cheap requests (a few ms each) at the first stall of
a few tens of ms, and let costly ones queue for seconds. An admitted request that waited past its deadline, or whose
client hung up, is dropped before the engine computes it: under overload the engine only does work someone will read.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from starlette.requests import Request

from service.errors import ApiError
from service.lanes import EngineWorker
from service.metrics import Metrics

T = TypeVar("T")


class DroppedError(Exception):
    """Admitted work dropped before the engine ran it: its deadline passed, or its client hung up."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Ticket:
    """One admitted request: its deadline to reach the engine, and whether its client is gone."""

    request: Request
    deadline: float
    admission: Admission
    client_gone: threading.Event = field(default_factory=threading.Event)

    async def run(self, worker: EngineWorker, work: Callable[[], T]) -> T:
        """``work`` on the engine thread, unless it is dropped before it starts there."""

        took: list[float] = []

        def guarded() -> T:
            if self.client_gone.is_set():
                raise DroppedError("client_gone")
            if time.monotonic() > self.deadline:
                raise DroppedError("deadline")
            started = time.perf_counter()
            try:
                return work()
            finally:
                took.append(time.perf_counter() - started)

        if await self.request.is_disconnected():  # gone already: not even queued
            raise self.admission.dropped("client_gone")
        watcher = asyncio.create_task(self._watch_disconnect())
        try:
            return await worker.run(guarded)
        except DroppedError as e:
            raise self.admission.dropped(e.reason) from e
        finally:
            if took:
                self.admission.engine_time.observe(took[0])
            # not awaited: a server's receive may finish only once the response is complete (a test client's does)
            watcher.cancel()

    async def _watch_disconnect(self) -> None:
        # the body has been read by now: the next message the server has for this request is its disconnect
        while (await self.request.receive())["type"] != "http.disconnect":
            pass
        self.client_gone.set()


class EngineTime:
    """The engine's recent seconds per request: an exponentially weighted mean of the last few dozen (0 before the
    first), updated on the event loop."""

    WEIGHT = 0.05  # of the newest request: one long request (a large image's write) fades within a few dozen

    def __init__(self) -> None:
        self.seconds = 0.0

    def observe(self, seconds: float) -> None:
        self.seconds = seconds if self.seconds == 0.0 else self.seconds + self.WEIGHT * (seconds - self.seconds)


class Admission:
    """At most ``max_pending`` admitted requests, and none that would wait over ``max_queue_wait_s`` behind them;
    each must reach the engine within ``queue_timeout_s``."""

    def __init__(self, max_pending: int, max_queue_wait_s: float, queue_timeout_s: float, metrics: Metrics) -> None:
        self.max_pending = max_pending
        self.max_queue_wait_s = max_queue_wait_s
        self.queue_timeout_s = queue_timeout_s
        self.metrics = metrics
        self.engine_time = EngineTime()
        self.pending = 0  # changed on the event loop only

    @property
    def expected_wait_s(self) -> float:
        """What a request admitted now would wait: those already admitted, each at the engine's recent time."""
        return self.pending * self.engine_time.seconds

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.queue_timeout_s / 2))

    def _overloaded(self, code: str, message: str) -> ApiError:
        return ApiError(503, code, message, headers={"Retry-After": str(self.retry_after_s)})

    def dropped(self, reason: str) -> ApiError:
        self.metrics.observe_shed(reason)
        return self._overloaded("queue_timeout", f"the request waited over {self.queue_timeout_s} s for the engine "
                                "and was dropped; retry later" if reason == "deadline" else "the client hung up")

    def _refused(self, reason: str, why: str) -> ApiError:
        self.metrics.observe_shed(reason)
        return self._overloaded("overloaded", f"{why}; retry after {self.retry_after_s} s")

    @asynccontextmanager
    async def ticket(self, request: Request) -> AsyncIterator[Ticket]:
        if self.pending >= self.max_pending:
            raise self._refused("queue_full", f"the server is at its limit of {self.max_pending} requests in progress")
        if (wait := self.expected_wait_s) > self.max_queue_wait_s:
            raise self._refused("queue_wait", f"the requests in progress would keep this one waiting about {wait:.1f} "
                                f"s, past the server's limit of {self.max_queue_wait_s} s")
        self.pending += 1
        self.metrics.set_pending(self.pending)
        try:
            yield Ticket(request, time.monotonic() + self.queue_timeout_s, self)
        finally:
            self.pending -= 1
            self.metrics.set_pending(self.pending)
