"""What a route may ask for, as FastAPI dependencies: tests replace any of them with ``app.dependency_overrides``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from indexer.search import SearchEngine
from service.errors import ApiError
from service.metrics import Metrics
from service.settings import ServiceSettings
from service.state import EngineSlot, EngineWorker, state_of


def get_settings(request: Request) -> ServiceSettings:
    return state_of(request.app).settings


def get_metrics(request: Request) -> Metrics:
    return state_of(request.app).metrics


def get_worker(request: Request) -> EngineWorker:
    return state_of(request.app).worker


def get_engine_slot(request: Request) -> EngineSlot:
    return state_of(request.app).slot


def get_engine(slot: Annotated[EngineSlot, Depends(get_engine_slot)]) -> SearchEngine:
    """The loaded engine; 503 while there is none."""
    if slot.engine is None:
        raise ApiError(503, "index_unavailable", f"the index is not available: {slot.not_ready}")
    return slot.engine


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
WorkerDep = Annotated[EngineWorker, Depends(get_worker)]
EngineSlotDep = Annotated[EngineSlot, Depends(get_engine_slot)]
EngineDep = Annotated[SearchEngine, Depends(get_engine)]
