"""The engine's life in the app: loaded on the worker thread at startup, closed there at shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from indexer.search import SearchEngine
from service.settings import ServiceSettings
from service.state import state_of

_logger = logging.getLogger("service")
EngineLoader = Callable[[ServiceSettings], SearchEngine]


def load_engine(settings: ServiceSettings) -> SearchEngine:
    return SearchEngine(settings.index_dir, checkpoint=settings.checkpoint)


def engine_lifespan(loader: EngineLoader) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = state_of(app)
        slot = state.slot
        slot.engine, slot.not_ready = None, "loading"
        try:
            slot.engine = await state.worker.run(lambda: loader(state.settings))
            slot.not_ready = None
            _logger.info("index %s loaded: %s", state.settings.index_dir,
                         {s: len(st.ids) for s, st in slot.engine.stores.items()})
        except Exception as e:  # a missing or mismatched index must not stop the process: /readyz reports it
            slot.not_ready = f"{type(e).__name__}: {e}"
            _logger.error("index not loaded: %s", slot.not_ready)
        yield
        if slot.engine is not None:
            await state.worker.run(slot.engine.close)
        state.worker.shutdown()

    return lifespan
