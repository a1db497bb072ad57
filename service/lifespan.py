"""The live collection's life in the app: opened on the worker thread at startup (which replays its write-ahead
log), closed there at shutdown once a running compaction has finished, or has been rolled back when it could not
finish within the drain timeout (service/server.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from indexer.engines import WritableCollection
from indexer.live import LiveCollection
from indexer.sharded import ShardedCollection
from indexer.sharding import is_sharded
from service.settings import ServiceSettings
from service.state import state_of

_logger = logging.getLogger("service")
EngineLoader = Callable[[ServiceSettings], WritableCollection]


def load_engine(settings: ServiceSettings) -> WritableCollection:
    """The collection the settings name: one index, or a sharded collection with its shards in this process (or
    deployed on Ray Serve, service/ray_serving.py)."""
    ratio = settings.auto_compact_ratio or None
    if settings.engine == "ray":  # in an ingress replica: the shards are deployed already
        from service.ray_serving import open_deployed

        return open_deployed(settings)
    if is_sharded(settings.index_dir):
        return ShardedCollection.open_local(settings.index_dir, checkpoint=settings.checkpoint,
                                            auto_compact_ratio=ratio)
    return LiveCollection.open(settings.index_dir, checkpoint=settings.checkpoint, auto_compact_ratio=ratio)


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
        # waits for a running compaction (rolled back past the drain's time) without blocking the loop
        await asyncio.to_thread(state.compactor.shutdown, state.drain.remaining_s())
        if slot.live is not None:
            await state.worker.run(slot.live.close)
        state.worker.shutdown()

    return lifespan
