"""Stopping the service: SIGTERM and SIGINT drain it (real ``python -m service`` processes and real signals). The
reliability harness's stop part on the tiny index: idle, under a steady search load, and 1.5 s into a compaction
that either finishes or, past a short drain timeout, is rolled back. Here too: a write in flight when the signal
comes is answered and survives."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from benchmarks.reliability.config import ReliabilityConfig
from benchmarks.reliability.figures import PartResult
from benchmarks.reliability.stop import EXPECTED_AFTER_SIGNAL, KEY, run_stop, started, stop
from tests.server import Server

pytestmark = pytest.mark.java  # every test serves a real index


@pytest.fixture(scope="module")
def part(tiny_index: Path, tmp_path_factory: pytest.TempPathFactory) -> PartResult:
    work = tmp_path_factory.mktemp("stop")
    return run_stop(ReliabilityConfig(index=tiny_index, build_folder=work, checkpoint=tiny_index / "current" /
                                      "checkpoint", work=work, out=work / "out", short=True))


def failed(part: PartResult, scenario: str) -> list[str]:
    return [f"{g.name}: {g.value}" for g in part.goals if g.name.startswith(scenario) and not g.met]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_an_idle_service_stops_cleanly(part: PartResult, sig: str) -> None:
    run = part.figures[f"idle_{sig}"]
    assert not failed(part, f"idle_{sig}") and run["seconds"] < 20, run
    assert run["log"]["draining"] and run["log"]["drained in"] and run["log"]["stopped"], run


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_under_search_load_answers_every_request(part: PartResult, sig: str) -> None:
    run = part.figures[f"load_{sig}"]
    # each request after the signal was answered (in flight: 200; while draining: 503 with Retry-After) or found the
    # port closed: none hung, none was cut off mid-answer
    assert not failed(part, f"load_{sig}") and set(run["after"]) <= EXPECTED_AFTER_SIGNAL, run
    assert run["before"] > 0 and run["after"].get("refused", 0) > 0, run


def test_a_running_compaction_finishes_before_the_stop(part: PartResult) -> None:
    run = part.figures["compaction_finishes"]
    assert not failed(part, "compaction_finishes"), run
    assert run["log"]["compaction done"] and run["log"]["drained in"] and run["published_new"], run


def test_a_compaction_past_the_drain_timeout_is_rolled_back(part: PartResult) -> None:
    run = part.figures["compaction_rolled_back"]
    assert not failed(part, "compaction_rolled_back"), run
    assert run["log"]["compaction rolled back"] and run["log"]["drain ended"] and not run["published_new"], run
    assert run["versions_after"] == run["versions_before"] and run["verified"], run


def _trickled_write(server: Server, payload: bytes, seconds: float, replies: list[str]) -> None:
    """A write whose body takes ``seconds`` to arrive, so that it is in flight when the signal comes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as connection:
        connection.sendall(b"POST /v1/items HTTP/1.1\r\nHost: duet\r\nContent-Type: application/json\r\n"
                           b"Authorization: Bearer " + KEY.encode() + b"\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(payload))
        half = len(payload) // 2
        connection.sendall(payload[:half])
        time.sleep(seconds)
        connection.sendall(payload[half:])
        replies.append(connection.recv(65536).decode(errors="replace"))


def test_a_write_in_flight_is_answered_and_survives(index_copy: Path, tmp_path: Path) -> None:
    server = started(index_copy, tmp_path / "server.log")
    payload = json.dumps({"text": "written while the service stops", "id": "in-flight"}).encode()
    replies: list[str] = []
    writer = threading.Thread(target=_trickled_write, args=(server, payload, 1.5, replies))
    writer.start()
    time.sleep(0.5)  # the write's head and half its body are in
    code, seconds = stop(server, signal.SIGTERM)  # SIGINT takes the same path (the part stops with both)
    writer.join(timeout=30)
    assert code == 0 and seconds >= 1.0, server.log_path.read_text()[-2000:]  # the drain waited for the write
    assert replies and replies[0].startswith("HTTP/1.1 201"), replies
    again = started(index_copy, tmp_path / "again.log")
    try:
        reply = again.request("GET", "/v1/items/in-flight")
        assert reply.status == 200 and reply.json()["text"] == "written while the service stops"
    finally:
        again.stop()


def test_connections_left_in_the_accept_queue_at_the_close_get_the_drain_503() -> None:
    """What the kernel accepted and the server had not taken when it closes its listener is answered 503
    shutting_down, not reset (closing a listener resets its queued connections)."""
    from service.server import _backlog, refuse_with_503

    listener = socket.create_server(("127.0.0.1", 0), backlog=8)
    clients = []
    try:
        for n in range(3):
            client = socket.create_connection(listener.getsockname(), timeout=5)
            client.sendall(f"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-N: {n}\r\n\r\n{{}}".encode())
            clients.append(client)
        time.sleep(0.1)
        queued = list(_backlog(listener))
        assert len(queued) == 3
        for connection in queued:
            refuse_with_503(connection)
        for client in clients:
            reply = b""
            while chunk := client.recv(65536):
                reply += chunk
            head, body = reply.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 5" in head.lower()
            assert json.loads(body)["error"]["code"] == "shutting_down"
        assert list(_backlog(listener)) == []
    finally:
        for client in clients:
            client.close()
        listener.close()


def test_a_reset_counts_as_unread_only_when_the_server_never_logged_its_request() -> None:
    """The stop harness's reading of a reset: a request the server logged and then reset is a failure; one whose id
    is nowhere in the log was reset at the close before the server saw it."""
    from benchmarks.reliability.stop import RESET_UNREAD, SteadySearches

    load = SteadySearches(server=None)  # type: ignore[arg-type]  # only its outcomes are read
    reset = "error ConnectionResetError(104, 'Connection reset by peer')"
    load.outcomes = [(1.0, "200", "steady-0"), (2.0, "refused", "steady-1"), (2.0, reset, "steady-2"),
                     (2.5, reset, "steady-3")]
    log = "INFO | service.access | POST /v1/search 200 3.1ms request_id=steady-0\n" \
          "INFO | service.access | POST /v1/search 200 3.4ms request_id=steady-2\n" \
          "INFO | service.access | POST /v1/search 200 3.2ms request_id=steady-30\n"  # not steady-3's
    assert load.after(2.0, log) == ["refused", reset, RESET_UNREAD]
    assert RESET_UNREAD in EXPECTED_AFTER_SIGNAL and reset not in EXPECTED_AFTER_SIGNAL
