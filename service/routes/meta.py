"""What is served and whether it can be: ``/v1/indexes`` (the default collection), ``/healthz`` (the process) and
``/readyz`` (the collections)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from indexer.search import SearchEngine
from service.dependencies import EngineDep, EngineSlotDep, RegistryDep
from service.errors import ApiError, errors_of

router = APIRouter(tags=["meta"])


def _public_collection(collection: dict[str, Any]) -> dict[str, Any]:
    """The collection's record less where it lies on the server (a client has no use for server paths)."""
    public = {k: v for k, v in collection.items() if k != "root"}
    if "skipped_images" in public:
        public["skipped_images"] = len(public["skipped_images"])
    return public


def index_info(name: str, engine: SearchEngine) -> dict[str, Any]:
    """A collection's name, its checkpoint's identity, its collection record, its fusion defaults and sides (no
    server paths)."""
    manifest = engine.manifest
    checkpoint = manifest.checkpoint.model_dump(exclude={"path"})
    return {
        "index": name, "created_at": manifest.created_at,
        "checkpoint": checkpoint, "collection": _public_collection(manifest.collection),
        "temperature": manifest.temperature,
        "default_weights": {"w_dense": manifest.fusion_dense_weight, "w_sparse": manifest.fusion_sparse_weight},
        "quantization": manifest.quantization, "pruning": manifest.pruning, "payload": dict(manifest.payload),
        "sides": {side: {"count": s.count, "dense_dim": s.dense_dim, "faiss_factory": s.faiss_factory,
                         "mean_terms": s.mean_terms, "bytes": s.bytes} for side, s in manifest.sides.items()},
    }


@router.get("/v1/indexes", responses=errors_of(404, 503))
def indexes(engine: EngineDep, slot: EngineSlotDep) -> dict[str, Any]:
    """What the default collection is (see /v1/collections for every one)."""
    return index_info(slot.name, engine)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(registry: RegistryDep) -> JSONResponse:
    """Ready once every collection has loaded and the default one (if any) is served; a collection that failed
    to load is named with its reason."""
    slots = list(registry.slots.values())
    default = registry.default_name()
    failed = {slot.name: slot.not_ready for slot in slots if slot.live is None}
    try:
        default_slot = registry.resolve(None) if default is not None else None
    except ApiError:
        default_slot = None
    loading = any(reason == "loading" for reason in failed.values())
    if loading or (default is not None and (default_slot is None or default_slot.live is None)):
        reason = "loading" if loading else failed.get(str(default), f"no collection named {default!r}")
        lost: dict[str, Any] = {"failed": failed} if registry.catalog is not None else {}
        return JSONResponse({"ready": False, "reason": reason, **lost}, status_code=503)
    # the live counts of the default collection: published items, plus those written since, less those deleted
    sides = ({s: c["live"] for s, c in default_slot.live.stats()["sides"].items()}
             if default_slot is not None and default_slot.live is not None else {})
    named = {"collections": len(slots), "failed": failed} if registry.catalog is not None else {}
    return JSONResponse({"ready": True, "sides": sides, **named})
