"""What is served and whether it can be: ``/v1/indexes``, ``/healthz`` (the process) and ``/readyz`` (the index)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.dependencies import EngineDep, EngineSlotDep, SettingsDep

router = APIRouter(tags=["meta"])


@router.get("/v1/indexes")
def indexes(engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    manifest = engine.manifest
    return {
        "index_dir": str(settings.index_dir), "created_at": manifest.created_at,
        "checkpoint": manifest.checkpoint.model_dump(), "collection": manifest.collection,
        "temperature": manifest.temperature,
        "default_weights": {"w_dense": manifest.fusion_dense_weight, "w_sparse": manifest.fusion_sparse_weight},
        "quantization": manifest.quantization, "pruning": manifest.pruning,
        "sides": {side: {"count": s.count, "dense_dim": s.dense_dim, "faiss_factory": s.faiss_factory,
                         "mean_terms": s.mean_terms, "bytes": s.bytes} for side, s in manifest.sides.items()},
    }


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(slot: EngineSlotDep) -> JSONResponse:
    if slot.live is None:
        return JSONResponse({"ready": False, "reason": slot.not_ready}, status_code=503)
    # the live counts: published items, plus those written since, less those deleted
    return JSONResponse({"ready": True, "sides": {s: c["live"] for s, c in slot.live.stats()["sides"].items()}})
