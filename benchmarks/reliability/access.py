"""The access part: who may change what, and what the service gives away. Against real ``python -m service``
processes: one with a write key (reads open), one with a read key too.

Checked: write and admin routes refuse no key (401 with a challenge) and a wrong one (403), both as the JSON error
body; the key is compared in constant time (the median answer to a key wrong in its first byte against one wrong in
its last); search is open by default and keyed by the read-key setting; the image route stays inside the
collection root (encoded ``..``, absolute paths, symlinks out of the root); CORS is off; each request's id is in
the server's log.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from benchmarks.reliability.config import ReliabilityConfig
from benchmarks.reliability.copies import copy_index
from benchmarks.reliability.figures import Goal, PartResult
from benchmarks.service_process import Reply, Server, serving

_logger = logging.getLogger("benchmarks")
WRITE_KEY = "reliability-write-key-0123456789abcdef"
READ_KEY = "reliability-read-key-0123456789abcdef"
TIMING_SAMPLES = 300
# the constant-time goal: the two wrong keys' median answers differ by less than this (HTTP noise is larger)
TIMING_TOLERANCE_MS = 0.2
TRAVERSALS = ("..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%252e%252e%252fetc%252fpasswd",
              "..%5C..%5Cetc%5Cpasswd", "%2Fetc%2Fpasswd", "%2F%2Fetc%2Fpasswd", "....%2F%2F....%2F%2Fetc%2Fpasswd",
              "..%2F" * 12 + "etc%2Fpasswd", "%00..%2Fetc%2Fpasswd", "..%c0%af..%c0%afetc%c0%afpasswd",
              "symlinked-out")


def _is_error(reply: Reply, status: int, code: str | None = None) -> bool:
    try:
        error = reply.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return reply.status == status and (code is None or error.get("code") == code) and "message" in error


def _write_routes(server: Server, headers: dict[str, str]) -> list[Reply]:
    return [server.post_json("/v1/items", {"text": "a probe that must not be written"}, headers),
            server.post_json("/v1/items/probe", {"text": "a probe"}, headers, method="PUT"),
            server.request("DELETE", "/v1/items/probe", headers=headers),
            server.request("POST", "/v1/compact", headers=headers),
            server.request("GET", "/v1/collection", headers=headers)]


def write_refusals(server: Server) -> dict[str, Any]:
    """Every write and admin route without a key, with a wrong one, with a malformed header."""
    none = _write_routes(server, {})
    wrong = _write_routes(server, {"Authorization": "Bearer wrong"})
    malformed = _write_routes(server, {"Authorization": "Basic d3Jvbmc6d3Jvbmc="})
    return {"routes": len(none),
            "no_key_401_json": sum(_is_error(r, 401, "unauthorized") and "bearer" in r.headers.get(
                "www-authenticate", "").lower() for r in none),
            "wrong_key_403_json": sum(_is_error(r, 403, "invalid_api_key") for r in wrong),
            "malformed_401_json": sum(_is_error(r, 401, "unauthorized") for r in malformed)}


def _median_ms(server: Server, key: str) -> float:
    samples = []
    for _ in range(TIMING_SAMPLES):
        started = time.perf_counter()
        server.request("GET", "/v1/collection", headers={"Authorization": f"Bearer {key}"})
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def key_timing(server: Server) -> dict[str, Any]:
    """A key wrong in its first byte against one wrong in its last: interleaved rounds, medians."""
    first = "X" + WRITE_KEY[1:]
    last = WRITE_KEY[:-1] + "X"
    rounds = [(_median_ms(server, first), _median_ms(server, last)) for _ in range(2)]
    first_ms = statistics.mean(r[0] for r in rounds)
    last_ms = statistics.mean(r[1] for r in rounds)
    return {"samples_per_key": TIMING_SAMPLES * len(rounds), "first_byte_wrong_median_ms": round(first_ms, 4),
            "last_byte_wrong_median_ms": round(last_ms, 4), "difference_ms": round(abs(first_ms - last_ms), 4),
            "comparison": "hmac.compare_digest over every configured key"}


def image_confinement(get: Callable[[str], Reply], symlinked_id: str, control_id: str) -> dict[str, Any]:
    """Paths that try to leave the collection root, and an item whose file is a symlink out of it; the control, an
    image inside the root, must be served."""
    answers = {}
    for variant in TRAVERSALS:
        item = quote(symlinked_id, safe="") if variant == "symlinked-out" else variant  # the variants: encoded
        answers[variant] = get(f"/v1/items/{item}/image").status
    leaked = [v for v, status in answers.items() if status == 200]
    return {"variants": len(answers), "served": leaked, "statuses": answers,
            "control_status": get(f"/v1/items/{quote(control_id, safe='')}/image").status}


def cors(server: Server) -> dict[str, Any]:
    origin = {"Origin": "https://elsewhere.example"}
    preflight = server.request("OPTIONS", "/v1/search", headers={**origin, "Access-Control-Request-Method": "POST"})
    simple = server.request("GET", "/v1/indexes", headers=origin)
    granted = [r.headers.get("access-control-allow-origin") for r in (preflight, simple)
               if "access-control-allow-origin" in r.headers]
    return {"preflight_status": preflight.status, "allow_origin_headers": granted}


def request_ids_logged(server: Server, log: Path) -> dict[str, Any]:
    ids = [f"reliability-{uuid.uuid4().hex[:12]}" for _ in range(3)]
    server.post_json("/v1/search", {"text": "a dog"}, {"X-Request-ID": ids[0]})
    server.post_json("/v1/search", {"text": "a dog", "top_k": True}, {"X-Request-ID": ids[1]})  # a 422
    server.request("GET", "/v1/items/no-such-item", headers={"X-Request-ID": ids[2]})  # a 404
    time.sleep(0.5)  # the log is written by another process
    text = log.read_text(errors="replace")
    return {"sent": len(ids), "found_in_log": sum(i in text for i in ids)}


def keyed_reads(open_server: Server, keyed_server: Server) -> dict[str, Any]:
    query = {"text": "a dog runs on the grass"}
    return {"open_without_key": open_server.post_json("/v1/search", query).status,
            "keyed_without_key": keyed_server.post_json("/v1/search", query).status,
            "keyed_wrong_key": keyed_server.post_json("/v1/search", query, {"Authorization": "Bearer no"}).status,
            "keyed_with_read_key": keyed_server.post_json("/v1/search", query,
                                                          {"Authorization": f"Bearer {READ_KEY}"}).status,
            "read_key_writes": keyed_server.post_json("/v1/items", {"text": "x"},
                                                      {"Authorization": f"Bearer {READ_KEY}"}).status}


def _image_items(index: Path) -> tuple[list[dict[str, Any]], Path]:
    import json

    from indexer.store import manifest_path, read_manifest

    directory = index / "current" if (index / "current").exists() else index
    lines = (directory / "images" / "items.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:2]], manifest_path(index, read_manifest(index).collection["root"])


def _symlink_root(index: Path, work: Path) -> tuple[Path, str, str]:
    """A collection root whose first image is a symlink to a file outside it, and whose second is the real file
    (the control: served); the two images' ids."""
    (escaping, control), recorded_root = _image_items(index)
    root = work / "symlink-root"
    shutil.rmtree(root, ignore_errors=True)
    link = root / str(escaping["path"])
    link.parent.mkdir(parents=True, exist_ok=True)
    secret = work / "outside-the-root.txt"
    secret.write_text("not an image of the collection")
    link.symlink_to(secret)
    copy = root / str(control["path"])
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(recorded_root / str(control["path"]), copy)
    return root, str(escaping["id"]), str(control["id"])


def _goals(figures: dict[str, Any]) -> list[Goal]:
    refusals, timing = figures["write_refusals"], figures["key_timing"]
    reads, confined = figures["keyed_reads"], figures["image_confinement"]
    routes = refusals["routes"]
    checks: list[tuple[str, str, Any, Callable[[], bool]]] = [
        ("write/admin routes without a key: 401 JSON with a Bearer challenge", f"{routes}/{routes}",
         f"{refusals['no_key_401_json']}/{routes}", lambda: refusals["no_key_401_json"] == routes),
        ("write/admin routes with a wrong key: 403 JSON", f"{routes}/{routes}",
         f"{refusals['wrong_key_403_json']}/{routes}", lambda: refusals["wrong_key_403_json"] == routes),
        ("key compared in constant time: first- vs last-byte-wrong median (ms)", f"< {TIMING_TOLERANCE_MS}",
         timing["difference_ms"], lambda: timing["difference_ms"] < TIMING_TOLERANCE_MS),
        ("search open by default", "200", reads["open_without_key"], lambda: reads["open_without_key"] == 200),
        ("search keyed by setting: none / wrong / read key / read key writing", "401 / 403 / 200 / 403",
         f"{reads['keyed_without_key']} / {reads['keyed_wrong_key']} / {reads['keyed_with_read_key']} / "
         f"{reads['read_key_writes']}",
         lambda: (reads["keyed_without_key"], reads["keyed_wrong_key"], reads["keyed_with_read_key"],
                  reads["read_key_writes"]) == (401, 403, 200, 403)),
        ("image route leaves the collection root: variants served (an image inside it: 200)", "0 (200)",
         f"{len(confined['served'])} ({confined['control_status']})",
         lambda: not confined["served"] and confined["control_status"] == 200),
        ("CORS headers granted to another origin", "0", len(figures["cors"]["allow_origin_headers"]),
         lambda: not figures["cors"]["allow_origin_headers"]),
        ("request ids found in the server log", f"{figures['request_ids']['sent']}/{figures['request_ids']['sent']}",
         f"{figures['request_ids']['found_in_log']}/{figures['request_ids']['sent']}",
         lambda: figures["request_ids"]["found_in_log"] == figures["request_ids"]["sent"]),
    ]
    return [Goal(name=name, target=target, value=value, met=check()) for name, target, value, check in checks]


def run_access(config: ReliabilityConfig) -> PartResult:
    started = time.monotonic()
    work = config.work / "access"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    root, symlinked_id, control_id = _symlink_root(config.index, work)
    figures: dict[str, Any] = {}
    args = ("--api-key", WRITE_KEY, "--auto-compact-ratio", "0")
    with serving(config.index, work / "open.log", args=args, log_level="info", ready=True) as open_server:
        _logger.info("access: write-key refusals, key timing, CORS, request ids")
        figures["write_refusals"] = write_refusals(open_server)
        figures["key_timing"] = key_timing(open_server)
        figures["cors"] = cors(open_server)
        figures["request_ids"] = request_ids_logged(open_server, work / "open.log")
        keyed_args = (*args, "--read-api-key", READ_KEY, "--collection-root", str(root))
        keyed_copy = copy_index(config.index, work / "keyed-index")  # the open server holds the index's writer lock
        with serving(keyed_copy, work / "keyed.log", args=keyed_args, ready=True) as keyed:
            _logger.info("access: keyed reads, image confinement")
            figures["keyed_reads"] = keyed_reads(open_server, keyed)
            # with the read key, so that the key is not what stops a traversal
            figures["image_confinement"] = image_confinement(
                lambda path: keyed.request("GET", path, headers={"Authorization": f"Bearer {READ_KEY}"}),
                symlinked_id, control_id)
    return PartResult(part="access", goals=_goals(figures), figures=figures, seconds=time.monotonic() - started)
