"""``/v1/items/{id}`` and ``/v1/items/{id}/image``: a live item's metadata, and its image file."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from indexer.search import SearchEngine
from indexer.served import ServedCollection
from service.auth import READ_SECURITY, require_read_key
from service.dependencies import EngineSlotDep, ReaderDep, SettingsDep, TicketDep, WorkerDep
from service.errors import ApiError, errors_of
from service.settings import ServiceSettings

router = APIRouter(tags=["items"], dependencies=[Depends(require_read_key)])
CHUNK = 256 * 1024
IMAGE_RESPONSE: dict[int | str, dict[str, Any]] = {200: {
    "description": "The image file, as stored (its type from its name).",
    "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in (
        "image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "application/octet-stream")}},
    **errors_of(401, 403, 404, 503)}


def collection_of(request: Request) -> str | None:
    """The collection a request names in its path (as given: an alias stays an alias); None: the default one."""
    name = request.path_params.get("collection")
    return str(name) if name is not None else None


def item_url(item_id: str, collection: str | None = None) -> str:
    """An item's URL, in the collection the request named (or the default one's routes)."""
    prefix = f"/v1/collections/{quote(collection, safe='')}" if collection is not None else "/v1"
    return f"{prefix}/items/{quote(item_id, safe='')}"


def image_url(item_id: str, collection: str | None = None) -> str:
    return f"{item_url(item_id, collection)}/image"


def public_item(side: str, item: dict[str, Any], collection: str | None = None) -> dict[str, Any]:
    """An item as the API shows it: its side, and where its image (a caption's: its image's) is served."""
    image_id = item["id"] if side == "images" else item.get("image_id")
    return {**item, "side": side, "image_url": image_url(image_id, collection) if image_id else None}


def _find(engine: SearchEngine, item_id: str) -> tuple[str, dict[str, Any]]:
    try:
        return engine.item(item_id)
    except KeyError as e:
        raise ApiError(404, "item_not_found", f"no item with id {item_id!r}") from e


def image_file(engine: SearchEngine, live: ServedCollection | None, settings: ServiceSettings, side: str,
               item: dict[str, Any]) -> Path | None:
    """An image item's file: an upload where the live collection keeps it, else under the collection root the
    settings name (which wins over the index's record)."""
    if live is not None:
        return live.image_path(side, item, root=settings.collection_root)
    return engine.image_path(item, root=settings.collection_root)


def _opened(path: Path | None) -> BinaryIO | None:
    try:
        return path.open("rb") if path is not None else None
    except OSError:  # gone since it was found
        return None


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK):
            yield chunk


# Registered before the item route below: an id may itself contain slashes, so "/image" must be tried first.
@router.get("/v1/items/{item_id:path}/image", response_class=StreamingResponse, responses=IMAGE_RESPONSE,
            openapi_extra={"security": READ_SECURITY})
async def item_image(item_id: str, reader: ReaderDep, slot: EngineSlotDep, worker: WorkerDep,
                     settings: SettingsDep, ticket: TicketDep) -> StreamingResponse:
    """The image file of an image item, or of a caption's image; an indexed image only from the collection root."""

    def open_image() -> tuple[Path, BinaryIO]:
        with reader() as engine:
            side, item = _find(engine, item_id)
            if side == "texts" and item.get("image_id"):  # a caption: its image's file (a text item has none)
                side, item = _find(engine, item["image_id"])
            path = image_file(engine, slot.live, settings, side, item) if side == "images" else None
            # opened here, during the read: a delete and compaction removing the file later cannot fail the reply
            handle = _opened(path)
            if path is None or handle is None:
                raise ApiError(404, "image_not_found", f"the image of {item_id!r} is not available in the collection")
            return path, handle

    path, handle = await ticket.run(worker, open_image)
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return StreamingResponse(_chunks(handle), media_type=media_type,
                             headers={"Content-Length": str(os.fstat(handle.fileno()).st_size)})


@router.get("/v1/items/{item_id:path}", responses=errors_of(401, 403, 404, 503), operation_id="get_item",
            openapi_extra={"security": READ_SECURITY})
async def get_item(item_id: str, request: Request, reader: ReaderDep, worker: WorkerDep,
                   ticket: TicketDep) -> dict[str, Any]:
    """A live item's metadata (a deleted item is gone: 404)."""

    def find() -> dict[str, Any]:
        with reader() as engine:
            return public_item(*_find(engine, item_id), collection_of(request))

    return await ticket.run(worker, find)
