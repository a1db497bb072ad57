"""Each request's id (the client's X-Request-ID when sane, else a new one) on the request and the response, and
its count in the metrics by method, matched route and status."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response

from service.metrics import Metrics

MAX_REQUEST_ID = 64


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


class RequestContextMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: Any, metrics: Metrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        incoming = request.headers.get("x-request-id", "")
        sane = 0 < len(incoming) <= MAX_REQUEST_ID and incoming.isprintable()
        request.state.request_id = incoming if sane else uuid.uuid4().hex
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        route = request.scope.get("route")
        self.metrics.observe_request(request.method, getattr(route, "path", "unmatched"), response.status_code)
        return response
