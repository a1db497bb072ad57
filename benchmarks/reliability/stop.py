"""Stopping: SIGTERM and SIGINT to a real ``python -m service``, idle, under a steady search load, and 1.5 s into
a compaction of a copy of the index (the stops that once deadlocked the process, exited 143, or left a staged
version behind). Measured: the exit status, how long the stop took, what each request sent after the signal got,
and what the compaction left: its outcome, the versions on disk, the index verified, the writes found again by a
fresh server.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.reliability.config import ReliabilityConfig
from benchmarks.reliability.copies import collection_root_args, copy_index
from benchmarks.reliability.figures import Goal, PartResult
from benchmarks.service_process import Server

KEY = "reliability-stop-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# after the signal a request is answered (in flight), refused while draining, or finds the port closed; or its
# connection is reset at the close before the server saw the request (its request id is nowhere in the server's
# log). Linux offers no way to stop queuing connections but to close the listener, which resets what it queued after
# the server's last accept: a client connecting in that instant is reset, whatever the server does.
RESET_UNREAD = "reset at the close, never seen by the server"
EXPECTED_AFTER_SIGNAL = {"200", "503 shutting_down retry-after=5", "refused", RESET_UNREAD}
COMPACTION_WRITES = 20
SIGNAL_INTO_COMPACTION_S = 1.5
# the drain timeout of the stop that lets the compaction finish (a compaction of the test split takes longer than the
# default drain timeout on 2 cores: the figures say how long); the one that rolls it back
FINISH_WITHIN_S = 600.0
ROLL_BACK_WITHIN_S = 0.5


@dataclass
class SteadySearches:
    """Searches back to back from ``clients`` threads, each on a new connection, every outcome kept with the time it
    was sent: "200", "<status> <error code> retry-after=<header>", "refused", or "error ..." (a hang, a reset)."""

    server: Server
    clients: int = 1
    pause_s: float = 0.05
    outcomes: list[tuple[float, str, str]] = field(default_factory=list)  # (sent at, outcome, request id)
    stop: threading.Event = field(default_factory=threading.Event)
    _sent: Iterator[int] = field(default_factory=itertools.count)

    def one(self, request_id: str) -> str:
        request = urllib.request.Request(self.server.base + "/v1/search", json.dumps({"text": "a dog"}).encode(),
                                         {"Content-Type": "application/json", "X-Request-Id": request_id})
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
            sent, request_id = time.monotonic(), f"steady-{next(self._sent)}"
            self.outcomes.append((sent, self.one(request_id), request_id))
            time.sleep(self.pause_s)

    def after(self, moment: float, server_log: str) -> list[str]:
        """The outcomes of the requests sent from ``moment`` on; a reset whose request id the server never logged
        is ``RESET_UNREAD`` (``server_log``: the whole log, read once the server has exited)."""
        logged = set(re.findall(r"request_id=(\S+)", server_log))
        return [RESET_UNREAD if "ConnectionResetError" in outcome and request_id not in logged
                else outcome for sent, outcome, request_id in self.outcomes if sent >= moment]

    def __enter__(self) -> SteadySearches:
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def started(index: Path, log: Path, *args: str) -> Server:
    server = Server(["--index", str(index), "--api-key", KEY, *args], log, log_level="info")
    server.wait_started()
    server.wait_ready()
    return server


def stop(server: Server, sig: signal.Signals) -> tuple[int, float]:
    """The exit status and the seconds from the signal to the exit."""
    begun = time.monotonic()
    server.signal(sig)
    return server.wait_exit(timeout=600), round(time.monotonic() - begun, 2)


def _logged(server: Server) -> dict[str, bool]:
    text = server.log_path.read_text()
    return {line: line in text for line in ("draining", "drained in", "drain ended", "stopped", "compaction done",
                                            "compaction rolled back")}


def under_load(index: Path, folder: Path, args: tuple[str, ...], sig: signal.Signals) -> dict[str, Any]:
    server = started(index, folder / f"load-{sig.name}.log", *args)
    with SteadySearches(server, clients=4) as load:
        time.sleep(3.0)
        signalled = time.monotonic()
        code, seconds = stop(server, sig)
        time.sleep(0.5)
    after = Counter(load.after(signalled, server.log_path.read_text()))
    return {"exit_code": code, "seconds": seconds, "before": len(load.outcomes) - sum(after.values()),
            "after": dict(after), "log": _logged(server)}


def into_compaction(index: Path, folder: Path, args: tuple[str, ...], drain_s: float) -> dict[str, Any]:
    """SIGTERM 1.5 s into a compaction of 20 new texts, under a drain timeout of ``drain_s``."""
    work = copy_index(index, folder / "compaction-index")
    before = sorted(p.name for p in (work / "versions").iterdir())
    server = started(work, folder / f"compaction-{drain_s}.log", *args, "--drain-timeout-s", str(drain_s))
    written = [server.post_json("/v1/items", {"text": f"a note written before the stop {n}", "id": f"stop-{n}"},
                                AUTH).status for n in range(COMPACTION_WRITES)]
    compacting = server.request("POST", "/v1/compact", b"", AUTH).status
    time.sleep(SIGNAL_INTO_COMPACTION_S)
    begun = time.monotonic()
    server.signal(signal.SIGTERM)
    time.sleep(0.3)
    during = SteadySearches(server).one("while-draining")  # while the compaction finishes or is rolled back
    code = server.wait_exit(timeout=FINISH_WITHIN_S + 60)
    seconds = round(time.monotonic() - begun, 2)
    versions = sorted(p.name for p in (work / "versions").iterdir())
    from indexer.build import verify_index

    try:
        verified = bool(verify_index(work)["ok"])
    except Exception as e:  # a version that does not verify is what this part looks for
        verified = False
        (folder / "verify-error.txt").write_text(f"{type(e).__name__}: {e}")
    again = started(work, folder / f"reload-{drain_s}.log", *args)
    try:
        found = sum(again.request("GET", f"/v1/items/stop-{n}").status == 200 for n in range(COMPACTION_WRITES))
    finally:
        again.stop()
    return {"drain_timeout_s": drain_s, "writes": Counter(map(str, written)), "compact": compacting,
            "exit_code": code, "seconds": seconds, "search_while_draining": during, "log": _logged(server),
            "versions_before": len(before), "versions_after": len(versions),
            "staged_left": [v for v in versions if v.startswith(".")],
            "published_new": versions != before, "verified": verified, "writes_found_again": found}


def stop_goals(figures: dict[str, Any]) -> list[Goal]:
    goals = []
    for name in ("idle_SIGTERM", "idle_SIGINT", "load_SIGTERM", "load_SIGINT", "compaction_finishes",
                 "compaction_rolled_back"):
        run = figures[name]
        goals.append(Goal(name=f"{name}: exit status", target="0", value=run["exit_code"], met=run["exit_code"] == 0))
    for name in ("load_SIGTERM", "load_SIGINT"):
        other = {k: v for k, v in figures[name]["after"].items() if k not in EXPECTED_AFTER_SIGNAL}
        goals.append(Goal(name=f"{name}: requests after the signal neither answered, refused with 503 nor refused "
                      "at the port (or reset at the close before the server saw it)", target="0", value=other or 0,
                          met=not other))
    for name, published in (("compaction_finishes", True), ("compaction_rolled_back", False)):
        run = figures[name]
        goals.append(Goal(name=f"{name}: a search while it drains", target="503 shutting_down retry-after=5",
                          value=run["search_while_draining"],
                          met=run["search_while_draining"] == "503 shutting_down retry-after=5"))
        whole = (run["published_new"] == published and not run["staged_left"] and run["verified"]
                 and run["writes_found_again"] == COMPACTION_WRITES)
        goals.append(Goal(name=f"{name}: new version {'published' if published else 'not published'}, nothing "
                          "staged left, index verified, every write found again", target="yes",
                          value={k: run[k] for k in ("published_new", "staged_left", "verified",
                                                     "writes_found_again")}, met=whole))
    return goals


def run_stop(config: ReliabilityConfig) -> PartResult:
    started_at = time.monotonic()
    folder = config.work / "stop"
    folder.mkdir(parents=True, exist_ok=True)
    for log in folder.glob("*.log"):
        log.unlink()
    index = copy_index(config.index, folder / "index")  # a served index gets a live/ of its own
    args = collection_root_args(config.index)
    figures: dict[str, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        server = started(index, folder / f"idle-{sig.name}.log", *args)
        code, seconds = stop(server, sig)
        figures[f"idle_{sig.name}"] = {"exit_code": code, "seconds": seconds, "log": _logged(server)}
        figures[f"load_{sig.name}"] = under_load(index, folder, args, sig)
    figures["compaction_finishes"] = into_compaction(config.index, folder, args, FINISH_WITHIN_S)
    figures["compaction_rolled_back"] = into_compaction(config.index, folder, args, ROLL_BACK_WITHIN_S)
    return PartResult(part="stop", goals=stop_goals(figures), figures=json.loads(json.dumps(figures)),
                      seconds=round(time.monotonic() - started_at, 2))
