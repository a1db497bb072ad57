"""``/v1/items/{id}`` and ``/v1/items/{id}/image``: an indexed item's metadata, and its image file."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import FileResponse

from indexer.search import SearchEngine
from service.dependencies import EngineDep, SettingsDep
from service.errors import ApiError

router = APIRouter(tags=["items"])


def image_url(item_id: str) -> str:
    return f"/v1/items/{quote(item_id, safe='')}/image"


def public_item(side: str, item: dict[str, Any]) -> dict[str, Any]:
    """An item as the API shows it: its side, and where its image (a caption's: its image's) is served."""
    image_id = item["id"] if side == "images" else item.get("image_id")
    return {**item, "side": side, "image_url": image_url(image_id) if image_id else None}


def _find(engine: SearchEngine, item_id: str) -> tuple[str, dict[str, Any]]:
    try:
        return engine.item(item_id)
    except KeyError as e:
        raise ApiError(404, "item_not_found", f"no item with id {item_id!r}") from e


# Registered before the item route below: an id may itself contain slashes, so "/image" must be tried first.
@router.get("/v1/items/{item_id:path}/image")
def item_image(item_id: str, engine: EngineDep, settings: SettingsDep) -> FileResponse:
    """The image file of an image item, or of a caption's image; served only from the collection root."""
    side, item = _find(engine, item_id)
    if side == "texts":
        side, item = _find(engine, item["image_id"])
    root = Path(settings.collection_root or engine.collection_root).resolve()
    path = (root / str(item.get("path", ""))).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise ApiError(404, "image_not_found", f"the image of {item_id!r} is not available in the collection")
    return FileResponse(path)


@router.get("/v1/items/{item_id:path}")
def get_item(item_id: str, engine: EngineDep) -> dict[str, Any]:
    side, item = _find(engine, item_id)
    return public_item(side, item)
