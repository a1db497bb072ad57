"""What a hostile probe and a new user found in operation, each fixed and held here: slow bodies that held every
admission slot, forged log lines, plain-text answers to protocol errors, 405s without Allow, large JSON bodies parsed
on the event loop, a page without security headers. The connection tests run the app behind a real uvicorn server
on 127.0.0.1 with the service's own HTTP protocol (tests/test_service_hardening.py's ``serve``)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from service.http_protocol import LINGER_S
from tests.test_service_api import FakeEngine
from tests.test_service_api import collection as collection  # fixtures, under the names the tests use
from tests.test_service_hardening import HeldEngine, Running, _metric
from tests.test_service_hardening import client as client
from tests.test_service_hardening import serve as serve

TRICKLE_HEAD = (b"POST /v1/search HTTP/1.1\r\nHost: duet\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n{")


def _reply(connection: socket.socket) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The status line, headers and JSON body of one answer, read to the end of the connection."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return lines[0], headers, json.loads(body)


def _tricklers(running: Running, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", running.port), timeout=30)
        connection.sendall(TRICKLE_HEAD)
        sockets.append(connection)
    return sockets


# --- slow clients -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tricklers", [16, 64])
def test_trickling_bodies_leave_searches_answering(serve: Any, collection: Path, tricklers: int) -> None:
    running = serve(FakeEngine(collection), max_pending=4, body_rate_grace_s=2.0, min_body_rate=1000)
    slow = _tricklers(running, tricklers)
    try:
        time.sleep(0.3)
        # each trickler holds 100,000 bytes of the body budget and no admission slot: the searches get through
        statuses = [running.request("POST", "/v1/search", {"text": "red"})[0] for _ in range(8)]
        assert statuses == [200] * 8
        status, headers, body = _reply(slow[0])  # cut off once its grace has passed, for arriving too slowly
        assert status.startswith("HTTP/1.1 408") and body["error"]["code"] == "body_timeout"
        assert "too slowly" in body["error"]["message"] and headers["connection"] == "close"
    finally:
        for connection in slow:
            connection.close()
    assert _metric(running, 'duet_shed_requests_total{reason="body_too_slow"}')


def test_a_body_must_arrive_whole_within_its_deadline(serve: Any, collection: Path) -> None:
    running = serve(FakeEngine(collection), body_deadline_s=1.0, min_body_rate=0)
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as connection:
        connection.sendall(TRICKLE_HEAD)
        started = time.monotonic()
        for _ in range(4):  # a byte every 0.4 s: no gap is long, the whole is too slow
            time.sleep(0.4)
            try:
                connection.sendall(b" ")
            except OSError:
                break
        status, _, body = _reply(connection)
    assert status.startswith("HTTP/1.1 408") and "within 1 s" in body["error"]["message"]
    assert time.monotonic() - started < 5


def test_bodies_past_the_buffer_budget_get_503(serve: Any, collection: Path) -> None:
    running = serve(FakeEngine(collection), max_buffered_body_bytes=150_000)
    slow = _tricklers(running, 1)  # holds 100,000 of the 150,000 bytes
    try:
        time.sleep(0.3)
        connection = socket.create_connection(("127.0.0.1", running.port), timeout=30)
        connection.sendall(TRICKLE_HEAD)  # 100,000 more do not fit
        status, headers, body = _reply(connection)
        assert status.startswith("HTTP/1.1 503") and headers["retry-after"].isdigit()
        assert body["error"]["code"] == "overloaded" and "bytes of request bodies" in body["error"]["message"]
        assert running.request("POST", "/v1/search", {"text": "red"})[0] == 200  # a small body still fits
    finally:
        slow[0].close()


def test_a_request_takes_its_admission_slot_once_its_body_is_in(serve: Any, collection: Path) -> None:
    running = serve(HeldEngine(collection), max_pending=1)
    engine = running.engine
    assert isinstance(engine, HeldEngine)
    slow = _tricklers(running, 3)
    try:
        results: list[int] = []
        search = threading.Thread(target=lambda: results.append(running.request("POST", "/v1/search",
                                                                                 {"text": "red"})[0]))
        search.start()
        assert engine.entered.acquire(timeout=10)  # the one slot is the search's, not a trickler's
        assert _metric(running, "duet_pending_requests ") == ["duet_pending_requests 1.0"]
        engine.gate.set()
        search.join(10)
        assert results == [200]
    finally:
        for connection in slow:
            connection.close()


# --- what the HTTP parser refuses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "status", "code"), [
    (b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "malformed_http"),
    (b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "malformed_http"),
    (b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400,
     "malformed_http"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x0bb\r\n\r\n", 400, "malformed_http"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400, "malformed_http"),
    (b"POST /v1/search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "malformed_http"),
    (b"GET /healthz\r\n\r\n", 400, "malformed_http"),  # HTTP/0.9
    (bytes.fromhex("16030100a5010000a10303") + bytes(160), 400, "malformed_http"),  # a TLS ClientHello
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n", 431, "headers_too_large"),
], ids=["negative-length", "text-length", "two-lengths", "vertical-tab", "nul", "bad-chunk", "http-0.9", "tls",
        "1-mb-header"])
def test_protocol_errors_get_the_json_error_body(serve: Any, collection: Path, raw: bytes, status: int,
                                                code: str) -> None:
    running = serve(FakeEngine(collection))
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as connection:
        connection.sendall(raw)  # all of it, even past the parser's limit: read and dropped, not a reset
        line, headers, body = _reply(connection)
    assert line.startswith(f"HTTP/1.1 {status}")
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert body["error"]["code"] == code and body["error"]["request_id"] == headers["x-request-id"]
    assert LINGER_S <= 5


# --- routes and methods -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("TRACE", "/healthz", "GET"), ("PUT", "/v1/items/0/image", "GET"), ("DELETE", "/v1/items/0/image", "GET"),
    ("OPTIONS", "/v1/items/0", "DELETE, GET, PUT"), ("GET", "/v1/items", "POST")])
def test_a_405_names_the_allowed_methods(client: TestClient, method: str, path: str, allowed: str) -> None:
    reply = client.request(method, path, headers={"Authorization": "Bearer write-key"})
    assert reply.status_code == 405 and reply.headers["allow"] == allowed
    assert reply.json()["error"]["code"] == "method_not_allowed" and allowed in reply.json()["error"]["message"]


# --- logs, bodies, headers ----------------------------------------------------------------------------------------


def test_a_path_cannot_forge_a_log_line(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    from core.progress import OneLineFormatter

    forged = "/v1/items/x%0A2026-12-04%2019:00:00,000%20|%20ERROR%20|%20service%20|%20FORGED%1B%5B2J/image"
    with caplog.at_level(logging.INFO, logger="service.access"):
        assert client.get(forged).status_code == 404
    line = next(r.getMessage() for r in caplog.records if r.name == "service.access")
    assert "%0A" in line and "%1B" in line and "\n" not in line and "\x1b" not in line
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a %s b", ("x\n| ERROR | forged\x1b[2J\u2028",), None)
    formatted = OneLineFormatter("%(message)s").format(record)
    assert formatted == "a x\\n| ERROR | forged\\x1b[2J\\u2028 b"


def test_a_large_json_body_is_parsed_off_the_event_loop(serve: Any, collection: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import service.request_body as request_body

    threads: list[str] = []
    parse = request_body.parse_json

    def recording(raw: bytes, what: str = "the request body") -> Any:
        threads.append(threading.current_thread().name)
        return parse(raw, what)

    monkeypatch.setattr(request_body, "parse_json", recording)
    running = serve(FakeEngine(collection))
    small = running.request("POST", "/v1/search", {"text": "red"})
    large = running.request("POST", "/v1/search", {"text": "red", "pad": "x" * 2_000_000})
    assert small[0] == 200 and large[0] == 422  # the pad is an unknown field, refused once parsed
    loop_thread = threads[0]  # the small body: parsed on the server's event loop
    assert len(threads) == 2 and threads[1] != loop_thread  # the large one: on another thread


def test_answers_carry_the_security_headers(client: TestClient) -> None:
    for path in ("/healthz", "/openapi.json", "/v1/items/none"):
        assert client.get(path).headers["x-content-type-options"] == "nosniff"
    page = client.get("/")
    policy = page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in policy
    assert "script-src 'sha256-" in policy and "unsafe-inline" not in policy and "default-src 'none'" in policy


def test_big_uploads_leave_little_resident(tiny_server: Any) -> None:
    """16 searches with a 40-megapixel image each (8,000 x 5,000, 120 MB decoded) leave the server's resident memory
    within 80 MB of where it was (before glibc's mmap threshold was fixed, +137 MB on this model, 0.3-0.75 GB on
    the default one)."""
    import io

    from PIL import Image

    from benchmarks.reliability.hostile import rss_mib

    buffer = io.BytesIO()
    Image.new("RGB", (8000, 5000), (120, 30, 200)).save(buffer, "PNG")
    image = buffer.getvalue()
    assert tiny_server.post_json("/v1/search", {"text": "red"}).status == 200
    before = rss_mib(tiny_server.process.pid)
    statuses: list[int] = []

    def upload() -> None:
        statuses.append(tiny_server.post_multipart("/v1/search", {"top_k": "3"},
                                                   {"image": ("big.png", image, "image/png")}).status)

    for _ in range(8):
        pair = [threading.Thread(target=upload) for _ in range(2)]
        for thread in pair:
            thread.start()
        for thread in pair:
            thread.join(60)
    after = rss_mib(tiny_server.process.pid)
    assert statuses == [200] * 16
    assert before is not None and after is not None and after - before < 80, (before, after)
