"""What a route may ask for, as FastAPI dependencies: tests replace any of them with ``app.dependency_overrides``.

A route under ``/v1/collections/{collection}/`` serves that collection (or the one its alias names, resolved once
for the request); the same route without the prefix serves the default collection.

Every dependency is ``async def``, even where it does no I/O: FastAPI runs a plain ``def`` one on its thread pool, a
thread hop each per request, and with eight of them ahead of the admission ticket a request shed under overload cost
two fifths of a search on a small index (tests/test_service_hardening.py holds every route to this)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Annotated

from fastapi import Depends, Path, Request

from indexer.catalog import NAME_PATTERN
from indexer.search import SearchEngine
from indexer.served import ServedCollection
from service.admission import Ticket
from service.compaction import Compactor
from service.errors import ApiError
from service.lanes import EngineWorker, OffLoop
from service.metrics import Metrics
from service.registry import CollectionSlot, Registry
from service.settings import ServiceSettings
from service.state import state_of

# Opens a read of the engine: the generation current when it is entered, held (a compaction publishing meanwhile
# cannot close it) until it is left. Entered on the worker thread, around the engine calls of one request.
Reader = Callable[[], AbstractContextManager[SearchEngine]]


async def get_settings(request: Request) -> ServiceSettings:
    return state_of(request.app).settings


async def get_metrics(request: Request) -> Metrics:
    return state_of(request.app).metrics


async def get_worker(request: Request) -> EngineWorker:
    return state_of(request.app).worker


async def get_off_loop(request: Request) -> OffLoop:
    return state_of(request.app).off_loop


async def get_registry(request: Request) -> Registry:
    return state_of(request.app).registry


async def admitted(request: Request) -> AsyncIterator[Ticket]:
    """The request's admission ticket, taken once its body has arrived (service/body_intake.py) and before it is
    decoded; 503 with Retry-After past the bound. Held until the response is sent."""
    async with state_of(request.app).admission.ticket(request) as ticket:
        yield ticket


async def collection_name(collection: Annotated[str, Path(
        pattern=NAME_PATTERN, description="A collection's name, or an alias (resolved once for the request).")]) -> str:
    """The ``{collection}`` of a route under /v1/collections/ (documented once, checked against the name rule)."""
    return collection


async def get_engine_slot(request: Request) -> CollectionSlot:
    """The collection the request names (its path's ``collection``), else the default one; 404 when there is none.
    Resolved once per request and kept: an alias swapped meanwhile does not change what this request serves. On the
    event loop: the aliases file's stat (read again only once replaced) costs less than a hop to a thread."""
    slot = getattr(request.state, "collection_slot", None)
    if slot is None:
        slot = state_of(request.app).registry.resolve(request.path_params.get("collection"))
        request.state.collection_slot = slot
    return slot


def _unavailable(slot: CollectionSlot) -> ApiError:
    return ApiError(503, "index_unavailable", f"collection {slot.name} is not available: {slot.not_ready}")


async def get_engine(slot: Annotated[CollectionSlot, Depends(get_engine_slot)]) -> SearchEngine:
    """The collection's read engine; 503 while there is none."""
    engine = slot.engine
    if engine is None:
        raise _unavailable(slot)
    return engine


async def get_live(slot: Annotated[CollectionSlot, Depends(get_engine_slot)]) -> ServedCollection:
    """The collection (writes, stats, compaction); 503 while there is none."""
    if slot.live is None:
        raise _unavailable(slot)
    return slot.live


async def get_compactor(slot: Annotated[CollectionSlot, Depends(get_engine_slot)]) -> Compactor:
    return slot.compactor


async def get_reader(slot: Annotated[CollectionSlot, Depends(get_engine_slot)],
                     engine: Annotated[SearchEngine, Depends(get_engine)]) -> Reader:
    """How a route reads: through the collection, or the engine as it is where no collection holds it (an engine
    given in place of the collection, as tests do)."""
    if slot.live is not None:
        return slot.live.reading
    return lambda: nullcontext(engine)


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
WorkerDep = Annotated[EngineWorker, Depends(get_worker)]
OffLoopDep = Annotated[OffLoop, Depends(get_off_loop)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
TicketDep = Annotated[Ticket, Depends(admitted)]
CompactorDep = Annotated[Compactor, Depends(get_compactor)]
EngineSlotDep = Annotated[CollectionSlot, Depends(get_engine_slot)]
EngineDep = Annotated[SearchEngine, Depends(get_engine)]
LiveDep = Annotated[ServedCollection, Depends(get_live)]
ReaderDep = Annotated[Reader, Depends(get_reader)]
