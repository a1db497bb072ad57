"""uvicorn's h11 protocol, held to what the service promises below the app:

- a header timeout: a connection that has not sent a whole request head within ``header_timeout_s`` of opening (or
  of its previous answer) is closed. uvicorn's keep-alive timer alone is cancelled by the first byte of a request, so
  a client trickling its headers could hold a connection forever;
- protocol errors the HTTP parser refuses before any request exists (a malformed Content-Length, a control
  character in a header, a bad chunk size, HTTP/0.9, TLS bytes) get the service's JSON error body with a request id,
  as every other error does, and headers past the parser's limit get 431 instead of 400;
- such a connection is closed gently: the answer is sent, the rest of what the client sends is read and dropped for
  a moment, then the connection closes. Closing at once with unread bytes makes the kernel reset the connection,
  and the client may never read the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE, H11Protocol
from uvicorn.server import ServerState

from service.errors import error_body

_logger = logging.getLogger("service.access")
LINGER_S = 2.0  # how long a refused connection's remaining input is read and dropped before it is closed


def protocol_error_reply(status: int, request_id: str) -> bytes:
    if status == 431:
        body = error_body("headers_too_large", "the request head is larger than the server accepts", request_id)
    else:
        body = error_body("malformed_http", "the request is not valid HTTP/1.1 (its request line, a header or the "
                          "body's framing); the connection is closed", request_id)
    return json.dumps(body).encode()


class ServiceHttpProtocol(H11Protocol):
    header_timeout_s = 10.0  # set per server by service_http_protocol

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timer: asyncio.TimerHandle | None = None
        self._lingering = False

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # the answer is out; what else comes is dropped until the connection closes
            return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # a whole request head has arrived
            self._disarm_header_timer()

    def eof_received(self) -> None:
        if self._lingering:  # the client has read the answer and is done: close now
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """The parser refused what the client sent: the JSON error body, then a gentle close."""
        limit = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        status = 431 if len(self.conn.trailing_data[0]) > limit else 400
        request_id = uuid.uuid4().hex
        body = protocol_error_reply(status, request_id)
        head = (f"HTTP/1.1 {status} {'Request Header Fields Too Large' if status == 431 else 'Bad Request'}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n"
                f"x-request-id: {request_id}\r\n\r\n").encode()
        _logger.info("- - %d (%s) request_id=%s", status, msg.rstrip("."), request_id)
        self._disarm_header_timer()
        self.transport.write(head + body)
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client sees the answer end; its own close ends the lingering
        self.loop.call_later(LINGER_S, self._close_after_linger)

    def _close_after_linger(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # waiting for the next request's head (not when a pipelined one has already begun)
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


def service_http_protocol(header_timeout_s: float) -> type[ServiceHttpProtocol]:
    return type("ServiceHttpProtocol", (ServiceHttpProtocol,), {"header_timeout_s": header_timeout_s})
