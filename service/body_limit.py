"""413 for request bodies over the limit, whether announced by Content-Length or streamed; 408 for a body whose
next part does not come within the body timeout (a client trickling its body holds its admission slot)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse

from service.errors import ApiError, error_body


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = ApiError(413, "body_too_large", f"request body exceeds {self.max_bytes} bytes")
        refusal = self._refuse_announced(dict(scope["headers"]).get(b"content-length"), too_large)
        if refusal is not None:  # refused from the headers alone, before the body is read or the request routed
            response = JSONResponse(error_body(refusal.code, refusal.message, None), status_code=refusal.status)
            await response(scope, receive, send)
            return
        received, complete = 0, False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, complete
            if complete:  # after the body, the next message is the disconnect, which may come at any time
                return await receive()
            try:  # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation of the caller
                async with asyncio.timeout(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                raise ApiError(408, "body_timeout", f"the request body stalled for over {self.timeout_s:g} s") from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise too_large  # reaches the route's body read, so the error handlers answer it
            return message

        await self.app(scope, limited_receive, send)

    def _refuse_announced(self, length: bytes | None, too_large: ApiError) -> ApiError | None:
        if length is None:
            return None
        try:
            announced = int(length)
        except ValueError:
            announced = -1
        if announced < 0:
            return ApiError(400, "bad_content_length", "invalid Content-Length header")
        return too_large if announced > self.max_bytes else None
