"""Each request's id (the client's X-Request-ID when sane, else a new one) on the request, the response and its
access-log line, and its count in the metrics by method, matched route and status.

It is the outermost layer of the app, so it also answers what nothing inside it did: an unexpected exception
becomes the service's JSON 500, with its request id, counted like any other answer, on a connection that stays
usable (Starlette's own last-resort handler would answer outside this layer and close the connection). While the
service drains (service/drain.py) it refuses new work here, and counts the requests still in progress.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from service.drain import RETRY_AFTER_S, Drain
from service.metrics import Metrics

MAX_REQUEST_ID = 64
# every answer is what its Content-Type says: a browser must not guess another type (an image read as HTML)
NO_SNIFF = (b"x-content-type-options", b"nosniff")
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


def logged_path(scope: Scope) -> str:
    """The path as the client sent it, still percent-encoded: a decoded %0A or %1B in a log line would forge a line
    or write terminal escapes."""
    raw = scope.get("raw_path")
    return raw.decode("latin-1") if isinstance(raw, bytes) else scope["path"].encode("unicode_escape").decode()


def metrics_method(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def internal_error_body(request_id: str) -> dict[str, object]:
    return {"error": {"code": "internal_error", "message": "internal error; see the server log",
                      "request_id": request_id}}


def shutting_down_body(request_id: str) -> dict[str, object]:
    return {"error": {"code": "shutting_down", "message": "the server is shutting down; retry on another "
                      f"replica or after {RETRY_AFTER_S} s", "request_id": request_id}}


class RequestContextMiddleware:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: Metrics,
                 drain: Drain) -> None:
        self.app = app
        self.metrics = metrics
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), 0
        headers = [(b"x-request-id", request_id.encode("latin-1")), NO_SNIFF]

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        if self.drain.refuses(scope["path"]):
            status = 503
            await JSONResponse(shutting_down_body(request_id), status_code=503, headers={
                "Retry-After": str(RETRY_AFTER_S), "Connection": "close"})(scope, receive, send_with_id)
            self._observe(scope, status, request_id, started)
            return
        self.drain.in_progress += 1
        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:  # the client left while its body was read: no one to answer, nothing wrong here
            status = status or 499
        except Exception:
            _logger.exception("internal error on %s %s (request %s)", metrics_method(scope["method"]),
                              logged_path(scope), request_id)
            if status:  # the answer had begun: nothing can be said on this connection any more
                raise
            status = 500
            await JSONResponse(internal_error_body(request_id), status_code=500)(scope, receive, send_with_id)
        finally:
            self.drain.in_progress -= 1
            self._observe(scope, status, request_id, started)

    def _observe(self, scope: Scope, status: int, request_id: str, started: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        method = metrics_method(scope["method"])
        self.metrics.observe_request(method, route, status or 499)  # 499: the client left before any answer
        _access.info("%s %s %d %.1fms request_id=%s", method, logged_path(scope), status or 499,
                     (time.perf_counter() - started) * 1000, request_id)
