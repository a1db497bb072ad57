"""What is served and whether it can be: ``/v1/indexes``, ``/healthz`` (the process) and ``/readyz`` (the index)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.dependencies import EngineDep, EngineSlotDep, SettingsDep
from service.errors import errors_of

router = APIRouter(tags=["meta"])


def _public_collection(collection: dict[str, Any]) -> dict[str, Any]:
    """The collection's record less where it lies on the server (a client has no use for server paths)."""
    public = {k: v for k, v in collection.items() if k != "root"}
    if "skipped_images" in public:
        public["skipped_images"] = len(public["skipped_images"])
    return public


@router.get("/v1/indexes", responses=errors_of(503))
def indexes(engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    """What is served: the index's name, its checkpoint's identity, its collection, its fusion defaults and sides
    (no server paths)."""
    manifest = engine.manifest
    checkpoint = manifest.checkpoint.model_dump(exclude={"path"})
    return {
        "index": settings.index_dir.name, "created_at": manifest.created_at,
        "checkpoint": checkpoint, "collection": _public_collection(manifest.collection),
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
