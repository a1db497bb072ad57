"""What one app holds: its settings, its metrics, the engine's worker thread, the threads that keep decoding and
serialisation off the event loop, admission, and the collections served (service/registry.py).

All engine work (encoding, FAISS, Lucene through pyjnius, torch) and every write runs on one dedicated worker thread:
the JVM is attached to that thread once, torch gets both cores for each request, writes and reads of the live
collection never interleave, and the event loop stays free. Compaction alone runs on its own thread
(service/compaction.py), so that searches go on while it rebuilds the indexes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar, cast

from starlette.applications import Starlette

from service.admission import Admission
from service.drain import Drain
from service.metrics import Metrics
from service.registry import Registry
from service.settings import ServiceSettings

T = TypeVar("T")
WORKER_THREAD = "duet-engine"
OFF_LOOP_THREADS = "duet-io"


class ThreadLane:
    """Threads that run blocking work for the event loop, which awaits it."""

    def __init__(self, threads: int, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    async def run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False)


class EngineWorker(ThreadLane):
    """The one thread that runs engine work."""

    def __init__(self) -> None:
        super().__init__(1, WORKER_THREAD)


class OffLoop(ThreadLane):
    """Image decoding and response serialisation: CPU work that would stall every route if it ran on the loop.
    Two threads: a decode overlaps the engine's search, and at most two full-size decodes exist at once."""

    def __init__(self) -> None:
        super().__init__(2, OFF_LOOP_THREADS)


@dataclass(frozen=True)
class ServiceState:
    settings: ServiceSettings
    metrics: Metrics = field(default_factory=Metrics)
    worker: EngineWorker = field(default_factory=EngineWorker)
    off_loop: OffLoop = field(default_factory=OffLoop)
    registry: Registry = field(init=False)
    admission: Admission = field(init=False)
    drain: Drain = field(init=False)

    def __post_init__(self) -> None:  # frozen: set once, here
        object.__setattr__(self, "drain", Drain(self.settings.drain_timeout_s))
        object.__setattr__(self, "registry", Registry(self.settings, self.metrics))
        object.__setattr__(self, "admission", Admission(self.settings.max_pending, self.settings.queue_timeout_s,
                                                        self.metrics))


def state_of(app: Starlette) -> ServiceState:
    return cast(ServiceState, app.state.service)
