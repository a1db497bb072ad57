"""Each request's id (the client's X-Request-ID when sane, else a new one) on the request, the response and its
access-log line, and its count in the metrics by method, matched route and status.

It is the outermost layer of the app, so it also answers what nothing inside it did: an unexpected exception
becomes the service's JSON 500, with its request id, counted like any other answer, on a connection that stays
usable (Starlette's own last-resort handler would answer outside this layer and close the connection).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from service.metrics import Metrics

MAX_REQUEST_ID = 64
# metrics label the methods HTTP defines; any other name a client sends is "other", not a series of its own
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_access = logging.getLogger("service.access")
_logger = logging.getLogger("service")


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _request_id(scope: Scope) -> str:
    incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
    sane = 0 < len(incoming) <= MAX_REQUEST_ID and incoming.isprintable()
    return incoming if sane else uuid.uuid4().hex


def metrics_method(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def internal_error_body(request_id: str) -> dict[str, object]:
    return {"error": {"code": "internal_error", "message": "internal error; see the server log",
                      "request_id": request_id}}


class RequestContextMiddleware:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), 0
        header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:  # the client left while its body was read: no one to answer, nothing wrong here
            status = status or 499
        except Exception:
            _logger.exception("internal error on %s %s (request %s)", scope["method"], scope["path"], request_id)
            if status:  # the answer had begun: nothing can be said on this connection any more
                raise
            status = 500
            await JSONResponse(internal_error_body(request_id), status_code=500)(scope, receive, send_with_id)
        finally:
            self._observe(scope, status, request_id, started)

    def _observe(self, scope: Scope, status: int, request_id: str, started: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        method = metrics_method(scope["method"])
        self.metrics.observe_request(method, route, status or 499)  # 499: the client left before any answer
        _access.info("%s %s %d %.1fms request_id=%s", method, scope["path"], status or 499,
                     (time.perf_counter() - started) * 1000, request_id)
