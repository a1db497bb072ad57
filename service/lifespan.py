"""The live collection's life in the app: opened on the worker thread at startup (which replays its write-ahead
log), closed there at shutdown once a running compaction has finished."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from indexer.live import LiveCollection
from service.settings import ServiceSettings
from service.state import state_of

_logger = logging.getLogger("service")
EngineLoader = Callable[[ServiceSettings], LiveCollection]


def load_engine(settings: ServiceSettings) -> LiveCollection:
    return LiveCollection.open(settings.index_dir, checkpoint=settings.checkpoint,
                               auto_compact_ratio=settings.auto_compact_ratio or None)


def engine_lifespan(loader: EngineLoader) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = state_of(app)
        slot = state.slot
        slot.live, slot.not_ready = None, "loading"
        try:
            live = await state.worker.run(lambda: loader(state.settings))
            slot.live, slot.not_ready = live, None
            _logger.info("index %s loaded: %s", state.settings.index_dir, await state.worker.run(live.stats))
        except Exception as e:  # a missing, mismatched or locked index must not stop the process: /readyz says why
            slot.not_ready = f"{type(e).__name__}: {e}"
            _logger.error("index not loaded: %s", slot.not_ready)
        yield
        await asyncio.to_thread(state.compactor.shutdown)  # waits for a running compaction without blocking the loop
        if slot.live is not None:
            await state.worker.run(slot.live.close)
        state.worker.shutdown()

    return lifespan
