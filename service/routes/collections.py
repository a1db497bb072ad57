"""Named collections, aliases and snapshots: ``/v1/collections``, ``/v1/aliases``, ``.../snapshots``.

Creating, deleting, aliasing and snapshotting need the write key; listing collections and aliases is a read. A
collection is created empty (bound to the checkpoint of a collection already served, then filled through the write
API) or restored from one of a collection's snapshots. Disk work runs off the event loop; a snapshot is taken on a
thread of its own (writes wait only for the instant its point is taken, searches not at all).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from indexer.catalog import NAME_PATTERN, AliasInUseError, CollectionExistsError, CollectionNotFoundError
from indexer.payload import FIELD_NAME_PATTERN, RESERVED_FIELDS, FieldType, PayloadError, check_schema
from indexer.snapshots import (
    RestoreTargetExistsError,
    SnapshotError,
    SnapshotExistsError,
    SnapshotNotFoundError,
    SnapshotStore,
    restore_snapshot,
    snapshots_of,
)
from service.auth import READ_SECURITY, require_read_key, require_write_key
from service.dependencies import (
    CompactorDep,
    EngineSlotDep,
    LiveDep,
    RegistryDep,
    WorkerDep,
    collection_name,
)
from service.errors import ApiError, errors_of
from service.registry import CollectionSlot, Registry
from service.routes.meta import index_info

router = APIRouter(tags=["collections"])
Name = Annotated[str, Depends(collection_name)]
SNAPSHOT_NAME = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SnapshotRef(Strict):
    collection: str = Field(pattern=NAME_PATTERN, description="The collection the snapshot was taken of.")
    name: str = Field(description="The snapshot's name.")


# a payload field's name, as the schema states it: the pattern, and not one of an item's own fields
PAYLOAD_NAMES: dict[str, JsonValue] = {"pattern": FIELD_NAME_PATTERN,
                                       "not": {"enum": list[JsonValue](sorted(RESERVED_FIELDS))}}


class CreateCollection(Strict):
    """What a new collection starts from: empty, bound to a served collection's checkpoint (``like``, or a
    checkpoint ``content_hash``; default: the only checkpoint served), or a snapshot restored."""

    like: str | None = Field(None, pattern=NAME_PATTERN, description="Bind to this collection's checkpoint.")
    checkpoint: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="A served checkpoint's content "
                                   "hash.")
    snapshot: SnapshotRef | None = Field(None, description="Restore this snapshot (checksums verified).")
    payload: dict[str, FieldType] = Field(default_factory=dict, description="The payload fields to index for "
                                          "filtered search, name -> type (keyword, keywords, integer, float, "
                                          "datetime, bool); a write's metadata is checked against them.",
                                          json_schema_extra={"propertyNames": PAYLOAD_NAMES})

    @field_validator("payload")
    @classmethod
    def _payload_names(cls, payload: dict[str, FieldType]) -> dict[str, FieldType]:
        try:
            return check_schema(payload)
        except PayloadError as e:
            raise ValueError(str(e)) from e


class AliasTarget(Strict):
    collection: str = Field(pattern=NAME_PATTERN, description="The collection the alias names.")


def _summary(registry: Registry, slot: CollectionSlot, aliases: dict[str, str]) -> dict[str, Any]:
    engine = slot.engine
    return {"name": slot.name, "ready": engine is not None, "reason": slot.not_ready,
            "default": registry.default_name() in (slot.name, *[a for a, t in aliases.items() if t == slot.name]),
            "aliases": sorted(a for a, t in aliases.items() if t == slot.name),
            "checkpoint": engine.manifest.checkpoint.content_hash if engine is not None else None,
            "counts": {side: s.count for side, s in engine.manifest.sides.items()} if engine is not None else None,
            "payload": dict(engine.manifest.payload) if engine is not None else None}


@router.get("/v1/collections", dependencies=[Depends(require_read_key)], responses=errors_of(401, 403),
            openapi_extra={"security": READ_SECURITY})
def list_collections(registry: RegistryDep) -> dict[str, Any]:
    """Every collection served, its aliases, and the default one (what the routes without a name serve)."""
    aliases = registry.aliases()
    return {"collections": [_summary(registry, slot, aliases) for slot in list(registry.slots.values())],
            "aliases": aliases, "default": registry.default_name()}


@router.get("/v1/collections/{collection}", dependencies=[Depends(require_read_key)],
            responses=errors_of(401, 403, 404, 422, 503), openapi_extra={"security": READ_SECURITY})
async def get_collection(name: Name, slot: EngineSlotDep, live: LiveDep, worker: WorkerDep,
                         compactor: CompactorDep, registry: RegistryDep) -> dict[str, Any]:
    """A collection (or an alias's): what it is, its live state per side, and its compaction's."""
    del name  # resolved into the slot
    stats = await worker.run(live.stats)
    return {**index_info(slot.name, live.engine), "aliases": sorted(a for a, t in registry.aliases().items()
                                                                      if t == slot.name),
            "state": stats, "compaction": compactor.status()}


@router.get("/v1/collection", dependencies=[Depends(require_write_key)], responses=errors_of(401, 403, 404, 503))
async def default_collection(live: LiveDep, worker: WorkerDep, compactor: CompactorDep) -> dict[str, Any]:
    """The default collection's state (generation, counts per side, log size, last write) and its compaction's:
    whether one is running, and how the last one went."""
    stats = await worker.run(live.stats)
    return {**stats, "compaction": compactor.status()}


def _checkpoint_of(registry: Registry, body: CreateCollection) -> str:
    """The content hash a new empty collection binds to."""
    if body.like is not None:
        engine = registry.resolve(body.like).engine
        if engine is None:
            raise ApiError(503, "index_unavailable", f"collection {body.like} is not loaded")
        return engine.manifest.checkpoint.content_hash
    if body.checkpoint is not None:
        if body.checkpoint not in registry.encoders:
            raise ApiError(422, "unknown_checkpoint", f"no served collection is bound to checkpoint {body.checkpoint}")
        return body.checkpoint
    if len(registry.encoders) != 1:
        raise ApiError(422, "checkpoint_required", "name the checkpoint: 'like' (a collection) or 'checkpoint' (a "
                       f"content hash); this service serves {len(registry.encoders)} checkpoints")
    return next(iter(registry.encoders))


@contextlib.contextmanager
def _creation_refusals() -> Iterator[None]:
    """A creation or restore the catalog refuses, as the API's errors."""
    try:
        yield
    except (CollectionExistsError, RestoreTargetExistsError) as e:
        raise ApiError(409, "collection_exists", str(e)) from e
    except SnapshotNotFoundError as e:
        raise ApiError(404, "snapshot_not_found", str(e)) from e
    except SnapshotError as e:
        raise ApiError(422, "snapshot_refused", str(e)) from e


def _restore(registry: Registry, name: str, snapshot: SnapshotRef) -> None:
    """Restore a snapshot as the new collection ``name`` (checksums verified, extracted beside, renamed in)."""
    catalog = registry.require_catalog()
    store = SnapshotStore(catalog.snapshots_dir(snapshot.collection))
    with catalog.locked():
        if catalog.path(name).exists():
            raise CollectionExistsError(f"a collection named {name!r} exists")
        restore_snapshot(store.path(snapshot.name), catalog.path(name))


@router.put("/v1/collections/{collection}", status_code=201, dependencies=[Depends(require_write_key)],
            responses=errors_of(400, 401, 403, 404, 409, 422, 503))
async def create_collection(name: Name, registry: RegistryDep, worker: WorkerDep,
                            body: Annotated[CreateCollection | None, Body()] = None) -> JSONResponse:
    """Create a collection: empty and bound to a served checkpoint (fill it through its write API), or restored
    from a snapshot. 409 when the name is taken by a collection or an alias."""
    catalog = registry.require_catalog()
    body = body or CreateCollection()
    if name in registry.slots or name in registry.aliases():
        raise ApiError(409, "collection_exists", f"a collection or alias named {name!r} exists")

    def create() -> None:
        if body.snapshot is not None:
            _restore(registry, name, body.snapshot)
        else:
            content_hash = _checkpoint_of(registry, body)
            encoder = registry.encoders[content_hash]
            if encoder.checkpoint_path is None:
                raise ApiError(422, "unknown_checkpoint", f"checkpoint {content_hash} has no files to copy")
            catalog.create_empty(name, encoder.checkpoint_path, encoder, build={"payload": body.payload})
        registry.load_new()

    with _creation_refusals():
        await worker.run(create)
    slot = registry.slots.get(name)
    if slot is None or slot.engine is None:
        raise ApiError(503, "index_unavailable", f"collection {name} was created but did not load: "
                       f"{slot.not_ready if slot else 'not found'}")
    return JSONResponse(_summary(registry, slot, registry.aliases()), status_code=201,
                        headers={"Location": f"/v1/collections/{name}"})


@router.delete("/v1/collections/{collection}", dependencies=[Depends(require_write_key)],
               responses=errors_of(401, 403, 404, 409, 422))
async def delete_collection(name: Name, registry: RegistryDep, worker: WorkerDep) -> dict[str, Any]:
    """Delete a collection (its snapshots stay, to be restored); 409 while an alias names it or it compacts."""
    catalog = registry.require_catalog()
    slot = registry.slots.get(name)
    if slot is None:
        raise ApiError(404, "collection_not_found", f"no collection named {name!r} (an alias is deleted through "
                       "/v1/aliases)")
    if slot.compactor.running:
        raise ApiError(409, "compaction_running", f"collection {name} is compacting; delete it once that is done")

    def delete() -> None:
        catalog.delete(name)  # refused while an alias names it, before anything is closed
        registry.remove(name)
        slot.compactor.refuse_new()
        if slot.live is not None:
            slot.live.close()

    try:
        await worker.run(delete)
    except AliasInUseError as e:
        raise ApiError(409, "alias_in_use", str(e)) from e
    except CollectionNotFoundError as e:
        raise ApiError(404, "collection_not_found", str(e)) from e
    return {"deleted": name}


# ----- aliases -----
@router.get("/v1/aliases", dependencies=[Depends(require_read_key)], responses=errors_of(401, 403),
            openapi_extra={"security": READ_SECURITY})
def list_aliases(registry: RegistryDep) -> dict[str, dict[str, str]]:
    return {"aliases": registry.aliases()}


@router.put("/v1/aliases/{alias}", dependencies=[Depends(require_write_key)],
            responses=errors_of(400, 401, 403, 404, 409, 422))
async def put_alias(alias: Annotated[str, PathParam(pattern=NAME_PATTERN)], target: AliasTarget,
                    registry: RegistryDep) -> dict[str, Any]:
    """Point an alias at a collection, atomically: each request resolves it once and sees the old target or the
    new one; the swap survives a restart."""
    catalog = registry.require_catalog()
    if target.collection not in registry.slots:
        raise ApiError(404, "collection_not_found", f"no collection named {target.collection!r}")
    try:
        previous = await asyncio.to_thread(catalog.set_alias, alias, target.collection)
    except CollectionExistsError as e:
        raise ApiError(409, "name_taken", str(e)) from e
    except CollectionNotFoundError as e:
        raise ApiError(404, "collection_not_found", str(e)) from e
    return {"alias": alias, "collection": target.collection, "previous": previous}


@router.delete("/v1/aliases/{alias}", dependencies=[Depends(require_write_key)],
               responses=errors_of(401, 403, 404, 409))
async def delete_alias(alias: str, registry: RegistryDep) -> dict[str, Any]:
    catalog = registry.require_catalog()
    try:
        target = await asyncio.to_thread(catalog.delete_alias, alias)
    except CollectionNotFoundError as e:
        raise ApiError(404, "alias_not_found", str(e)) from e
    return {"alias": alias, "collection": target, "deleted": True}


# ----- snapshots -----
def _store(registry: Registry, name: str) -> SnapshotStore:
    """A collection's snapshots: in a data directory, kept by name (a deleted collection's too, to restore)."""
    catalog = registry.catalog
    if catalog is not None:
        return SnapshotStore(catalog.snapshots_dir(registry.aliases().get(name, name)))
    return SnapshotStore(snapshots_of(registry.resolve(name).path))


@router.post("/v1/collections/{collection}/snapshots", status_code=201, dependencies=[Depends(require_write_key)],
             responses=errors_of(400, 401, 403, 404, 409, 422, 503))
async def take_snapshot(name: Name, live: LiveDep, registry: RegistryDep,
                        snapshot: Annotated[str | None, Body(embed=True, pattern=SNAPSHOT_NAME,
                                                             description="Default: a UTC timestamp.")] = None
                        ) -> JSONResponse:
    """A consistent point-in-time copy of the collection, taken while writes go on: its live version plus its
    log up to one sequence number, one archive with a checksum per file."""
    try:
        collection = live.live_collection()
        info = await asyncio.to_thread(_store(registry, name).take, collection, snapshot)
    except SnapshotExistsError as e:
        raise ApiError(409, "snapshot_exists", str(e)) from e
    except SnapshotError as e:
        raise ApiError(422, "snapshot_refused", str(e)) from e
    return JSONResponse(info.model_dump(), status_code=201,
                        headers={"Location": f"/v1/collections/{name}/snapshots/{info.name}"})


@router.get("/v1/collections/{collection}/snapshots", dependencies=[Depends(require_write_key)],
            responses=errors_of(401, 403, 404, 422))
async def list_snapshots(name: Name, registry: RegistryDep) -> dict[str, Any]:
    """A collection's snapshots, oldest first (a deleted collection's are kept, to be restored)."""
    found = await asyncio.to_thread(_store(registry, name).list)
    return {"collection": name, "snapshots": [info.model_dump() for info in found]}


@router.get("/v1/collections/{collection}/snapshots/{snapshot}", dependencies=[Depends(require_write_key)],
            response_class=FileResponse, responses={200: {"description": "The snapshot archive (tar).", "content": {
                "application/x-tar": {"schema": {"type": "string", "format": "binary"}}}},
                **errors_of(401, 403, 404, 422)})
async def download_snapshot(name: Name, snapshot: str, registry: RegistryDep) -> FileResponse:
    """The snapshot as one archive (``snapshot.json`` inside lists a sha256 per file)."""
    store = _store(registry, name)
    try:
        await asyncio.to_thread(store.get, snapshot)
        path = store.path(snapshot)
    except (SnapshotNotFoundError, SnapshotError) as e:
        raise ApiError(404, "snapshot_not_found", str(e)) from e
    return FileResponse(path, media_type="application/x-tar", filename=path.name)


@router.delete("/v1/collections/{collection}/snapshots/{snapshot}", dependencies=[Depends(require_write_key)],
               responses=errors_of(401, 403, 404, 422))
async def delete_snapshot(name: Name, snapshot: str, registry: RegistryDep) -> dict[str, Any]:
    try:
        await asyncio.to_thread(_store(registry, name).delete, snapshot)
    except (SnapshotNotFoundError, SnapshotError) as e:
        raise ApiError(404, "snapshot_not_found", str(e)) from e
    return {"collection": name, "snapshot": snapshot, "deleted": True}
