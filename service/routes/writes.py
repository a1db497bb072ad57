"""The write API (every route needs the API key): add, replace and delete items of the live collection while it
serves, compact it, and read its state.

A write runs on the engine worker, like every search, and is answered once the collection has it in its log on
disk: a 2xx is durable. After each write, a compaction starts in the background when the collection's changes
passed its threshold (at most one at a time, on the compaction thread).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.convertors import Convertor, register_url_convertor

from indexer.live import ItemNotFoundError, WriteResult
from indexer.served import ServedCollection
from indexer.writes import IdConflictError, WriteRejectedError
from service.admission import Ticket
from service.auth import require_write_key
from service.compaction import Compactor
from service.dependencies import CompactorDep, LiveDep, MetricsDep, OffLoopDep, SettingsDep, TicketDep, WorkerDep
from service.errors import ApiError, errors_of
from service.lanes import EngineWorker
from service.metrics import Metrics
from service.openapi import request_body
from service.routes.items import collection_of, item_url
from service.schemas import ItemBody, WriteResponse
from service.write_input import ItemWrite, check_item_id, read_item_write

_logger = logging.getLogger("service")


class WritableItemId(Convertor[str]):
    """An item id in a write's path: any path but one ending in /image, which names an item's image (read only).
    So PUT or DELETE on an image matches no write route, and the router answers 405 with ``Allow: GET``."""

    regex = r".*(?<!/image)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("item_id", WritableItemId())
router = APIRouter(tags=["writes"], dependencies=[Depends(require_write_key)])
Write = Callable[[ServedCollection], WriteResult]

# The body is read by hand (JSON or multipart), so its two forms are documented here rather than inferred; a PUT
# takes the id from its path (a body's id must be the same, so the schema leaves it out).
ITEM_BODY: dict[str, Any] = request_body(ItemBody, json_parts=("metadata",))
PUT_BODY: dict[str, Any] = request_body(ItemBody, exclude=("id",), json_parts=("metadata",))
# what a written item's id leads to (declared, so that generated stateful tests follow these and no guessed ones: a
# text item has no image)
ITEM_LINKS = {name: {"operationId": operation, "parameters": {"item_id": "$response.body#/id"}}
              for name, operation in (("GetItem", "get_item"), ("ReplaceItem", "put_item"),
                                      ("DeleteItem", "delete_item"))}
WRITTEN: dict[int | str, dict[str, Any]] = {
    200: {"model": WriteResponse, "description": "An item with this id was replaced.", "links": ITEM_LINKS},
    201: {"model": WriteResponse, "description": "The item was created.", "links": ITEM_LINKS},
    # 404: an id the route cannot take (a newline); 409: the id is taken by an item the write cannot replace
    **errors_of(400, 401, 403, 404, 408, 409, 413, 415, 422, 503)}


@contextmanager
def _counted(metrics: Metrics, op: str) -> Iterator[None]:
    """Count one write request by how it ended: ok, rejected (4xx), not_found, or error."""
    try:
        yield
    except ApiError as e:
        metrics.observe_write(op, "not_found" if e.status == 404 else "rejected" if e.status < 500 else "error")
        raise
    except Exception:
        metrics.observe_write(op, "error")
        raise
    metrics.observe_write(op, "ok")


def _compact_if_due(live: ServedCollection, compactor: Compactor) -> None:
    try:
        if live.needs_compaction() and compactor.start(live, automatic=True):
            _logger.info("compaction started: the changes passed the threshold")
    except Exception:  # the write is already durable: its answer must not depend on this
        _logger.exception("could not check whether the collection needs compacting")


async def _write(ticket: Ticket, worker: EngineWorker, live: ServedCollection, compactor: Compactor,
                 write: Write, item_id: str | None) -> WriteResult:
    def work() -> WriteResult:
        try:
            result = write(live)
        except IdConflictError as e:
            raise ApiError(409, "id_conflict", str(e)) from e
        except WriteRejectedError as e:
            raise ApiError(422, "write_rejected", str(e)) from e
        except ItemNotFoundError as e:
            raise ApiError(404, "item_not_found", f"no live item with id {item_id!r}") from e
        _compact_if_due(live, compactor)
        return result

    return await ticket.run(worker, work)


def _upsert(item: ItemWrite, item_id: str | None) -> Write:
    text, image = item.text, item.image
    if text is not None:
        return lambda live: live.add_text(text, item_id=item_id, metadata=item.metadata)
    assert image is not None  # an ItemWrite is a text or an image
    return lambda live: live.add_image(image, item_id=item_id, captions=item.captions, metadata=item.metadata)


def _written(result: WriteResult, request: Request) -> JSONResponse:
    return JSONResponse(result.to_json(), status_code=200 if result.replaced else 201,
                        headers={"Location": item_url(result.id, collection_of(request))})


@router.post("/v1/items", status_code=201, responses=WRITTEN, openapi_extra=ITEM_BODY, operation_id="add_item")
async def add_item(request: Request, live: LiveDep, worker: WorkerDep, off_loop: OffLoopDep, compactor: CompactorDep,
                   settings: SettingsDep, metrics: MetricsDep, ticket: TicketDep) -> JSONResponse:
    """Add an image (multipart ``image`` file, or ``image_base64``) with its captions, or a text; 201 with the
    write (200 when its id was a live item's, which it replaced)."""
    with _counted(metrics, "upsert"):
        item = await read_item_write(request, settings, off_loop)
        result = await _write(ticket, worker, live, compactor, _upsert(item, item.id), item.id)
    return _written(result, request)


@router.put("/v1/items/{item_id:item_id}", status_code=200, responses=WRITTEN, openapi_extra=PUT_BODY,
            operation_id="put_item")
async def put_item(item_id: str, request: Request, live: LiveDep, worker: WorkerDep, off_loop: OffLoopDep,
                   compactor: CompactorDep, settings: SettingsDep, metrics: MetricsDep,
                   ticket: TicketDep) -> JSONResponse:
    """Create or replace the item with this id (an image's old captions go with it); 200 replaced, 201 created."""
    with _counted(metrics, "upsert"):
        check_item_id(item_id)
        item = await read_item_write(request, settings, off_loop)
        if item.id is not None and item.id != item_id:
            raise ApiError(422, "id_mismatch", f"the body's id {item.id!r} is not the path's {item_id!r}")
        result = await _write(ticket, worker, live, compactor, _upsert(item, item_id), item_id)
    return _written(result, request)


@router.delete("/v1/items/{item_id:item_id}", response_model=WriteResponse, responses=errors_of(401, 403, 404, 503),
               operation_id="delete_item")
async def delete_item(item_id: str, live: LiveDep, worker: WorkerDep, compactor: CompactorDep,
                      metrics: MetricsDep, ticket: TicketDep) -> JSONResponse:
    """Delete a live item (an image's captions with it); 404 when no live item has this id."""
    with _counted(metrics, "delete"):
        result = await _write(ticket, worker, live, compactor, lambda collection: collection.delete(item_id),
                              item_id)
    return JSONResponse(result.to_json())


@router.post("/v1/compact", status_code=202, responses=errors_of(401, 403, 409, 503))
async def compact(request: Request, live: LiveDep, compactor: CompactorDep) -> JSONResponse:
    """Start a compaction in the background (searches and writes go on); 409 while one is running."""
    if not compactor.start(live):
        raise ApiError(409, "compaction_running", "a compaction is already running; GET /v1/collection says when "
                       "it is done")
    location = f"/v1/collections/{request.path_params['collection']}" if "collection" in request.path_params \
        else "/v1/collection"
    return JSONResponse({"compaction": compactor.status()}, status_code=202, headers={"Location": location})
