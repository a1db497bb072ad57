"""``python -m benchmarks scale-out``: what sharding and Ray cost and buy on this machine, for one dataset split.

  builds   the split indexed four ways, each from scratch with the backbone really encoding: one index in this
           process, 2 shards in this process (both with a fresh, empty feature cache), and 2 shards on a 2-node
           local Ray cluster (1 CPU a node) with 1 and with 2 encoding actors; total, encoding and shard-build
           seconds, encoding items per second (images + captions);
  search   text->image hybrid search (top 10, the index's default weights) through HTTP against
           ``python -m service`` over the single index, over the embedded-sharded collection (shards in the server
           process) and, with ``--engine ray --replicas 2``, over the Ray-built collection on Ray Serve:
           sequential p50/p90/p99, QPS with concurrent clients, the fan-out overhead as ratios to the single index,
           and the top-10 agreement of both sharded servers with the single index over every query;
  writes   images of another split (with their captions, under new ids) written one at a time over HTTP to the
           Ray-served collection and to the single index: writes per second encoding included, acknowledgement
           latency, and the time from the acknowledgement until an image->image dense search returns the write;
  memory   the single index built with several FAISS factories (Flat, SQfp16, SQ8) and dense-store precisions
           (float32, float16), from the shared feature cache:
           bytes per item of each leg and text->image R@1/5/10 of dense and hybrid search through the index
           (``benchmarks.search_bench.quality``, the benchmarks' one recall).

The Ray cluster runs in a loopback-only network namespace (entered first, before any thread starts) and is always
stopped, by PID. Every section is saved as soon as it is measured (``--resume`` measures only what is missing).
Ray and the index builders are imported inside the measuring functions, not at the top.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from benchmarks.sections import SectionStore
from core.progress import progress
from indexer.params import DEFAULT_CANDIDATE_K

_logger = logging.getLogger("benchmarks.scale_out")
NODES = 2  # the local Ray cluster: 2 nodes, 1 CPU each
SHARDS = 2
WARMUP = 5  # queries (and writes) sent before timing starts, per server
VISIBLE_WITHIN_S = 10.0  # a write not found by then counts as never found
READY_WITHIN_S = 900.0  # a server not ready by then fails the section
SETTLED_BELOW = 0.1  # the machine counts as quiet below this share of its CPUs busy ...
SETTLE_WITHIN_S = 180.0  # ... waited for at most this long before each server starts
TOP_K = 10
# build name -> its IndexBuildConfig fields
BUILDS: dict[str, dict[str, Any]] = {
    "single": {"shards": 1, "engine": "embedded", "workers": 1},
    "sharded": {"shards": SHARDS, "engine": "embedded", "workers": 1},
    "ray_1_worker": {"shards": SHARDS, "engine": "ray", "workers": 1},
    "ray_2_workers": {"shards": SHARDS, "engine": "ray", "workers": 2},
}
# served collection -> (the build it serves, whether on Ray Serve)
SERVED: dict[str, tuple[str, bool]] = {"single": ("single", False), "sharded": ("sharded", False),
                                       "ray": ("ray_2_workers", True)}
WRITTEN = ("ray", "single")  # the servers written to (each on its own copy of the build)
SERVED_NAMES = {"single": "single index, `python -m service`",
                "sharded": f"{SHARDS} shards in the server process, `python -m service`",
                "ray": f"{SHARDS} shards on Ray Serve, `python -m service --engine ray --replicas 2`"}


class ScaleOutConfig(BaseModel):
    """One scale-out benchmark; every field has a CLI flag of the same name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: Path = Field(description="Duet checkpoint directory (e.g. runs/grounded/best)")
    data: Path = Field(description="Karpathy-format dataset directory (e.g. ../shared/flickr8k)")
    out: Path = Field(description="report directory (report.json, README.md)")
    split: str = Field("test", description="the split every build indexes; its captions are the text queries")
    write_split: str = Field("val", description="the split whose images (with their captions) are written under "
                             "new ids")
    queries: int = Field(200, gt=0, description="captions of the split sent as text queries to each server")
    clients: int = Field(4, gt=0, description="concurrent clients of the QPS measurement (the same queries again)")
    writes: int = Field(40, gt=0, description="images written one at a time to each written server")
    work: Path = Field(Path("artifacts/scale-work"), description="where the indexes are built (kept)")
    candidate_k: int = Field(DEFAULT_CANDIDATE_K, gt=0, description="hybrid candidates per leg")
    batch_size: int = Field(64, gt=0, description="items encoded per batch, every build alike (a Ray batch is what "
                            "one encoding actor takes at a time)")
    factories: tuple[str, ...] = Field(("Flat", "SQfp16", "SQ8", "Flat+float16", "SQ8+float16"), min_length=1,
                                       description="FAISS factories of the memory section, each with '+float16' "
                                       "for a float16 dense store (the vectors the exact rescoring reads)")


# ----- statistics -----
def pcts(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p95/p99 as measured samples (no interpolation), mean, max and count."""
    values = np.asarray(samples, np.float64)
    if values.size == 0:
        return {"n": 0}
    p50, p90, p95, p99 = np.percentile(values, (50, 90, 95, 99), method="nearest")
    return {"p50": float(p50), "p90": float(p90), "p95": float(p95), "p99": float(p99), "mean": float(values.mean()),
            "max": float(values.max()), "n": int(values.size)}


def agreement(reference: Sequence[Sequence[Sequence[Any]]], other: Sequence[Sequence[Sequence[Any]]],
              k: int = TOP_K, tolerance: float = 1e-5) -> dict[str, Any]:
    """How far ``other``'s rankings (per query, [id, fused score] pairs) are ``reference``'s: the share of
    identical top-k id lists, the mean overlap@k, and how many differing lists have the same scores position by
    position (only tied items ordered or cut otherwise)."""
    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} reference rankings but {len(other)} to compare")
    identical, ties_only, overlaps = 0, 0, []
    for ours, theirs in zip(reference, other, strict=True):
        a, b = [str(hit[0]) for hit in ours[:k]], [str(hit[0]) for hit in theirs[:k]]
        overlaps.append(len(set(a) & set(b)) / max(1, min(k, len(a))))
        if a == b:
            identical += 1
        elif len(a) == len(b) and all(math.isclose(float(x[1]), float(y[1]), abs_tol=tolerance)
                                      for x, y in zip(ours[:k], theirs[:k], strict=True)):
            ties_only += 1
    queries = len(reference)
    return {"queries": queries, "identical": identical, "identical_share": identical / max(1, queries),
            f"mean_overlap_at_{k}": float(np.mean(overlaps)) if overlaps else None,
            "differing": queries - identical, "differing_ties_only": ties_only}


def fan_out(search: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Each sharded server against the single index: p50 sharded / single (sequential queries), QPS single /
    sharded (concurrent clients); above 1 means the sharded one is slower."""
    single = search["single"]
    return {name: {"p50_ratio": search[name]["sequential_ms"]["p50"] / single["sequential_ms"]["p50"],
                   "qps_ratio": single["load"]["qps"] / search[name]["load"]["qps"]}
            for name in ("sharded", "ray") if name in search}


def agreements(search: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    reference = search["single"]["rankings"]
    return {name: agreement(reference, search[name]["rankings"]) for name in ("sharded", "ray") if name in search}


def build_figures(spec: Mapping[str, Any], build: Mapping[str, Any], counts: Mapping[str, int],
                  wall_seconds: float) -> dict[str, Any]:
    """A build's figures from its manifest's record. One index: encoding is the backbone features plus the heads
    (its clock starts before the collection is listed and the model loaded); a sharded collection: the encode step
    up to its Parquet written (the Ray one: the Ray Data pass, actors' model loading included). The shard build is
    the rest: forward stores, FAISS and Lucene (one index: its one set of legs), then the checkpoint copy."""
    timings = build["timings"]
    if "features_seconds" in timings:
        encoding = timings["features_seconds"] + timings["encode_seconds"]
        shard_build = timings["total_seconds"] - encoding
    else:
        encoding, shard_build = timings["encode_seconds"], timings["shards_seconds"]
    items = sum(counts.values())
    return {**spec, "counts": dict(counts), "items": items, "total_seconds": wall_seconds,
            "encoding_seconds": encoding, "encoding_items_per_second": items / encoding,
            "shard_build_seconds": shard_build, "timings": dict(timings), "encode": build.get("encode")}


# ----- processes -----
def _cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            raw = Path(f"/proc/{pid}/stat").read_text()
            fields = raw[raw.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def idle_cpu_share(pids: Sequence[int], seconds: float = 5.0) -> float:
    """The share of this machine's CPUs that these (idle) processes used over ``seconds``."""
    before = _cpu_seconds(pids)
    time.sleep(seconds)
    return (_cpu_seconds(pids) - before) / seconds / (os.cpu_count() or 1)


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def settle(threshold: float = SETTLED_BELOW, window_s: float = 2.0, timeout_s: float = SETTLE_WITHIN_S) -> dict:
    """Wait until the whole machine is quiet (busy below ``threshold`` of its CPUs over ``window_s``), at most
    ``timeout_s``: whatever still runs (a Ray build's workers winding down, a server shutting down, other work on
    the machine) would fall on the next measurement. How long it took and how busy the machine last was."""
    started = time.perf_counter()
    while True:
        busy, total = _machine_ticks()
        time.sleep(window_s)
        busy_after, total_after = _machine_ticks()
        share = (busy_after - busy) / max(1, total_after - total)
        waited = time.perf_counter() - started
        if share < threshold or waited > timeout_s:
            return {"seconds": waited, "busy_share": share, "settled": share < threshold}


class Background:
    """The CPU the Ray cluster's processes use while an embedded server is measured (a share of the machine)."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids, self.started, self.cpu = list(pids), time.perf_counter(), _cpu_seconds(pids)

    def share(self) -> float:
        seconds = time.perf_counter() - self.started
        return (_cpu_seconds(self.pids) - self.cpu) / max(seconds, 1e-9) / (os.cpu_count() or 1)


class ServiceProcess:
    """``python -m service`` on 127.0.0.1, in its own session (stopped by its PID, gracefully first)."""

    def __init__(self, index: Path, log: Path, *, port: int, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:
        self.port, self.log = port, log
        self.not_ready_answers: list[str] = []
        command = [sys.executable, "-m", "service", "--index", str(index), "--host", "127.0.0.1", "--port",
                   str(self.port), "--log-level", "warning", "--auto-compact-ratio", "0", *args]
        with log.open("ab") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def wait_ready(self, timeout_s: float = READY_WITHIN_S) -> float:
        """Seconds from the start until ``/readyz`` answers 200 (the collection loaded, its shards deployed).

        Before that, Duet answers 503 "loading"; on Ray, Serve's proxy (which outlives each server) answers for the
        ingress while it is being deployed: 404 (no route yet) or 503 (the deployment not healthy yet, or the last
        server's being removed). Those plain-text answers are noted (``not_ready_answers``) and waited out; only
        Duet's own reason for not loading, the process's exit or the timeout fail."""
        started = time.perf_counter()
        client = Client(self.port)
        try:
            while time.perf_counter() - started < timeout_s:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.log_tail()}")
                try:
                    status, body = client.request("GET", "/readyz")
                except OSError:
                    client.close()
                    status, body = 0, b""
                if status == 200:
                    return time.perf_counter() - started
                reason = self._not_ready(status, body)
                if reason is not None:
                    raise RuntimeError(f"the server could not load the collection: {reason}\n{self.log_tail()}")
                time.sleep(0.5)
        finally:
            client.close()
        raise TimeoutError(f"the server was not ready within {timeout_s:.0f} s:\n{self.log_tail()}")

    def _not_ready(self, status: int, body: bytes) -> str | None:
        """None while the answer means "not yet"; else why the collection will not load."""
        try:
            reason = json.loads(body).get("reason") if body else None
        except ValueError:  # Serve's proxy, not Duet
            answer = f"HTTP {status}: {body[:200].decode(errors='replace')}"
            if answer not in self.not_ready_answers:
                _logger.info("not ready yet: %s", answer)
                self.not_ready_answers.append(answer)
            return None
        return None if reason is None or "loading" in str(reason) else str(reason)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=120)  # a Ray server removes its deployments on the way out
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


@contextlib.contextmanager
def serving(index: Path, log: Path, *, port: int, args: Sequence[str] = (),
            env: Mapping[str, str] | None = None) -> Iterator[tuple[ServiceProcess, float]]:
    """A ready server and the seconds it took to be ready; stopped on the way out, whatever happens."""
    server = ServiceProcess(index, log, port=port, args=args, env=env)
    try:
        yield server, server.wait_ready()
    finally:
        server.stop()


class Client:
    """One keep-alive HTTP/1.1 connection to the server (reopened when the server closed it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection: http.client.HTTPConnection | None = None

    def connect(self) -> None:
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            self.connection.connect()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        for attempt in range(2):
            self.connect()
            assert self.connection is not None
            try:
                self.connection.request(method, path, body=body, headers=dict(headers or {}))
                response = self.connection.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()  # an idle keep-alive connection the server closed: once more on a new one
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> Any:
        status, data = self.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
        if status >= 300:
            raise RuntimeError(f"{method} {path} answered {status}: {data[:500]!r}")
        return json.loads(data)


def multipart(fields: Mapping[str, str | list[str]],
              files: Mapping[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type (a field given a list: a part per value)."""
    boundary = "duet-scale-out-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, given in fields.items() for value in (given if isinstance(given, list) else [given])]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
              f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
              for name, (filename, data, content_type) in files.items()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# ----- measuring through HTTP -----
def search_body(text: str, candidate_k: int) -> bytes:
    return json.dumps({"text": text, "side": "images", "mode": "hybrid", "top_k": TOP_K,
                       "candidate_k": candidate_k}).encode()


def sequential(port: int, bodies: Sequence[bytes], desc: str) -> dict[str, Any]:
    """Each query once, one at a time, after ``WARMUP`` untimed ones: client latency, the server's own times,
    and every ranking ([id, fused score] per hit)."""
    client = Client(port)
    try:
        for body in bodies[:WARMUP]:
            client.json("POST", "/v1/search", body)
        latencies, server_total, server_encode, rankings = [], [], [], []
        for body in progress(bodies, total=len(bodies), desc=desc):
            started = time.perf_counter()
            answer = client.json("POST", "/v1/search", body)
            latencies.append((time.perf_counter() - started) * 1000)
            server_total.append(answer["timings_ms"]["total"])
            server_encode.append(answer["timings_ms"]["encode"])
            rankings.append([[hit["id"], hit["scores"]["fused"]] for hit in answer["hits"]])
    finally:
        client.close()
    return {"sequential_ms": pcts(latencies), "server_total_ms": pcts(server_total),
            "server_encode_ms": pcts(server_encode), "rankings": rankings}


class _Load:
    """``clients`` threads, each on its own connection, taking the next query until none is left."""

    def __init__(self, port: int, bodies: Sequence[bytes], clients: int) -> None:
        self.port, self.bodies = port, bodies
        self.next, self.lock = 0, threading.Lock()
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.barrier = threading.Barrier(clients + 1)
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _take(self) -> int | None:
        with self.lock:
            if self.next >= len(self.bodies):
                return None
            self.next += 1
            return self.next - 1

    def _client(self) -> None:
        client = Client(self.port)
        try:
            try:
                client.connect()
            except OSError as e:  # counted by the requests that follow; the barrier must be reached regardless
                self.failures.append(f"connect: {e}")
            self.barrier.wait()
            while (n := self._take()) is not None:
                started = time.perf_counter()
                try:
                    client.json("POST", "/v1/search", self.bodies[n])
                    self.latencies.append((time.perf_counter() - started) * 1000)
                except Exception as e:  # noqa: BLE001 - a failed query is what this load counts
                    self.failures.append(f"{type(e).__name__}: {e}"[:300])
                    client.close()
        finally:
            client.close()

    def run(self) -> dict[str, Any]:
        for thread in self.threads:
            thread.start()
        self.barrier.wait()
        started = time.perf_counter()
        for thread in self.threads:
            thread.join()
        seconds = time.perf_counter() - started
        return {"clients": len(self.threads), "queries": len(self.bodies), "seconds": seconds,
                "qps": len(self.latencies) / seconds, "latency_ms": pcts(self.latencies),
                "failures": len(self.failures), "first_failures": self.failures[:3]}


def first_hit(client: Client, query: tuple[bytes, str], item_id: str, acked: float) -> tuple[float, list[float]]:
    """(ms from the acknowledgement until an image->image dense search's top hit is ``item_id`` (inf: never),
    each poll's own ms)."""
    body, content_type = query
    polls: list[float] = []
    while time.perf_counter() - acked < VISIBLE_WITHIN_S:
        started = time.perf_counter()
        status, data = client.request("POST", "/v1/search", body, {"Content-Type": content_type})
        polls.append((time.perf_counter() - started) * 1000)
        hits = json.loads(data).get("hits", []) if status == 200 else []
        if hits and hits[0]["id"] == item_id:
            return (time.perf_counter() - acked) * 1000, polls
    return math.inf, polls


def write_figures(port: int, images: Sequence[tuple[str, bytes, list[str]]], key: str,
                  desc: str) -> dict[str, Any]:
    """Each image POSTed with its captions, one at a time; after each acknowledgement, image->image dense searches
    (the same file, top 1) until the write is the top hit. The first ``WARMUP`` writes are not counted."""
    client = Client(port)
    auth = {"Authorization": f"Bearer {key}"}
    ack, visible, polls, poll_ms, items = [], [], [], [], []
    try:
        for n, (item_id, data, captions) in enumerate(progress(images, total=len(images), desc=desc)):
            body, content_type = multipart({"id": item_id, "captions": list(captions)},
                                           {"image": (f"{item_id}.jpg", data, "image/jpeg")})
            query = multipart({"side": "images", "mode": "dense", "top_k": "1"},
                              {"image": ("query.jpg", data, "image/jpeg")})
            started = time.perf_counter()
            status, reply = client.request("POST", "/v1/items", body, {"Content-Type": content_type, **auth})
            acked = time.perf_counter()
            if status not in (200, 201):
                raise RuntimeError(f"the write of {item_id} answered {status}: {reply[:500]!r}")
            delay, tries = first_hit(client, query, item_id, acked)
            if n < WARMUP:
                continue
            ack.append((acked - started) * 1000)
            visible.append(delay)
            polls.append(len(tries))
            poll_ms += tries
            items.append(1 + len(captions))
    finally:
        client.close()
    found = [d for d in visible if math.isfinite(d)]
    seconds = sum(ack) / 1000
    return {"writes": len(ack), "items_per_write": float(np.mean(items)), "writes_per_second": len(ack) / seconds,
            "items_per_second": sum(items) / seconds, "ack_ms": pcts(ack), "visible_ms": pcts(found),
            "never_found": len(visible) - len(found), "polls": {"mean": float(np.mean(polls)), "max": max(polls)},
            "found_by_first_poll": sum(p == 1 for p in polls) / len(polls), "poll_ms": pcts(poll_ms),
            "search": "image->image, dense, top 1, the written file as the query (multipart)"}


# ----- the benchmark -----
def _built(path: Path) -> bool:
    """Whether ``path`` holds a published index or sharded collection (a resumed build section needs it)."""
    from indexer.sharding import is_sharded, read_layout
    from indexer.store import IndexUnavailableError, read_manifest

    try:
        if is_sharded(path):
            read_layout(path)
        else:
            read_manifest(path)
    except (IndexUnavailableError, OSError, ValueError):
        return False
    return True


def _counts(manifest: Any) -> dict[str, int]:
    if hasattr(manifest, "shards"):  # a CollectionManifest
        counts: dict[str, int] = {}
        for shard in manifest.shards:
            for side, count in shard.counts.items():
                counts[side] = counts.get(side, 0) + count
        return counts
    return {side: s.count for side, s in manifest.sides.items()}


def ray_build_in_child(config: Any, result: Path) -> dict[str, Any]:
    """``build_collection_on_ray(config)`` timed in a child process, which is the Ray driver (this process never
    is): ``ray.init`` replaces the process's SIGSEGV handler and ``ray.shutdown`` resets it to the default, so a JVM
    already running in the driver (Lucene, through pyjnius: the embedded builds and the memory section here) loses
    the handler it relies on, and the process dies of a segmentation fault at the JVM's next implicit check. The
    child connects first (its own figure), then times the build call exactly as this process times the others."""
    result.unlink(missing_ok=True)
    command = [sys.executable, "-c", "import sys; from benchmarks.scale_bench import ray_build_child; "
               "sys.exit(ray_build_child(sys.argv[1], sys.argv[2]))", config.model_dump_json(), str(result)]
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    done: dict[str, Any] = json.loads(result.read_text())
    result.unlink()
    return done


def ray_build_child(config_json: str, result: str) -> int:
    """The child of ``ray_build_in_child``: connect to the cluster, build, write the figures to ``result``."""
    import ray

    from core.atomic import write_text_atomic
    from core.progress import setup_logging
    from indexer.build import IndexBuildConfig
    from indexer.ray_build import build_collection_on_ray
    from indexer.ray_cluster import enter_loopback_namespace

    enter_loopback_namespace()  # inherited from the benchmark (a no-op then); never a driver outside loopback
    setup_logging("INFO")
    config = IndexBuildConfig.model_validate_json(config_json)
    started = time.perf_counter()
    ray.init(address=config.address, log_to_driver=False, logging_level=logging.WARNING)
    connected = time.perf_counter() - started
    try:
        started = time.perf_counter()
        manifest = build_collection_on_ray(config)
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    write_text_atomic(result, json.dumps({"seconds": seconds, "build": manifest.build, "counts": _counts(manifest),
                                          "driver_connect_seconds": connected}))
    return 0


class ScaleOutBench:
    def __init__(self, config: ScaleOutConfig, address: str, sections: SectionStore,
                 cluster_pids: Callable[[], list[int]]) -> None:
        self.config, self.address, self.sections, self.cluster_pids = config, address, sections, cluster_pids
        self.work = config.work
        self.key = os.urandom(16).hex()  # the write API's key, for this run's servers only
        self.serve_port: int | None = None

    def index_dir(self, build: str) -> Path:
        return self.work / build

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    def build_config(self, output: Path, **fields: Any) -> Any:
        from indexer.build import IndexBuildConfig

        c = self.config
        return IndexBuildConfig(checkpoint=c.checkpoint, output=output, dataset=c.data, splits=(c.split,),
                                batch_size=c.batch_size, **fields)

    # -- builds --
    def measure_build(self, name: str) -> dict[str, Any]:
        from indexer.build import build_index
        from indexer.sharding import build_collection_embedded

        spec = BUILDS[name]
        output, cache = self.index_dir(name), self.work / f"cache-{name}"
        for path in (output, cache):  # from scratch: no published version to replace, no cached features
            shutil.rmtree(path, ignore_errors=True)
        on_ray = spec["engine"] == "ray"
        config = self.build_config(output, cache_root=cache, address=self.address if on_ray else None, **spec)
        if on_ray:
            done = ray_build_in_child(config, self.work / f"{name}.result.json")
        else:
            started = time.perf_counter()
            manifest = build_collection_embedded(config) if spec["shards"] > 1 else build_index(config)
            done = {"seconds": time.perf_counter() - started, "build": manifest.build, "counts": _counts(manifest),
                    "driver_connect_seconds": None}
        shutil.rmtree(cache, ignore_errors=True)
        return {**build_figures(spec, done["build"], done["counts"], done["seconds"]),
                "driver_connect_seconds": done["driver_connect_seconds"]}

    # -- search --
    def texts(self) -> list[str]:
        from core.data import load_karpathy

        captions = [c.text for r in load_karpathy(self.config.data).split(self.config.split) for c in r.captions]
        return captions[::max(1, len(captions) // self.config.queries)][:self.config.queries]

    def serve_args(self, on_ray: bool) -> tuple[str, ...]:
        return ("--engine", "ray", "--address", self.address, "--replicas", "2") if on_ray else ()

    def port(self, on_ray: bool) -> int:
        """A free port; on Ray, one for the whole run: Serve's HTTP proxy (started by the first Ray server, on its
        port) outlives each server, and a later ``serve.start`` keeps it where it is."""
        from benchmarks.http_bench import free_port

        if not on_ray:
            return free_port()
        if self.serve_port is None:
            self.serve_port = free_port()
        return self.serve_port

    def measure_search(self, name: str) -> dict[str, Any]:
        build, on_ray = SERVED[name]
        bodies = [search_body(text, self.config.candidate_k) for text in self.texts()]
        with self.served(f"search-{name}", self.index_dir(build), on_ray) as (port, server):
            measured = sequential(port, bodies, f"search {name}: sequential")
            _logger.info("search %s: %d queries from %d clients", name, len(bodies), self.config.clients)
            load = _Load(port, bodies, self.config.clients).run()
        return {"serves": build, "on_ray": on_ray, "server": server, "queries": len(bodies), **measured,
                "load": load}

    @contextlib.contextmanager
    def served(self, name: str, index: Path, on_ray: bool,
               env: Mapping[str, str] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """A ready server of ``index`` (its port), started once the machine is quiet, and its facts (filled in on
        the way out): seconds to ready, the proxy's answers meanwhile (Ray), and for an embedded server the share
        of the machine the idle Ray cluster took while it was measured."""
        facts: dict[str, Any] = {"settle": settle()}
        with serving(index, self.log(name), port=self.port(on_ray), args=self.serve_args(on_ray),
                     env=env) as (server, ready):
            background = None if on_ray else Background(self.cluster_pids())
            yield server.port, facts
            facts |= {"ready_seconds": ready, "not_ready_answers": server.not_ready_answers,
                      "cluster_cpu_share": None if background is None else background.share()}

    # -- writes --
    def write_images(self) -> list[tuple[str, bytes, list[str]]]:
        """Images of the write split with their captions, read beforehand, under ids no build holds."""
        from core.data import load_karpathy

        dataset = load_karpathy(self.config.data)
        records = dataset.split(self.config.write_split)[:WARMUP + self.config.writes]
        return [(f"scale-write-{n}-{Path(r.relative_path).stem}", dataset.image_path(r).read_bytes(),
                 [c.text for c in r.captions]) for n, r in enumerate(records)]

    def measure_writes(self, name: str) -> dict[str, Any]:
        build, on_ray = SERVED[name]
        copy = self.work / f"writes-{name}"  # the build itself stays as built (resumed sections serve it)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(self.index_dir(build), copy, symlinks=True)  # keeps the relative ``current`` links
        try:
            with self.served(f"writes-{name}", copy, on_ray, env={"DUET_API_KEY": self.key}) as (port, server):
                figures = write_figures(port, self.write_images(), self.key, f"writes {name}")
        finally:
            shutil.rmtree(copy, ignore_errors=True)
        return {"serves": f"a copy of {build}", "on_ray": on_ray, "server": server, **figures}

    # -- memory --
    def measure_memory(self, factory: str) -> dict[str, Any]:
        from benchmarks.search_bench import quality, sizes
        from indexer.build import build_index
        from indexer.search import SearchEngine

        output = self.index_dir(f"memory-{factory}")
        shutil.rmtree(output, ignore_errors=True)
        faiss_factory, _, store = factory.partition("+")
        manifest = build_index(self.build_config(output, faiss_factory=faiss_factory,  # the shared feature cache
                                                 dense_store=store or "float32"))
        engine = SearchEngine.open(output)
        try:
            measured = {"sizes": sizes(engine), "quality": quality(engine, candidate_k=self.config.candidate_k)}
        finally:
            engine.close()
        return {"factory": factory, "build_seconds": manifest.build["timings"]["total_seconds"], **measured}

    def still_built(self, name: str) -> Callable[[Any], bool]:
        """A saved build section is reused only while its index is there (the later sections serve it)."""
        return lambda _saved: _built(self.index_dir(name))

    def measure(self) -> dict[str, Any]:
        section = self.sections.section
        builds = {name: section(f"build-{name}", partial(self.measure_build, name), reusable=self.still_built(name))
                  for name in BUILDS}
        search = {name: section(f"search-{name}", partial(self.measure_search, name)) for name in SERVED}
        writes = {name: section(f"writes-{name}", partial(self.measure_writes, name)) for name in WRITTEN}
        memory = {factory: section(f"memory-{factory}", partial(self.measure_memory, factory))
                  for factory in self.config.factories}
        return {"builds": builds, "fan_out": fan_out(search), "agreement": agreements(search),
                "search": {name: {k: v for k, v in s.items() if k != "rankings"} for name, s in search.items()},
                "writes": writes, "memory": memory}


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def ray_cluster(logs: Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A started 2-node LocalRayCluster (1 CPU a node) and its facts; stopped by PID on the way out, also on
    Ctrl-C or SIGTERM. When something fails, the session's logs (Serve's among them) are kept under ``logs``."""
    from indexer.ray_cluster import LocalRayCluster

    temp_dir = Path(tempfile.mkdtemp(prefix="duet-scale-", dir="/tmp"))  # short: Ray's socket paths live under it
    cluster = LocalRayCluster(temp_dir=temp_dir, nodes=NODES, cpus_per_node=1)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        started = time.perf_counter()
        cluster.start()
        facts = {"nodes": NODES, "cpus_per_node": 1, "start_seconds": time.perf_counter() - started,
                 "processes": len(cluster.pids())}
        facts["idle_cpu_share"] = idle_cpu_share(cluster.pids())
        _logger.info("Ray cluster up at %s in %.1f s (%d processes)", cluster.address, facts["start_seconds"],
                     facts["processes"])
        yield cluster, facts
    except BaseException:
        kept = logs / time.strftime("ray-session-%Y%m%d-%H%M%S")
        with contextlib.suppress(OSError):
            shutil.copytree(temp_dir / "session_latest" / "logs", kept)
            _logger.error("the Ray session's logs are in %s", kept)
        raise
    finally:
        try:
            cluster.stop()
        finally:
            signal.signal(signal.SIGTERM, previous)
            shutil.rmtree(temp_dir, ignore_errors=True)


def _absolute(config: ScaleOutConfig) -> ScaleOutConfig:
    """Every path absolute: Ray's workers and the servers resolve them in their own working directories."""
    return config.model_copy(update={name: getattr(config, name).absolute()
                                     for name in ("checkpoint", "data", "out", "work")})


def run_scale_out(config: ScaleOutConfig, *, resume: bool = False) -> dict[str, Any]:
    from benchmarks.machine import machine
    from core.checkpoint import read_manifest
    from indexer.ray_cluster import enter_loopback_namespace

    enter_loopback_namespace()  # a no-op when the CLI already did, first thing
    started = time.perf_counter()
    given, config = config, _absolute(config)
    checkpoint = read_manifest(config.checkpoint)
    sections = SectionStore(config.out, {"content_hash": checkpoint["content_hash"],
                                         "config": json.loads(given.model_dump_json(exclude={"out", "work"}))})
    if resume:
        sections.resume()
    (config.work / "logs").mkdir(parents=True, exist_ok=True)
    with ray_cluster(config.work / "logs") as (cluster, facts):
        bench = ScaleOutBench(config, cluster.address, sections, cluster.pids)
        report = bench.measure()
    import torch

    report |= {"config": json.loads(given.model_dump_json()), "cluster": facts,
               "machine": {**machine(), "torch_threads": torch.get_num_threads()},
               "checkpoint": {"path": str(given.checkpoint), "content_hash": checkpoint["content_hash"],
                              "method": checkpoint.get("metadata", {}).get("method")},
               "collection": {"split": given.split, **report["builds"]["single"]["counts"]},
               "seconds": time.perf_counter() - started, "sections": sections.log}
    sections.finish()
    return report


# ----- the README -----
def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


def _ms(stats: Mapping[str, float] | None, keys: tuple[str, ...] = ("p50", "p90", "p99"), digits: int = 1) -> str:
    if not stats or not stats.get("n"):
        return "n/a"
    return " / ".join(_f(stats[k], digits) for k in keys)


def _build_rows(builds: Mapping[str, Any]) -> list[str]:
    rows = ["| build | engine | shards | encoding workers | total s | encoding s | encoding items/s | "
            "shard build s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, b in builds.items():
        workers = str(b["workers"]) if b["engine"] == "ray" else "this process"
        rows.append(f"| {name} | {b['engine']} | {b['shards']} | {workers} | {_f(b['total_seconds'])} | "
                    f"{_f(b['encoding_seconds'])} | {_f(b['encoding_items_per_second'])} | "
                    f"{_f(b['shard_build_seconds'])} |")
    return rows


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _search_rows(search: Mapping[str, Any]) -> list[str]:
    rows = ["| served | ready s | sequential p50 / p90 / p99 ms | server-side p50 ms (encode) | QPS | clients | "
            "latency under load p50 / p90 / p99 ms | failures | idle Ray cluster's CPU meanwhile |",
            "|---|---:|---|---|---:|---:|---|---:|---:|"]
    for name, s in search.items():
        load, server = s["load"], s["server"]
        background = "(it serves)" if s.get("on_ray") else _share(server.get("cluster_cpu_share"))
        rows.append(f"| {SERVED_NAMES.get(name, name)} | {_f(server['ready_seconds'])} | "
                    f"{_ms(s['sequential_ms'])} | {_f(s['server_total_ms']['p50'])} "
                    f"({_f(s['server_encode_ms']['p50'])}) | {_f(load['qps'])} | {load['clients']} | "
                    f"{_ms(load['latency_ms'])} | {load['failures']} | {background} |")
    return rows


def _fan_out_rows(search: Mapping[str, Any], agreement_of: Mapping[str, Any]) -> list[str]:
    rows = ["| sharded server | p50 sharded / single | QPS single / sharded | identical top-10 lists | "
            "mean overlap@10 | differing lists (of which ties only) |", "|---|---:|---:|---:|---:|---:|"]
    for name, ratio in fan_out(search).items():
        a = agreement_of.get(name, {})
        share = f"{a['identical']} / {a['queries']} ({_f(100 * a['identical_share'])}%)" if a else "n/a"
        overlap = a.get(f"mean_overlap_at_{TOP_K}")
        rows.append(f"| {name} | {ratio['p50_ratio']:.2f} | {ratio['qps_ratio']:.2f} | {share} | "
                    f"{_f(overlap, 4)} | {a.get('differing', 'n/a')} ({a.get('differing_ties_only', 'n/a')}) |")
    return rows


def _write_rows(writes: Mapping[str, Any]) -> list[str]:
    rows = ["| written | writes | items per write | writes/s | items/s | ack p50 / p99 ms | "
            "ack -> visible p50 / p99 ms | polls mean / max | found by the first poll | one poll p50 ms | "
            "never found |", "|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|"]
    for name, w in writes.items():
        rows.append(f"| {SERVED_NAMES.get(name, name)} | {w['writes']} | {_f(w['items_per_write'])} | "
                    f"{_f(w['writes_per_second'], 2)} | {_f(w['items_per_second'])} | "
                    f"{_ms(w['ack_ms'], ('p50', 'p99'))} | {_ms(w['visible_ms'], ('p50', 'p99'))} | "
                    f"{_f(w['polls']['mean'], 2)} / {w['polls']['max']} | {_f(100 * w['found_by_first_poll'])}% | "
                    f"{_f(w['poll_ms'].get('p50'))} | {w['never_found']} |")
    return rows


BYTE_LEGS = ("dense_faiss", "dense_store", "sparse_lucene", "sparse_store")


def _memory_rows(memory: Mapping[str, Any]) -> list[str]:
    rows = ["| FAISS factory (+ dense store) | side | items | " + " | ".join(f"{leg} B/item" for leg in BYTE_LEGS)
            + " | all legs B/item |", "|---|---|---:|" + "---:|" * (len(BYTE_LEGS) + 1)]
    for factory, m in memory.items():
        for side, s in m["sizes"].items():
            per = s["bytes_per_item"]
            rows.append(f"| {factory} | {side} | {s['count']:,} | "
                        + " | ".join(_f(per[leg]) for leg in BYTE_LEGS) + f" | {_f(sum(per.values()))} |")
    return rows


def _recall_rows(memory: Mapping[str, Any]) -> list[str]:
    rows = ["| FAISS factory (+ dense store) | dense R@1 / R@5 / R@10 | hybrid R@1 / R@5 / R@10 |", "|---|---|---|"]
    for factory, m in memory.items():
        t2i = m["quality"]["t2i"]
        cells = [" / ".join(f"{t2i[mode][f'R@{k}']:.1f}" for k in (1, 5, 10)) for mode in ("dense", "hybrid")]
        rows.append(f"| {factory} | {cells[0]} | {cells[1]} |")
    return rows


def observations(report: Mapping[str, Any]) -> list[str]:
    builds, search, writes = report["builds"], report["search"], report["writes"]
    out = []
    single = builds["single"]["encoding_items_per_second"]
    for name in ("sharded", "ray_1_worker", "ray_2_workers"):
        if name in builds:
            b = builds[name]
            out.append(f"{name}: encoding {b['encoding_items_per_second'] / single:.2f}x the single build's items/s, "
                       f"total {b['total_seconds'] / builds['single']['total_seconds']:.2f}x its seconds.")
    for name, ratio in fan_out(search).items():
        s = search[name]
        out.append(f"{name}: p50 {ratio['p50_ratio']:.2f}x the single index's ({_f(s['sequential_ms']['p50'])} vs "
                   f"{_f(search['single']['sequential_ms']['p50'])} ms); the single index serves "
                   f"{ratio['qps_ratio']:.2f}x its QPS with {s['load']['clients']} clients.")
    for name, a in report.get("agreement", {}).items():
        line = f"{name}: {a['identical']} of {a['queries']} top-10 lists identical to the single index's"
        if a["differing"]:
            line += f"; of the {a['differing']} that differ, {a['differing_ties_only']} only among tied scores"
        out.append(line + ".")
    if "ray" in writes and "single" in writes:
        ray, one = writes["ray"], writes["single"]
        out.append(f"Writes: {_f(ray['writes_per_second'], 2)}/s on Ray Serve vs {_f(one['writes_per_second'], 2)}/s "
                   f"on the single index; a write is visible {_ms(ray['visible_ms'], ('p50',))} ms (p50) after its "
                   f"acknowledgement on Ray, {_ms(one['visible_ms'], ('p50',))} ms on the single index.")
    return out


def _driver_note(builds: Mapping[str, Any]) -> str:
    seconds = [b["driver_connect_seconds"] for b in builds.values() if b.get("driver_connect_seconds")]
    return (f" This process connected to it as the Ray builds' driver in {_f(seconds[0])} s, before their clocks "
            "started." if seconds else "")


def render_scale_out(report: Mapping[str, Any]) -> str:
    config, machine, cluster = report["config"], report["machine"], report["cluster"]
    collection = report["collection"]
    lines = [
        "# Scale-out: sharded and Ray builds, sharded serving, writes, bytes per item", "",
        "Generated by `python -m benchmarks scale-out` from `report.json` (every number, with the sample counts, "
        "is there).", "",
        f"Machine: {machine.get('cpu') or machine.get('processor')}, {machine['cpus']} CPUs, torch "
        f"{machine.get('torch')} ({machine.get('torch_threads')} threads in this process); every server, client and "
        f"Ray node shares these cores, so all timings are of one small shared machine. Collection: the "
        f"`{collection['split']}` split, {collection.get('images', 0):,} images and {collection.get('texts', 0):,} "
        f"captions; checkpoint {report['checkpoint']['method']} ({report['checkpoint']['content_hash'][:12]}). "
        f"Run: {report['seconds']:.0f} s" + (f", `{report['command']}`." if "command" in report else "."), "",
        f"Ray: a local cluster of {cluster['nodes']} nodes with {cluster['cpus_per_node']} CPU each in a "
        f"loopback-only network namespace, started in {_f(cluster['start_seconds'])} s (not part of any figure "
        f"below); idle, its {cluster['processes']} processes used {_f(100 * cluster['idle_cpu_share'])}% of the "
        f"machine's CPUs. It ran throughout, under every measurement.{_driver_note(report['builds'])}", "",
        "## Builds (the same split, encoding included)", "", *_build_rows(report["builds"]), "",
        f"Embedded builds start from an empty feature cache, so the backbone encodes every image and caption. "
        f"Encoding items/s count images + captions. One index: encoding is the backbone features plus the heads "
        f"(its clock includes listing the collection and loading the model); sharded: the encode step until its "
        f"Parquet is written (Ray: the Ray Data pass with its actors, each loading the model, 1 CPU each). The "
        f"shard build is the rest of the publication: forward stores, FAISS and Lucene ({SHARDS} shards: one after "
        f"the other in this process, one Ray task each on Ray). Total: the whole build call (a Ray build's call is "
        f"timed in a child process that is the Ray driver, connected before its clock starts). Batch size "
        f"{config['batch_size']} for every build.", "",
        "## Search through HTTP (text->image, hybrid, top 10)", "", *_search_rows(report["search"]), "",
        f"{config['queries']} captions of the split as queries, after {WARMUP} untimed ones; sequential: one "
        f"keep-alive connection, one query at a time; QPS: the same queries again from {config['clients']} "
        f"concurrent clients (a connection each). candidate_k {config['candidate_k']}, the index's default "
        f"weights. Ready: seconds from the server's start to its first 200 from `/readyz`. Each server (here and "
        f"below) starts once the machine is quiet ({100 * SETTLED_BELOW:.0f}% of its CPUs busy at most, waited for "
        f"up to {SETTLE_WITHIN_S:.0f} s), and is stopped before the next one starts.", "",
        "### Fan-out overhead and agreement with the single index", "",
        *_fan_out_rows(report["search"], report.get("agreement", {})), "",
        "Overlap@10: the share of the single index's top 10 that a sharded server's top 10 holds, per query. A "
        "differing list counts as ties only when its fused scores equal the single index's position by position.",
        "", "## Writes through HTTP", "", *_write_rows(report["writes"]), "",
        f"Images of the `{config['write_split']}` split with their captions, under new ids, POSTed one at a time "
        f"(multipart, `Authorization: Bearer`), after {WARMUP} uncounted ones; writes/s over the summed "
        f"acknowledgement times (encoding included). Visible: from the acknowledgement to the end of the first "
        f"image->image dense search (the same file, top 1) whose top hit is the write; polls back to back. Each "
        f"server wrote a copy of its build; no compaction ran (`--auto-compact-ratio 0`).", "",
        "## Bytes per item and recall by FAISS factory (the single index)", "", *_memory_rows(report["memory"]), "",
        "Text->image recall through the index (every caption of the split as a query, "
        "`benchmarks.search_bench.quality`), in %:", "", *_recall_rows(report["memory"]), "",
        "## Observations (from the numbers above)", "", *[f"- {line}" for line in observations(report)], ""]
    return "\n".join(lines)


__all__ = ["ScaleOutConfig", "agreement", "fan_out", "render_scale_out", "run_scale_out"]
