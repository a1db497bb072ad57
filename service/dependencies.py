"""What a route may ask for, as FastAPI dependencies: tests replace any of them with ``app.dependency_overrides``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Annotated

from fastapi import Depends, Request

from indexer.engines import ReadEngine, WritableCollection
from service.admission import Ticket
from service.compaction import Compactor
from service.errors import ApiError
from service.metrics import Metrics
from service.settings import ServiceSettings
from service.state import EngineSlot, EngineWorker, OffLoop, state_of

# Opens a read of the engine: the generation current when it is entered, held (a compaction publishing meanwhile
# cannot close it) until it is left. Entered on the worker thread, around the engine calls of one request.
Reader = Callable[[], AbstractContextManager[ReadEngine]]


def get_settings(request: Request) -> ServiceSettings:
    return state_of(request.app).settings


def get_metrics(request: Request) -> Metrics:
    return state_of(request.app).metrics


def get_worker(request: Request) -> EngineWorker:
    return state_of(request.app).worker


def get_off_loop(request: Request) -> OffLoop:
    return state_of(request.app).off_loop


async def admitted(request: Request) -> AsyncIterator[Ticket]:
    """The request's admission ticket, taken once its body has arrived (service/body_intake.py) and before it is
    decoded; 503 with Retry-After past the bound. Held until the response is sent."""
    async with state_of(request.app).admission.ticket(request) as ticket:
        yield ticket


def get_compactor(request: Request) -> Compactor:
    return state_of(request.app).compactor


def get_engine_slot(request: Request) -> EngineSlot:
    return state_of(request.app).slot


def _unavailable(slot: EngineSlot) -> ApiError:
    return ApiError(503, "index_unavailable", f"the index is not available: {slot.not_ready}")


def get_engine(slot: Annotated[EngineSlot, Depends(get_engine_slot)]) -> ReadEngine:
    """The live collection's current engine; 503 while there is none."""
    engine = slot.engine
    if engine is None:
        raise _unavailable(slot)
    return engine


def get_live(slot: Annotated[EngineSlot, Depends(get_engine_slot)]) -> WritableCollection:
    """The live collection (writes, stats, compaction); 503 while there is none."""
    if slot.live is None:
        raise _unavailable(slot)
    return slot.live


def get_reader(slot: Annotated[EngineSlot, Depends(get_engine_slot)],
               engine: Annotated[ReadEngine, Depends(get_engine)]) -> Reader:
    """How a route reads: through the live collection, or the engine as it is where no collection holds it (an
    engine given in place of the collection, as tests do)."""
    if slot.live is not None:
        return slot.live.reading
    return lambda: nullcontext(engine)


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
WorkerDep = Annotated[EngineWorker, Depends(get_worker)]
OffLoopDep = Annotated[OffLoop, Depends(get_off_loop)]
TicketDep = Annotated[Ticket, Depends(admitted)]
CompactorDep = Annotated[Compactor, Depends(get_compactor)]
EngineSlotDep = Annotated[EngineSlot, Depends(get_engine_slot)]
EngineDep = Annotated[ReadEngine, Depends(get_engine)]
LiveDep = Annotated[WritableCollection, Depends(get_live)]
ReaderDep = Annotated[Reader, Depends(get_reader)]
