"""One error shape for every failure: ``{"error": {"code", "message", "request_id"}}`` with a 4xx/5xx status, and
the handlers that give it to the service's own refusals, FastAPI's validation errors and Starlette's 404/405
(anything unexpected: service/request_context.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from indexer.merge import ShardUnavailableError
from service.request_context import request_id_of

HTTP_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")  # the ones this API's routes may take


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_request, image_too_large, overloaded.")
    message: str = Field(description="What was wrong, for a person.")
    request_id: str | None = Field(description="The request's id (its X-Request-ID), as in the server's log.")


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


ERROR_MEANINGS = {
    400: "Malformed request: not JSON or not UTF-8, a bad multipart form, a bad Content-Length.",
    401: "The route needs an API key: none was sent.",
    403: "The API key is not valid, or the route is disabled on this server.",
    404: "No such item, image, collection, alias, snapshot or route (an item id with a line break matches no route).",
    408: "The request body did not arrive in time.",
    409: "Conflict: a compaction is running, or the item id is taken by an item this write cannot replace.",
    413: "The body or the image is too large.",
    415: "Unsupported content type or image format.",
    422: "The request is well formed but not valid: a field's type or range, a missing query, a rejected write.",
    503: "Not ready, overloaded (shed with Retry-After), or a shard is unavailable.",
}


def errors_of(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these error statuses, each with the error body."""
    return {status: {"model": ErrorBody, "description": ERROR_MEANINGS[status]} for status in statuses}


class ApiError(Exception):
    """A request the service refuses, with its HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})  # e.g. WWW-Authenticate on a 401


def error_body(code: str, message: str, request_id: str | None) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "request_id": request_id}}


def validation_message(error: ValidationError | RequestValidationError) -> str:
    """Every failed field as ``where: what``, the body's own name left out."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
    return "; ".join(parts)


def _reply(request: Request, status: int, code: str, message: str,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, request_id_of(request)), status_code=status, headers=headers)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _reply(request, exc.status, exc.code, exc.message, exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _reply(request, 422, "invalid_request", validation_message(exc))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message, headers = str(exc.detail), dict(exc.headers or {})
    if exc.status_code == 405:
        # every route of this path, not only the first one the router tried (which alone Starlette's Allow names)
        headers["Allow"] = ", ".join(allowed_methods(request))
        message = f"{request.method} is not allowed on this path; allowed: {headers['Allow']}"
    return _reply(request, exc.status_code, code, message, headers)


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of this path takes, as the router itself matches them."""
    routes = request.app.router.routes
    return [method for method in sorted(HTTP_METHODS) if any(
        route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)]


async def _shard_unavailable(request: Request, exc: ShardUnavailableError) -> JSONResponse:
    # a sharded collection missing a shard answers nothing rather than a ranking without that shard's items
    return _reply(request, 503, "shard_unavailable", str(exc), {"Retry-After": "5"})


def install_error_handlers(app: FastAPI) -> None:
    app.exception_handler(ApiError)(_api_error)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(ShardUnavailableError)(_shard_unavailable)
    # anything else unexpected: the request-context middleware answers it (service/request_context.py)
