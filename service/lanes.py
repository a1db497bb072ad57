"""The threads that run blocking work for the event loop: the one engine worker (every search, write and encoding:
the JVM is attached to it once, torch gets both cores for each request, reads and writes of a collection never
interleave) and the off-loop threads (image decoding, response serialisation)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

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
