"""The uvicorn server the service runs in: the service's HTTP protocol (service/http_protocol.py), its own log
handling, and a drain on SIGTERM or SIGINT in place of uvicorn's immediate stop.

On the first signal the service drains (service/drain.py): new requests get 503 with Retry-After, the requests in
progress and a running compaction get up to ``drain_timeout_s`` to finish; then uvicorn closes the listening socket
and the connections, the lifespan rolls back a compaction still running and closes the collection, and the process
exits 0. A second signal ends the drain at once. The JVM in the process leaves both signals to Python (``-Xrs``,
indexer/lucene.py): its own handler would halt the VM under a thread holding the GIL.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from types import FrameType
from typing import cast

import uvicorn
from fastapi import FastAPI

from service.drain import RETRY_AFTER_S
from service.http_protocol import service_http_protocol
from service.request_context import shutting_down_body
from service.state import ServiceState, state_of

_logger = logging.getLogger("service")
# after the drain, what is still in progress gets this long to finish before uvicorn cancels it
AFTER_DRAIN_S = 2
BACKLOG_SEND_S = 0.5  # a connection taken from the accept queue at the close gets this long to take its 503
# glibc's mallopt: allocations from this size up are mapped apart and unmapped when freed
M_MMAP_THRESHOLD = -3
MMAP_FROM_BYTES = 1 << 20


def return_freed_memory() -> None:
    """Large buffers (a decoded 40-megapixel query is 120 MB) go back to the system when freed. glibc otherwise raises
    its mmap threshold after the first such free and keeps later ones in its heaps: 16 uploads of 40 MP images left
    +137 MB resident on the tiny test model, +17 MB with a fixed threshold. Elsewhere than glibc: nothing to do."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_FROM_BYTES)
    except (OSError, AttributeError):
        pass


def _backlog(listener: socket.socket) -> Iterator[socket.socket]:
    """The connections the kernel has accepted on ``listener`` and the event loop has not yet taken."""
    taker = socket.socket(fileno=os.dup(listener.fileno()))  # the same accept queue, closed apart
    try:
        taker.setblocking(False)
        while True:
            try:
                connection, _ = taker.accept()
            except (BlockingIOError, InterruptedError):
                return
            yield connection
    finally:
        taker.close()


def refuse_with_503(connection: socket.socket) -> None:
    """Answer a connection the server will not serve with the drain's 503, without a reset: its request (read and
    dropped first, as far as it has arrived) is never processed."""
    with connection:
        connection.setblocking(False)
        with contextlib.suppress(OSError):
            while connection.recv(65536):
                pass
        body = json.dumps(shutting_down_body(uuid.uuid4().hex)).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
                f"\r\nretry-after: {RETRY_AFTER_S}\r\nconnection: close\r\n\r\n").encode()
        connection.settimeout(BACKLOG_SEND_S)
        with contextlib.suppress(OSError):
            connection.sendall(head + body)
            connection.shutdown(socket.SHUT_WR)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:  # noqa: ARG002 (uvicorn's signature)
        # a signal handler: it only notes the signal (the loop acts on it at its next tick), and, unlike uvicorn's,
        # does not raise the signal again once the server has stopped, so a drained stop exits 0
        drain = self.state.drain
        if drain.requested is None:
            drain.requested = signal.Signals(sig).name
        else:
            drain.hasten()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Closing a listening socket resets the connections still in its accept queue: each client would read a
        # reset for a request no one saw. They are taken first and answered 503, as the drain answers new requests.
        for server in self.servers:
            for listener in server.sockets:
                for connection in _backlog(cast(socket.socket, listener)):
                    refuse_with_503(connection)
        await super().shutdown(sockets)

    async def on_tick(self, counter: int) -> bool:
        drain = self.state.drain
        if drain.requested is not None and not drain.draining:
            drain.begin()
            self.state.registry.refuse_compactions()
            _logger.info("%s: draining (up to %g s): %d request(s) in progress, compaction %s; new requests get 503",
                         drain.requested, drain.timeout_s, drain.in_progress,
                         "running" if self.state.registry.compacting else "not running")
        if drain.draining:
            idle = drain.in_progress == 0 and not self.state.registry.compacting
            if idle or drain.remaining_s() <= 0:
                if idle:
                    _logger.info("drained in %.1f s", drain.elapsed_s())
                else:
                    _logger.warning("drain ended after %.1f s: %d request(s) still in progress, compaction %s",
                                    drain.elapsed_s(), drain.in_progress,
                                    "running (to be rolled back)" if self.state.registry.compacting else "done")
                return True
        return await super().on_tick(counter)


def serve(app: FastAPI, *, log_level: str) -> None:
    """Serve ``app`` on its settings' host and port until a signal has drained it."""
    return_freed_memory()
    state = state_of(app)
    settings = state.settings
    # log_config None: uvicorn's own lines go through the service's logging (one format, one line each);
    # access_log off: the app logs each request itself, with its request id (service/request_context.py)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level.lower(),
                            log_config=None, access_log=False, http=service_http_protocol(settings.header_timeout_s),
                            timeout_graceful_shutdown=AFTER_DRAIN_S)
    DrainingServer(config, state).run()
    _logger.info("stopped")
