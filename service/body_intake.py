"""Request bodies, read whole before the app sees the request.

A body is refused from its headers when it is announced too large (413) or its length is malformed (400). While it
arrives it holds bytes of a budget shared by every request (its Content-Length, or what has come of a chunked one;
past the budget: 503 with Retry-After), and it must keep up: no gap longer than ``body_timeout_s``, all of it within
``body_deadline_s``, and, once ``body_rate_grace_s`` have passed, a mean rate of at least ``min_body_rate`` bytes
per second (else 408). Only then does the request reach the app, so it takes its admission ticket (service/
admission.py) with its body in hand: a client trickling a body holds some bytes of the budget for a few seconds,
never a slot of the engine's queue.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from service.errors import error_body
from service.metrics import Metrics
from service.settings import ServiceSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
BUDGET_RETRY_AFTER_S = 2  # bodies in flight leave within seconds: their deadline bounds them


@dataclass(frozen=True)
class BodyPolicy:
    max_bytes: int
    gap_timeout_s: float
    deadline_s: float
    min_rate: int
    rate_grace_s: float
    buffer_bytes: int

    @classmethod
    def of(cls, settings: ServiceSettings) -> BodyPolicy:
        return cls(settings.max_body_bytes, settings.body_timeout_s, settings.body_deadline_s,
                   settings.min_body_rate, settings.body_rate_grace_s, settings.max_buffered_body_bytes)


class BodyRefused(Exception):
    """A body the service will not read on: the status, code and message of the answer."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class BodyBudget:
    """Bytes of request bodies held at once. Changed on the event loop only."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0


@dataclass
class Reservation:
    """One request's share of the budget, given back whole when the request is done."""

    budget: BodyBudget
    held: int = 0

    def take(self, size: int) -> bool:
        if self.budget.held + size > self.budget.capacity:
            return False
        self.budget.held += size
        self.held += size
        return True

    def release(self) -> None:
        self.budget.held -= self.held
        self.held = 0


def _header(scope: Scope, name: bytes) -> list[bytes]:
    return [value for key, value in scope["headers"] if key == name]


def announced_length(scope: Scope, max_bytes: int) -> int | None:
    """The Content-Length (None: none announced; a chunked body); 400 for a malformed one, 413 past the limit."""
    values = _header(scope, b"content-length")
    if not values:
        return None
    if len(set(values)) != 1 or not values[0].strip().isdigit():  # the HTTP parser refuses most of these first
        raise BodyRefused(400, "bad_content_length", "invalid Content-Length header")
    length = int(values[0])
    if length > max_bytes:
        raise BodyRefused(413, "body_too_large", f"request body exceeds {max_bytes} bytes")
    return length


class BodyIntakeMiddleware:
    def __init__(self, app: ASGIApp, policy: BodyPolicy, metrics: Metrics) -> None:
        self.app = app
        self.policy = policy
        self.metrics = metrics
        self.budget = BodyBudget(policy.buffer_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            length = announced_length(scope, self.policy.max_bytes)
        except BodyRefused as refusal:  # from the headers alone, before the body is read or the request routed
            await self._refuse(scope, receive, send, refusal)
            return
        if length is None and not _header(scope, b"transfer-encoding"):
            await self.app(scope, receive, send)  # no body at all (a GET): nothing to hold
            return
        reservation = Reservation(self.budget)
        try:
            try:
                body = await self._read(receive, length, reservation)
            except BodyRefused as refusal:
                await self._refuse(scope, receive, send, refusal)
                return
            await self.app(scope, _replay(body, receive), send)
        finally:
            reservation.release()

    async def _read(self, receive: Receive, length: int | None, reservation: Reservation) -> bytes:
        """The whole body, within the budget, the deadline, the gap timeout and the minimum rate."""
        policy = self.policy
        if length is not None and not reservation.take(length):
            raise self._over_budget()
        loop = asyncio.get_running_loop()
        started = loop.time()
        chunks: list[bytes] = []
        received = 0
        while True:
            now = loop.time()
            limits = {"stalled": now + policy.gap_timeout_s, "deadline": started + policy.deadline_s,
                      "too_slow": started + policy.rate_grace_s + received / policy.min_rate
                      if policy.min_rate else math.inf}
            reason = min(limits, key=lambda k: limits[k])
            try:
                async with asyncio.timeout(max(0.0, limits[reason] - now)):
                    message = await receive()
            except TimeoutError:
                raise self._timed_out(reason, received, length, loop.time() - started) from None
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > policy.max_bytes:
                raise BodyRefused(413, "body_too_large", f"request body exceeds {policy.max_bytes} bytes")
            if length is None and not reservation.take(len(chunk)):
                raise self._over_budget()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _over_budget(self) -> BodyRefused:
        self.metrics.observe_shed("body_budget")
        return BodyRefused(503, "overloaded", f"the server holds its limit of {self.policy.buffer_bytes} bytes of "
                           f"request bodies; retry after {BUDGET_RETRY_AFTER_S} s",
                           {"Retry-After": str(BUDGET_RETRY_AFTER_S)})

    def _timed_out(self, reason: str, received: int, length: int | None, elapsed: float) -> BodyRefused:
        self.metrics.observe_shed(f"body_{reason}")
        policy = self.policy
        of = f"{received} of {length}" if length is not None else f"{received}"
        message = {
            "stalled": f"the request body stalled for over {policy.gap_timeout_s:g} s",
            "deadline": f"the request body did not arrive within {policy.deadline_s:g} s ({of} bytes came)",
            "too_slow": f"the request body arrived too slowly: {of} bytes in {elapsed:.1f} s; after the first "
                        f"{policy.rate_grace_s:g} s a body must keep a mean of {policy.min_rate} bytes/s",
        }[reason]
        return BodyRefused(408, "body_timeout", message)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, refusal: BodyRefused) -> None:
        # the body is not read to its end: the connection cannot carry another request
        request_id = scope.get("state", {}).get("request_id")
        response = JSONResponse(error_body(refusal.code, refusal.message, request_id), status_code=refusal.status,
                                headers={**refusal.headers, "Connection": "close"})
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body as one message, then what the connection says next (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
