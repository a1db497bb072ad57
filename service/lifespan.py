"""The collections' life in the app: opened on the worker thread at startup (each replays its write-ahead log),
closed there at shutdown once running compactions have finished, or have been rolled back when they could not
finish within the drain timeout (service/server.py)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from core.encoder import DuetEncoder
from indexer.served import ServedCollection
from service.registry import CollectionLoader
from service.settings import ServiceSettings
from service.state import state_of

_logger = logging.getLogger("service")


def load_collection(settings: ServiceSettings, encoder: DuetEncoder | None) -> ServedCollection:
    """The collection at ``settings.index_dir``: one index, or a sharded collection, with its shards in this process
    (service/ray_serving.py has the loader of one deployed on Ray Serve)."""
    ratio = settings.auto_compact_ratio or None
    return ServedCollection.open(settings.index_dir, checkpoint=settings.checkpoint, encoder=encoder,
                                 auto_compact_ratio=ratio, device=settings.device)


def collections_lifespan(loader: CollectionLoader) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = state_of(app)
        registry = state.registry
        registry.loader = loader
        try:
            slots = await state.worker.run(registry.discover)
        except Exception as e:  # an unreadable data directory: the service runs, with nothing to serve
            slots = []
            _logger.error("no collections: %s: %s", type(e).__name__, e)
        for slot in slots:
            await state.worker.run(functools.partial(registry.load, slot))
        yield
        # waits for running compactions (rolled back past the drain's time) without blocking the loop
        await asyncio.to_thread(registry.shutdown_compactions, state.drain.remaining_s())
        for slot in list(registry.slots.values()):
            if slot.live is not None:
                await state.worker.run(slot.live.close)
        state.worker.shutdown()

    return lifespan
