"""Stopping the service: SIGTERM and SIGINT drain it (a real ``python -m service`` process and real signals). Idle,
under a steady search load, with a write in flight, and during a compaction: requests in progress are answered, new
ones get 503 with Retry-After, an acknowledged write survives, a compaction finishes (or, past the drain timeout, is
rolled back and leaves nothing behind), the stop is logged, and the exit status is 0."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.server import Server

pytestmark = pytest.mark.java  # every test serves a real index
KEY = "shutdown-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
STOPS = (signal.SIGTERM, signal.SIGINT)


def started(index: Path, log: Path, *args: str) -> Server:
    server = Server(["--index", str(index), "--api-key", KEY, *args], log, log_level="info")
    server.wait_started()
    server.wait_ready()
    return server


def stopped_by(server: Server, sig: signal.Signals) -> tuple[int, float]:
    """The exit status and how long the stop took."""
    begun = time.monotonic()
    server.signal(sig)
    return server.wait_exit(timeout=90), time.monotonic() - begun


def logged(server: Server) -> str:
    return server.log_path.read_text()


@dataclass
class SteadySearches:
    """A search every 50 ms, each on a new connection; every outcome kept with the time it was sent."""

    server: Server
    outcomes: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _one(self) -> str:
        request = urllib.request.Request(self.server.base + "/v1/search", json.dumps({"text": "a red square"}).encode(),
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return str(response.status)
        except urllib.error.HTTPError as e:
            body = json.loads(e.read())
            return f"{e.code} {body['error']['code']} retry-after={e.headers.get('Retry-After')}"
        except urllib.error.URLError as e:
            return "refused" if isinstance(e.reason, ConnectionRefusedError) else f"error {e.reason!r}"
        except OSError as e:
            return f"error {e!r}"

    def _loop(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            self.outcomes.append((sent, self._one()))
            time.sleep(0.05)

    def __enter__(self) -> SteadySearches:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=60)


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
def test_an_idle_service_stops_cleanly(index_copy: Path, tmp_path: Path, sig: signal.Signals) -> None:
    server = started(index_copy, tmp_path / "server.log")
    code, seconds = stopped_by(server, sig)
    log = logged(server)
    assert code == 0, log[-2000:]
    assert seconds < 20
    assert f"{sig.name}: draining" in log and "drained in" in log and "Shutting down" in log
    assert log.rstrip().endswith("| INFO | service | stopped"), log[-500:]


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
def test_a_stop_under_search_load_answers_every_request(index_copy: Path, tmp_path: Path,
                                                        sig: signal.Signals) -> None:
    server = started(index_copy, tmp_path / "server.log")
    with SteadySearches(server) as load:
        time.sleep(1.5)
        signalled = time.monotonic()
        code, _ = stopped_by(server, sig)
        time.sleep(0.3)  # a few more tries against the closed port
    assert code == 0, logged(server)[-2000:]
    before = [o for t, o in load.outcomes if t < signalled]
    after = [o for t, o in load.outcomes if t >= signalled]
    assert before and set(before) == {"200"}, before
    # each request after the signal was answered (in flight: 200; while draining: 503 with Retry-After) or found the
    # port closed: none hung, none was cut off mid-answer
    assert after and set(after) <= {"200", "503 shutting_down retry-after=5", "refused"}, after
    assert after[-1] == "refused"


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
    sig = signal.SIGTERM  # SIGINT takes the same path (the idle and load tests stop with both)
    server = started(index_copy, tmp_path / "server.log")
    payload = json.dumps({"text": "written while the service stops", "id": "in-flight"}).encode()
    replies: list[str] = []
    writer = threading.Thread(target=_trickled_write, args=(server, payload, 1.5, replies))
    writer.start()
    time.sleep(0.5)  # the write's head and half its body are in
    code, seconds = stopped_by(server, sig)
    writer.join(timeout=30)
    assert code == 0 and seconds >= 1.0, logged(server)[-2000:]  # the drain waited for the write
    assert replies and replies[0].startswith("HTTP/1.1 201"), replies
    again = started(index_copy, tmp_path / "again.log")
    try:
        reply = again.request("GET", "/v1/items/in-flight")
        assert reply.status == 200 and reply.json()["text"] == "written while the service stops"
    finally:
        again.stop()


def _compaction_running(server: Server) -> None:
    for n in range(3):
        assert server.post_json("/v1/items", {"text": f"a note to compact {n}", "id": f"note-{n}"}, AUTH).status == 201
    assert server.request("POST", "/v1/compact", b"", AUTH).status == 202


def _versions(index: Path) -> list[str]:
    return sorted(p.name for p in (index / "versions").iterdir())


def test_a_running_compaction_finishes_before_the_stop(index_copy: Path, tmp_path: Path) -> None:
    before = _versions(index_copy)
    server = started(index_copy, tmp_path / "server.log")
    _compaction_running(server)
    draining = time.monotonic()
    server.signal(signal.SIGTERM)
    time.sleep(0.3)
    refused = server.post_json("/v1/search", {"text": "red"})  # while the compaction finishes: 503, not queued
    assert refused.status == 503 and refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["code"] == "shutting_down"
    assert server.wait_exit(timeout=90) == 0
    log = logged(server)
    assert "compaction running" in log and "compaction done" in log and "drained in" in log, log[-3000:]
    assert time.monotonic() - draining < 60
    after = _versions(index_copy)
    assert len(after) == 1 and after != before  # the new version is live, the old one removed
    assert (index_copy / "live" / "wal.jsonl").read_text() == ""  # folded into the new version


def test_a_compaction_past_the_drain_timeout_is_rolled_back(index_copy: Path, tmp_path: Path) -> None:
    from indexer.build import verify_index

    before = _versions(index_copy)
    server = started(index_copy, tmp_path / "server.log", "--drain-timeout-s", "0.5")
    _compaction_running(server)
    code, seconds = stopped_by(server, signal.SIGTERM)
    log = logged(server)
    assert code == 0 and seconds < 30, log[-3000:]
    assert "rolling it back" in log and "compaction rolled back" in log, log[-3000:]
    assert _versions(index_copy) == before  # nothing staged is left, the live version is the one it was
    assert len((index_copy / "live" / "wal.jsonl").read_text().splitlines()) == 3  # the writes wait in the log
    assert verify_index(index_copy)["ok"]
    again = started(index_copy, tmp_path / "again.log")
    try:
        assert [again.request("GET", f"/v1/items/note-{n}").status for n in range(3)] == [200, 200, 200]
    finally:
        again.stop()
