"""What a hostile or overloading client found, each fixed and held here: strict input, no 500 for a user's input,
a 500 that is still the service's answer, bounded admission with load shedding, dropped work nobody waits for,
header and body timeouts, bounded metrics, no server paths or Host reflection, documented errors, keyed reads, no
CORS. The overload and timeout tests run the app behind a real uvicorn server on 127.0.0.1 (the engine faked, so a
search can be held in the engine at will)."""

from __future__ import annotations

import http.client
import inspect
import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from PIL import Image
from starlette.testclient import TestClient

from benchmarks.http_bench import free_port
from indexer.params import SearchParams
from indexer.query import Query
from indexer.search import SearchEngine, SearchResult
from service.app import create_app
from service.dependencies import get_engine
from service.http_protocol import service_http_protocol
from service.images import QUERY_SIDE, decode_image
from service.routes import ROUTERS
from service.settings import ServiceSettings
from tests.test_service_api import FakeEngine, _png
from tests.test_service_api import collection as collection  # the API tests' collection root: a fixture

KEY = "write-key"
READ_KEY = "read-key"


def _unavailable(settings: ServiceSettings, encoder: object) -> SearchEngine:
    raise RuntimeError("no engine in these tests")


def _app(engine: FakeEngine, tmp_path: Path, **limits: Any) -> FastAPI:
    app = create_app(ServiceSettings(index_dir=tmp_path / "no-index", **limits), engine_loader=_unavailable)
    app.dependency_overrides[get_engine] = lambda: cast(SearchEngine, engine)
    return app


@dataclass
class HeldEngine(FakeEngine):
    """A fake engine whose searches wait, on the engine thread, until the test lets them go."""

    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def search(self, query: Query, params: SearchParams) -> SearchResult:
        self.entered.release()
        assert self.gate.wait(30), "the test never released the engine"
        return super().search(query, params)


@dataclass
class Running:
    port: int
    engine: FakeEngine

    def connection(self, timeout: float = 30) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, payload: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        connection = self.connection()
        try:
            body = None if payload is None else json.dumps(payload).encode()
            connection.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()


@pytest.fixture()
def serve(tmp_path: Path) -> Iterator[Any]:
    """Starts the app over an engine behind a real uvicorn server with the service's own protocol; stops it."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(engine: FakeEngine, **limits: Any) -> Running:
        header_timeout = limits.pop("header_timeout_s", 10.0)
        port = free_port()
        config = uvicorn.Config(_app(engine, tmp_path, header_timeout_s=header_timeout, **limits), host="127.0.0.1",
                                port=port, log_level="warning", access_log=False,
                                http=service_http_protocol(header_timeout))
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        servers.append((server, thread))
        return Running(port, engine)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=30)


def _search_in_thread(running: Running, results: list[int]) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(running.request("POST", "/v1/search",
                                                                             {"text": "red"})[0]))
    thread.start()
    return thread


def _wait_for(condition: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _metric(running: Running, name: str) -> list[str]:
    text = running.request("GET", "/metrics")[2].decode()
    return [line for line in text.splitlines() if line.startswith(name)]


# --- overload: bounded admission, shedding, dropped work ---------------------------------------------------------


def test_past_the_admission_bound_requests_are_shed_with_503_and_retry_after(serve: Any, collection: Path) -> None:
    running = serve(HeldEngine(collection), max_pending=2)
    engine = cast(HeldEngine, running.engine)
    results: list[int] = []
    first = _search_in_thread(running, results)
    assert engine.entered.acquire(timeout=10)  # the first holds the engine; the second waits for it
    second = _search_in_thread(running, results)
    time.sleep(0.3)
    status, headers, body = running.request("POST", "/v1/search", {"text": "red"})
    assert status == 503 and headers["retry-after"].isdigit()
    error = json.loads(body)["error"]
    assert error["code"] == "overloaded" and error["request_id"] == headers["x-request-id"]
    engine.gate.set()
    first.join(10)
    second.join(10)
    assert sorted(results) == [200, 200]
    assert running.request("POST", "/v1/search", {"text": "red"})[0] == 200  # recovered
    assert _metric(running, 'duet_shed_requests_total{reason="queue_full"}') == [
        'duet_shed_requests_total{reason="queue_full"} 1.0']


def test_a_request_that_would_wait_past_the_queue_wait_is_shed_before_the_count_bound(serve: Any,
                                                                                      collection: Path) -> None:
    """The count bound is far off (64), but one request ahead that the engine takes ~0.8 s for is past a 0.5 s wait."""
    running = serve(HeldEngine(collection), max_queue_wait_s=0.5)
    engine = cast(HeldEngine, running.engine)
    results: list[int] = []
    timer = threading.Timer(0.8, engine.gate.set)  # the first search takes the engine ~0.8 s: its recent time
    timer.start()
    assert running.request("POST", "/v1/search", {"text": "red"})[0] == 200
    assert engine.entered.acquire(timeout=0)  # the first search's entry, counted
    engine.gate.clear()
    held = _search_in_thread(running, results)  # nothing ahead of it: admitted whatever the engine's time
    assert engine.entered.acquire(timeout=10)
    status, headers, body = running.request("POST", "/v1/search", {"text": "red"})
    error = json.loads(body)["error"]
    assert status == 503 and headers["retry-after"].isdigit() and error["code"] == "overloaded", body
    waited = re.search(r"waiting about ([0-9.]+) s", error["message"])
    assert waited is not None and 0.5 < float(waited.group(1)) < 2, error  # the held search's time, past the limit
    engine.gate.set()
    held.join(10)
    assert results == [200]
    assert running.request("POST", "/v1/search", {"text": "red"})[0] == 200  # nothing ahead: admitted again
    assert _metric(running, 'duet_shed_requests_total{reason="queue_wait"}') == [
        'duet_shed_requests_total{reason="queue_wait"} 1.0']


def _sync_dependencies(dependant: Dependant) -> list[str]:
    found = []
    for dependency in dependant.dependencies:
        call = dependency.call
        asynchronous = (inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)
                        or inspect.iscoroutinefunction(type(call).__call__))  # a callable instance: HTTPBearer
        found += ([] if asynchronous else [getattr(call, "__name__", repr(call))]) + _sync_dependencies(dependency)
    return found


def test_no_dependency_of_any_route_runs_on_the_thread_pool() -> None:
    """FastAPI runs a plain ``def`` dependency on its thread pool, a thread hop per dependency per request: with
    eight of them before the admission ticket, a shed request cost two fifths of a search on a small index."""
    routes = [route for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)]
    sync = {f"{route.path}: {name}" for route in routes for name in _sync_dependencies(route.dependant)}
    assert len(routes) > 20 and not sync, sorted(sync)


def test_admitted_work_past_its_deadline_is_dropped_not_computed(serve: Any, collection: Path) -> None:
    running = serve(HeldEngine(collection), queue_timeout_s=0.5)
    engine = cast(HeldEngine, running.engine)
    results: list[int] = []
    first = _search_in_thread(running, results)
    assert engine.entered.acquire(timeout=10)
    threading.Timer(1.5, engine.gate.set).start()  # the second waits past its 0.5 s deadline
    status, headers, body = running.request("POST", "/v1/search", {"text": "blue"})
    first.join(10)
    assert results == [200]
    assert status == 503 and json.loads(body)["error"]["code"] == "queue_timeout" and "retry-after" in headers
    assert len(engine.searches) == 1  # only the first reached the engine's search


def test_the_work_of_a_client_that_hung_up_is_not_computed(serve: Any, collection: Path) -> None:
    running = serve(HeldEngine(collection))
    engine = cast(HeldEngine, running.engine)
    results: list[int] = []
    first = _search_in_thread(running, results)
    assert engine.entered.acquire(timeout=10)
    body = json.dumps({"text": "blue"}).encode()
    with socket.create_connection(("127.0.0.1", running.port)) as gone:
        gone.sendall(b"POST /v1/search HTTP/1.1\r\nHost: duet\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        _wait_for(lambda: _metric(running, "duet_pending_requests ") == ["duet_pending_requests 2.0"])
    time.sleep(1.0)  # the server sees the hang-up while the request waits behind the first
    engine.gate.set()
    first.join(10)
    deadline = time.monotonic() + 10
    while not _metric(running, 'duet_shed_requests_total{reason="client_gone"}') and time.monotonic() < deadline:
        time.sleep(0.1)
    assert results == [200] and len(engine.searches) == 1
    assert _metric(running, 'duet_shed_requests_total{reason="client_gone"}') == [
        'duet_shed_requests_total{reason="client_gone"} 1.0']


# --- connections: timeouts, errors that keep the connection usable ---------------------------------------------


def test_a_connection_trickling_its_headers_is_closed(serve: Any, collection: Path) -> None:
    running = serve(FakeEngine(collection), header_timeout_s=1.0)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as slow:
        slow.sendall(b"POST /v1/search HTTP/1.1\r\nHost: duet\r\n")
        started = time.monotonic()
        assert slow.recv(1024) == b""  # closed by the server, not by this timeout
        assert time.monotonic() - started < 5


def test_a_stalled_body_gets_408(serve: Any, collection: Path) -> None:
    running = serve(FakeEngine(collection), body_timeout_s=1.0)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as slow:
        slow.sendall(b"POST /v1/search HTTP/1.1\r\nHost: duet\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"text\": ")
        reply = slow.recv(65536).decode()
    head, _, body = reply.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 408") and json.loads(body)["error"]["code"] == "body_timeout"


def test_an_unexpected_error_is_a_json_500_with_its_request_id_counted_on_a_usable_connection(
        serve: Any, collection: Path) -> None:
    engine = FakeEngine(collection)
    engine.fail_with = RuntimeError("a bug")
    running = serve(engine)
    connection = running.connection()
    connection.request("POST", "/v1/search", json.dumps({"text": "red"}), {"Content-Type": "application/json",
                                                                           "X-Request-ID": "trace-500"})
    response = connection.getresponse()
    body = json.loads(response.read())
    assert response.status == 500 and response.getheader("x-request-id") == "trace-500"
    assert body == {"error": {"code": "internal_error", "message": "internal error; see the server log",
                              "request_id": "trace-500"}}
    connection.request("GET", "/healthz")  # the same connection: still open and in step
    assert connection.getresponse().status == 200
    connection.close()
    assert _metric(running, 'duet_http_requests_total{method="POST",route="/v1/search",status="500"}')


def test_made_up_http_methods_share_one_metrics_series(serve: Any, collection: Path) -> None:
    running = serve(FakeEngine(collection))
    for n in range(40):
        assert running.request(f"X{n}METHOD", "/v1/search")[0] == 405
    series = _metric(running, "duet_http_requests_total{")
    assert not [line for line in series if "METHOD" in line]
    assert [line for line in series if 'method="other"' in line] == [
        'duet_http_requests_total{method="other",route="/v1/search",status="405"} 40.0']


def test_query_images_are_decoded_off_the_event_loop(serve: Any, collection: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import service.search_input as search_input

    threads: list[str] = []

    def recording(data: bytes, **limits: Any) -> Image.Image:
        threads.append(threading.current_thread().name)
        return decode_image(data, **limits)

    monkeypatch.setattr(search_input, "decode_image", recording)
    running = serve(FakeEngine(collection))
    import base64

    status, _, _ = running.request("POST", "/v1/search", {"image_base64": base64.b64encode(_png()).decode()})
    assert status == 200 and len(threads) == 1 and threads[0].startswith("duet-io")


# --- input: strict, and never a 500 -------------------------------------------------------------------------------


@pytest.fixture()
def client(collection: Path, tmp_path: Path) -> Iterator[TestClient]:
    app = _app(FakeEngine(collection), tmp_path, api_key=KEY, max_top_k=20)
    with TestClient(app, raise_server_exceptions=False) as running:
        yield running


def _post(client: TestClient, raw: bytes, content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    reply = client.post("/v1/search", content=raw, headers={"Content-Type": content_type})
    assert reply.headers["x-request-id"] == reply.json()["error"]["request_id"] if reply.status_code >= 400 else True
    return reply.status_code, reply.json()


@pytest.mark.parametrize(("raw", "code"), [
    (b'{"text": "\\ud800"}', "invalid_encoding"),  # a lone surrogate: not text in any encoding
    (b'{"text": "red \\udfff dot"}', "invalid_encoding"),
    (b'{"text": "red", "top_k": ' + b"9" * 5000 + b"}", "malformed_json"),  # over Python's 4,300 digits
    (b'{"text": "red", "w_dense": ' + b"9" * 5000 + b"}", "malformed_json"),
    (b'{"text": "red", "w_dense": NaN}', "malformed_json"),
    (b'{"text": "red", "w_sparse": Infinity}', "malformed_json"),
    (b'{"text": "red", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "malformed_json"),
])
def test_input_that_once_gave_500_is_a_400(client: TestClient, raw: bytes, code: str) -> None:
    status, body = _post(client, raw)
    assert (status, body["error"]["code"]) == (400, code)


@pytest.mark.parametrize("payload", [{"text": "red", "top_k": True}, {"text": "red", "explain": "yes"},
                                     {"text": "red", "top_k": "5"}, {"text": "red", "top_k": 5.5},
                                     {"text": "red", "explain": 1}, {"text": 5}])
def test_json_fields_are_not_coerced(client: TestClient, payload: dict[str, Any]) -> None:
    status, body = _post(client, json.dumps(payload).encode())
    assert (status, body["error"]["code"]) == (422, "invalid_request")


def test_a_whole_float_is_an_integer_as_json_schema_has_it(client: TestClient) -> None:
    reply = client.post("/v1/search", json={"text": "red", "top_k": 5.0, "offset": 0.0})
    assert reply.status_code == 200 and reply.json()["top_k"] == 5


def test_multipart_fields_are_typed_strictly(client: TestClient) -> None:
    image = {"image": ("q.png", _png(), "image/png")}
    accepted = client.post("/v1/search", data={"top_k": "2", "explain": "true", "w_dense": "0.5"}, files=image)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["top_k"] == 2 and accepted.json()["hits"][0]["explanation"] is not None
    for field_name, value in (("explain", "yes"), ("top_k", "true"), ("top_k", "9" * 5000), ("w_dense", "NaN")):
        refused = client.post("/v1/search", data={field_name: value}, files=image)
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_request", (field_name, value)


def test_invalid_utf8_in_a_multipart_text_field_is_refused(client: TestClient) -> None:
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\n").encode() + b"red \xff\xfe" + (
        f"\r\n--{boundary}--\r\n").encode()
    status, reply = _post(client, body, f"multipart/form-data; boundary={boundary}")
    assert (status, reply["error"]["code"]) == (400, "malformed_multipart") and "UTF-8" in reply["error"]["message"]


# --- what the service shows of itself ---------------------------------------------------------------------------


def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_clients_host(client: TestClient) -> None:
    reply = client.get("/v1/search/", headers={"Host": "attacker.example"}, follow_redirects=False)
    assert reply.status_code == 404 and "location" not in reply.headers
    assert reply.json()["error"]["code"] == "not_found"


def test_the_openapi_declares_every_error_with_the_error_body(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["components"]["schemas"]["ErrorBody"]["properties"]) == {"error"}
    search = schema["paths"]["/v1/search"]["post"]["responses"]
    assert {"400", "413", "415", "422", "503"} <= set(search)
    for status in ("400", "413", "415", "422", "503"):
        assert search[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    image = schema["paths"]["/v1/items/{item_id}/image"]["get"]["responses"]
    assert "application/json" not in image["200"]["content"] and "image/jpeg" in image["200"]["content"]
    assert image["404"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            errors = {s for s in operation["responses"] if s.startswith(("4", "5")) and s != "422"}
            assert errors or path in {"/healthz", "/readyz", "/metrics"}, (method, path)


def test_cors_is_off_by_default(client: TestClient) -> None:
    preflight = client.options("/v1/search", headers={"Origin": "https://elsewhere.example",
                                                      "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    simple = client.get("/v1/indexes", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in simple.headers


# --- keyed reads ------------------------------------------------------------------------------------------------


def test_reads_are_open_by_default_and_keyed_by_setting(collection: Path, tmp_path: Path) -> None:
    with TestClient(_app(FakeEngine(collection), tmp_path), raise_server_exceptions=False) as open_reads:
        assert open_reads.post("/v1/search", json={"text": "red"}).status_code == 200
    app = _app(FakeEngine(collection), tmp_path, api_key=KEY, read_api_key=READ_KEY)
    with TestClient(app, raise_server_exceptions=False) as keyed:
        for path, send in (("/v1/search", lambda h: keyed.post("/v1/search", json={"text": "red"}, headers=h)),
                           ("/v1/items", lambda h: keyed.get("/v1/items/red.png", headers=h)),
                           ("/image", lambda h: keyed.get("/v1/items/red.png/image", headers=h))):
            missing = send({})
            assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized", path
            assert missing.headers["www-authenticate"].startswith("Bearer")
            wrong = send({"Authorization": "Bearer nope"})
            assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "invalid_api_key", path
            assert send({"Authorization": f"Bearer {READ_KEY}"}).status_code == 200, path
            assert send({"Authorization": f"Bearer {KEY}"}).status_code == 200, path  # the write key reads too
        assert keyed.get("/healthz").status_code == 200 and keyed.get("/readyz").status_code in (200, 503)
        # the read key does not write
        refused = keyed.post("/v1/items", json={"text": "x"}, headers={"Authorization": f"Bearer {READ_KEY}"})
        assert refused.status_code == 403


# --- query images held small ------------------------------------------------------------------------------------


def _encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_a_large_query_image_is_brought_down_to_the_query_size(image_format: str) -> None:
    large = _encoded(Image.new("RGB", (4000, 3000), "green"), image_format)
    decoded = decode_image(large, max_pixels=40_000_000, shorter_side=QUERY_SIDE)
    assert min(decoded.size) == QUERY_SIDE and decoded.size[0] == pytest.approx(QUERY_SIDE * 4 / 3, abs=2)
    assert decode_image(large, max_pixels=40_000_000).size == (4000, 3000)  # an indexed write keeps its size
    photo = _encoded(Image.new("RGB", (500, 375), "green"), image_format)
    assert decode_image(photo, max_pixels=40_000_000, shorter_side=QUERY_SIDE).size == (500, 375)


def test_an_image_far_longer_than_wide_is_refused_before_the_model_sees_it(client: TestClient) -> None:
    import base64

    strip = _encoded(Image.new("RGB", (2000, 1), "green"), "PNG")  # the model would resize it to 448,000x224
    status, body = _post(client, json.dumps({"image_base64": base64.b64encode(strip).decode()}).encode())
    assert (status, body["error"]["code"]) == (422, "image_aspect_ratio")
    panorama = _encoded(Image.new("RGB", (1000, 100), "green"), "PNG")
    assert client.post("/v1/search", json={"image_base64": base64.b64encode(panorama).decode()}).status_code == 200

