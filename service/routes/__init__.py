"""The API's routers, one per concern, in the order their routes are matched and documented.

The routes of one collection (search, facets, items, writes, compaction) are served twice: as they are, for the default
collection, and under ``/v1/collections/{collection}`` for any collection by name or alias (``scoped``)."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.routing import APIRoute

from service.dependencies import collection_name
from service.errors import errors_of
from service.routes import collections, items, meta, metrics, page, search, writes

COLLECTION_PREFIX = "/v1/collections/{collection}"
SCOPED_SUFFIX = "_in_collection"
COLLECTION_ROUTERS: tuple[APIRouter, ...] = (search.router, items.router, writes.router)


def _scoped_responses(responses: dict[int | str, Any]) -> dict[int | str, Any]:
    """A route's responses in a named collection: a 404 for a name no collection or alias has, and links that lead
    to the scoped twins of their operations, in the same collection."""
    responses = {**errors_of(404), **copy.deepcopy(responses)}
    for response in responses.values():
        for link in response.get("links", {}).values():
            if not link["operationId"].endswith(SCOPED_SUFFIX):  # a link object two responses share: once
                link["operationId"] += SCOPED_SUFFIX
            link["parameters"] = {"collection": "$request.path.collection", **link.get("parameters", {})}
    return responses


def scoped(router: APIRouter) -> APIRouter:
    """``router``'s routes under /v1/collections/{collection} (their /v1 prefix replaced), each operation id
    suffixed so the document names each once."""
    twin = APIRouter(dependencies=[Depends(collection_name)])
    for route in router.routes:
        assert isinstance(route, APIRoute) and route.path.startswith("/v1/")
        twin.add_api_route(
            COLLECTION_PREFIX + route.path.removeprefix("/v1"), route.endpoint, methods=sorted(route.methods or ()),
            response_model=route.response_model, status_code=route.status_code, tags=route.tags,
            dependencies=route.dependencies, summary=route.summary, description=route.description,
            responses=_scoped_responses(route.responses), response_class=route.response_class, name=route.name,
            operation_id=route.operation_id + SCOPED_SUFFIX if route.operation_id else None,
            openapi_extra=route.openapi_extra, include_in_schema=route.include_in_schema)
    return twin


ROUTERS: tuple[APIRouter, ...] = (*COLLECTION_ROUTERS, collections.router,
                                  *(scoped(router) for router in COLLECTION_ROUTERS), meta.router, metrics.router,
                                  page.router)
