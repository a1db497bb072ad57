"""Slow clients: sockets that send a search's headers, announce a 100,000-byte body, then trickle it a byte every 10 s,
held open beside a stream of ordinary searches, 16 of them and then 64, against a real ``python -m service``.

Before the service read bodies whole before admitting a request, 16 such sockets (1.6 bytes/s in all) held every
admission slot and every search got 503 for a minute. Measured here: each ordinary search's status and latency
beside the tricklers (against the same searches with none), and how each trickler ended (408 once its body fell
behind the minimum rate, after the rate's grace).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from benchmarks.reliability.config import ReliabilityConfig
from benchmarks.reliability.copies import collection_root_args, copy_index
from benchmarks.reliability.figures import Goal, PartResult
from benchmarks.reliability.hostile import serving_ready
from benchmarks.reliability.load import query_texts
from benchmarks.service_process import Server
from benchmarks.stats import percentiles

HOST = "127.0.0.1"
TRICKLERS = (16, 64)
BYTE_EVERY_S = 10.0
ANNOUNCED = 100_000
PROBE_EVERY_S = 0.25
# a trickler must be cut off within this: the service's default rate grace (5 s) and one byte period to spare
CUT_WITHIN_S = 15.0
HEAD = (b"POST /v1/search HTTP/1.1\r\nHost: duet\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n{" % ANNOUNCED)


@dataclass
class Trickler:
    connection: socket.socket
    opened: float
    ended: float | None = None
    status: str = "open"  # the status line's code once answered, "closed" if cut without one


@dataclass
class Window:
    tricklers: list[Trickler] = field(default_factory=list)
    probes: list[tuple[int, float]] = field(default_factory=list)  # (status, ms)


def _open(port: int, count: int) -> list[Trickler]:
    out = []
    for _ in range(count):
        connection = socket.create_connection((HOST, port), timeout=5)
        connection.sendall(HEAD)
        out.append(Trickler(connection, time.monotonic()))
    return out


def _watch(trickler: Trickler, stop: threading.Event) -> None:
    """A byte every BYTE_EVERY_S until the server answers or closes."""
    connection = trickler.connection
    connection.settimeout(BYTE_EVERY_S)
    while not stop.is_set():
        try:
            data = connection.recv(4096)
        except TimeoutError:
            try:
                connection.sendall(b" ")
            except OSError:
                data = b""
            else:
                continue
        except OSError:
            data = b""
        trickler.ended = time.monotonic()
        trickler.status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"
        return


def _probe(server: Server, text: str) -> tuple[int, float]:
    started = time.perf_counter()
    reply = server.post_json("/v1/search", {"text": text, "top_k": 10}, headers={"Connection": "close"})
    return reply.status, (time.perf_counter() - started) * 1000


def _probes(server: Server, texts: list[str], seconds: float) -> list[tuple[int, float]]:
    out, deadline, n = [], time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        out.append(_probe(server, texts[n % len(texts)]))
        n += 1
        time.sleep(PROBE_EVERY_S)
    return out


def run_window(server: Server, texts: list[str], count: int, seconds: float) -> Window:
    window = Window(tricklers=_open(server.port, count))
    stop = threading.Event()
    watchers = [threading.Thread(target=_watch, args=(t, stop), daemon=True) for t in window.tricklers]
    for watcher in watchers:
        watcher.start()
    try:
        window.probes = _probes(server, texts, seconds)
    finally:
        stop.set()
        for trickler in window.tricklers:
            trickler.connection.close()
        for watcher in watchers:
            watcher.join(timeout=BYTE_EVERY_S + 5)
    return window


def window_figures(window: Window, baseline: dict[str, float]) -> dict[str, Any]:
    statuses = Counter(str(status) for status, _ in window.probes)
    latency = percentiles([ms for status, ms in window.probes if status == 200] or [0.0])
    cut = [t.ended - t.opened for t in window.tricklers if t.ended is not None]
    return {"probes": len(window.probes), "probe_statuses": dict(statuses), "probe_latency_ms": latency,
            "p50_vs_baseline": latency["p50"] / baseline["p50"] if baseline["p50"] else None,
            "tricklers": len(window.tricklers),
            "trickler_outcomes": dict(Counter(t.status for t in window.tricklers)),
            "trickler_cut_after_s": percentiles(cut) if cut else None}


def slow_goals(figures: dict[str, Any]) -> list[Goal]:
    goals = []
    for count in TRICKLERS:
        window = figures[f"tricklers_{count}"]
        answered = window["probe_statuses"].get("200", 0)
        goals.append(Goal(name=f"searches answered beside {count} trickling sockets", target="all 200",
                          value=f"{answered}/{window['probes']}", met=answered == window["probes"] > 0))
        ratio = window["p50_vs_baseline"]
        goals.append(Goal(name=f"search p50 beside {count} trickling sockets, against none", target="<= 2x",
                          value=round(ratio, 2) if ratio is not None else None, met=ratio is not None and ratio <= 2))
        cut = window["trickler_outcomes"].get("408", 0)
        slowest = (window["trickler_cut_after_s"] or {}).get("p99")
        goals.append(Goal(name=f"trickling sockets cut off with 408 (of {count})",
                          target=f"all, within {CUT_WITHIN_S:g} s",
                          value=f"{cut}, slowest after {slowest:.1f} s" if slowest is not None else cut,
                          met=cut == count and slowest is not None and slowest <= CUT_WITHIN_S))
    return goals


def run_slow(config: ReliabilityConfig) -> PartResult:
    started = time.monotonic()
    folder = config.work / "slow"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server.log").unlink(missing_ok=True)
    seconds = config.budget.slow_seconds
    texts = query_texts(config.index)
    figures: dict[str, Any] = {"announced_body_bytes": ANNOUNCED, "byte_every_s": BYTE_EVERY_S,
                               "window_s": seconds}
    index = copy_index(config.index, folder / "index")  # a served index is its server's (its writer lock)
    with serving_ready(index, folder / "server.log", collection_root_args(config.index)) as server:
        for text in texts[:5]:
            _probe(server, text)  # warm
        baseline = [ms for status, ms in _probes(server, texts, seconds) if status == 200]
        figures["baseline_latency_ms"] = percentiles(baseline)
        for count in TRICKLERS:
            window = run_window(server, texts, count, seconds)
            figures[f"tricklers_{count}"] = window_figures(window, figures["baseline_latency_ms"])
            (folder / f"tricklers_{count}.json").write_text(json.dumps(figures[f"tricklers_{count}"], indent=2))
    return PartResult(part="slow", goals=slow_goals(figures), figures=figures,
                      seconds=round(time.monotonic() - started, 2))
