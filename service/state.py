"""What one app holds: its settings, its metrics, the engine's worker thread and the engine once loaded.

All engine work (encoding, FAISS, Lucene through pyjnius, torch) runs on one dedicated worker thread: the JVM is
attached to that thread once, torch gets both cores for each request, and the event loop stays free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar, cast

from starlette.applications import Starlette

from indexer.search import SearchEngine
from service.metrics import Metrics
from service.settings import ServiceSettings

T = TypeVar("T")


class EngineWorker:
    """The one thread that runs engine work."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duet-engine")

    async def run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False)


@dataclass
class EngineSlot:
    """The engine, or why there is none yet (loading, or the error that stopped it loading)."""

    engine: SearchEngine | None = None
    not_ready: str | None = "loading"


@dataclass(frozen=True)
class ServiceState:
    settings: ServiceSettings
    metrics: Metrics = field(default_factory=Metrics)
    worker: EngineWorker = field(default_factory=EngineWorker)
    slot: EngineSlot = field(default_factory=EngineSlot)


def state_of(app: Starlette) -> ServiceState:
    return cast(ServiceState, app.state.service)
