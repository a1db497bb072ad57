"""Fault injection: SIGKILL an index build at random moments of its run, SIGKILL the service during each kind of
write (and ``python -m indexer add|compact`` mid-run), and fill the disk under a build. After each fault what was
published still verifies and answers as before, every acknowledged write is there, and nothing is there by half.

Three parts, each bounded by the budget (``build_kills``, ``write_kills``), all on 127.0.0.1 and in the scratch
directory ``<work>/faults`` (emptied first):

  builds   one uninterrupted build (its duration, and a published version), then builds killed at uniform random
           moments of that duration; after each: the live version verifies and answers the fixed queries as the
           first build did; then one more build completes, verifies, and a real service over it answers alike
  writes   per round, a copy of the index served with an API key: add an image, add a text, replace a published
           image, delete one, compact, each with the server killed after the acknowledgement or mid-request (during
           the compaction for compact), then restarted; once, the same with the CLI killed during add and compact
  disk     a build into a tmpfs too small for it (in a private mount namespace, so no mount outlives it) over a
           published index there: the build fails with a message, the published index stays live and verifies
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from benchmarks.reliability.config import ReliabilityConfig
from benchmarks.reliability.copies import copy_index
from benchmarks.reliability.figures import Goal, PartResult
from benchmarks.service_process import ROOT, Reply, Server, serving

_logger = logging.getLogger("benchmarks")
KEY = "reliability-faults-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# no background compaction: the one compaction a kill aims at is the only one running
SERVER_ENV = {"DUET_AUTO_COMPACT_RATIO": "0"}
TEXT_QUERIES = ("a dog runs on the grass", "a red square on blue")
MODES = ("hybrid", "dense")
TOP_K, CANDIDATE_K = 20, 200
TOLERANCE = 1e-4  # relative: the same vectors scored by another process or version
OPS = ("add_image", "add_text", "replace", "delete", "compact")
TRACEBACK = "Traceback (most recent call last)"

Ranking = list[tuple[str, float]]
Results = dict[str, Ranking]  # "query | side | mode" -> ranked (id, fused score)


class FaultCheckError(RuntimeError):
    """A check could not even be made (a request failed, a process did not start)."""


# ----- comparing results -----
def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(1.0, abs(a), abs(b))


def ranking_differences(before: Ranking, after: Ranking, touched: frozenset[str] = frozenset()) -> list[str]:
    """How ``after`` differs from ``before`` once the items a write touched are left out of both: the same scores
    rank by rank and the same ids, up to ties at the cut-off (an added item may push one out, a deleted one let
    one in)."""
    old = [hit for hit in before if hit[0] not in touched]
    new = [hit for hit in after if hit[0] not in touched]
    pushed = sum(1 for hit in after if hit[0] in touched)
    problems = [f"{len(old) - len(new)} hits fewer"] if len(new) < len(old) - pushed else []
    n = min(len(old), len(new))
    problems += [f"rank {r}: {old[r][0]} {old[r][1]:.6f} -> {new[r][0]} {new[r][1]:.6f}" for r in range(n)
                 if not _close(old[r][1], new[r][1])][:3]
    if n:
        floor = old[n - 1][1]  # ids tied with the last kept hit may trade places across the cut-off
        above_old = sorted(i for i, s in old[:n] if not _close(s, floor))
        above_new = sorted(i for i, s in new[:n] if not _close(s, floor))
        if above_old != above_new:
            problems.append(f"other ids: {sorted(set(above_old) ^ set(above_new))[:5]}")
    return problems


def result_differences(before: Results, after: Results, touched: Iterable[str] = ()) -> list[str]:
    """Every difference between two snapshots of the fixed queries (empty: the same results)."""
    frozen = frozenset(touched)
    problems: list[str] = []
    for key in sorted(before.keys() | after.keys()):
        if key not in before or key not in after:
            problems.append(f"{key}: only {'before' if key in before else 'after'}")
            continue
        problems += [f"{key}: {p}" for p in ranking_differences(before[key], after[key], frozen)]
    return problems


def ids_in(results: Results) -> set[str]:
    return {item_id for ranking in results.values() for item_id, _ in ranking}


# ----- item states -----
@dataclass(frozen=True)
class ItemState:
    """An item as a reader sees it whole: present or not, with its content (an image's captions, a text's text)."""

    present: bool
    content: tuple[str, ...] = ()


ABSENT = ItemState(False)


def observed_state(kind: str, item: dict[str, Any] | None, caption_texts: tuple[str | None, ...]) -> ItemState | None:
    """The whole state an image or text item was found in, or None when it is half there: an image whose caption
    items are not its captions, or captions without their image. ``caption_texts``: the items ``<id>#0..`` read."""
    if kind == "text":
        return ItemState(True, (str(item["text"]),)) if item is not None else ABSENT
    if item is None:
        return ABSENT if all(text is None for text in caption_texts) else None
    captions = tuple(str(c) for c in item.get("captions", []))
    expected = tuple(captions[n] if n < len(captions) else None for n in range(len(caption_texts)))
    return ItemState(True, captions) if caption_texts == expected else None


def judge(state: ItemState | None, *, acked: bool, before: ItemState, after: ItemState) -> str:
    """"ok", "lost" (acknowledged, yet found as before) or "half" (neither the state before nor the one after)."""
    if state is None:
        return "half"
    if state == after or (not acked and state == before):
        return "ok"
    return "lost" if state == before else "half"


# ----- processes and the index on disk -----
def _child_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


@dataclass(frozen=True)
class Run:
    seconds: float
    returncode: int | None  # None: killed (or timed out) while running
    killed: bool


def run_process(command: list[str], log: Path, *, stdout: Path | None = None, kill_at: float | None = None,
                timeout: float = 3600) -> Run:
    """Run ``command`` in its own process group (its children die with it); SIGKILL the group at ``kill_at``
    seconds if it still runs then."""
    started = time.monotonic()
    with log.open("a") as err, (stdout or log).open("a") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=_child_env(), stdout=out, stderr=err,
                                   start_new_session=True)
    try:
        returncode = process.wait(timeout=kill_at if kill_at is not None else timeout)
        return Run(time.monotonic() - started, returncode, killed=False)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        return Run(time.monotonic() - started, None, killed=kill_at is not None)


def indexer_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "indexer", "--log-level", "WARNING", *args]


def live_version(index: Path) -> str | None:
    """What ``current`` names (None: no link)."""
    link = index / "current"
    return os.readlink(link) if link.is_symlink() else None


def complete_version(index: Path) -> bool:
    """``current`` names a published version (no temporary one), or the index is a plain directory."""
    version = live_version(index)
    if version is None:
        return (index / "manifest.json").is_file()
    target = index / version
    return target.is_dir() and not target.name.startswith(".") and (target / "manifest.json").is_file()


def leftovers(index: Path) -> list[str]:
    """Temporary entries a killed writer left (unfinished versions, links and files of an atomic write)."""
    places = [index, index / "versions", index / "live", index / "live" / "uploads"]
    return sorted(str(p.relative_to(index)) for place in places if place.is_dir() for p in place.iterdir()
                  if p.name.startswith(".") and p.name.endswith(".tmp"))


def verify_in_process(index: Path) -> str | None:
    """Why the published version does not verify (None: it does)."""
    from indexer.build import verify_index

    try:
        verify_index(index)
    except Exception as e:  # any failure to open it is what is measured
        return f"{type(e).__name__}: {e}"
    return None


def verify_cli(index: Path, log: Path) -> Run:
    return run_process(indexer_command("verify", "--index", str(index)), log, timeout=600)


def index_sides(index: Path) -> tuple[str, ...]:
    from indexer.store import read_manifest

    return tuple(read_manifest(index).sides)


def index_items(index: Path, side: str) -> list[dict[str, Any]]:
    from core.atomic import current_version

    path = current_version(index) / side / "items.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fixed_queries(index: Path, rng: random.Random) -> tuple[str, ...]:
    """The generic queries, and two of the collection's own captions (found whatever its subject)."""
    texts = [str(t["text"]) for t in index_items(index, "texts")[:500] if t.get("text")]
    return TEXT_QUERIES + tuple(rng.sample(texts, min(2, len(texts))))


def noise_png(seed: int, size: int = 48) -> bytes:
    """A distinctive image: random noise, so no indexed image is its near-duplicate."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def error_line(text: str, limit: int = 300) -> str:
    """The line of a process's output that says what went wrong: its last exception line (a Java stack's frames
    follow it), else its last line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.$]*(Error|Exception)\b.*:", line) or " ERROR " in line]
    return (errors or lines or [""])[-1][:limit]


# ----- searching -----
def _key(query: str, side: str, mode: str) -> str:
    return f"{query} | {side} | {mode}"


def engine_results(index: Path, encoder: Any, queries: Iterable[str], sides: Iterable[str]) -> Results:
    """The fixed queries searched in this process (faster than a service for a check after each kill)."""
    from indexer.params import SearchParams
    from indexer.search import SearchEngine

    engine = SearchEngine.open(index, encoder=encoder)
    try:
        results: Results = {}
        for query in queries:
            encoded = engine.encode_text(query)
            for side in sides:
                for mode in MODES:
                    params = SearchParams(side=side, mode=mode, top_k=TOP_K, candidate_k=CANDIDATE_K)
                    results[_key(query, side, mode)] = [(h.id, float(h.fused)) for h in
                                                        engine.search(encoded, params).hits]
        return results
    finally:
        engine.close()


def _ok(reply: Reply, what: str, *statuses: int) -> Any:
    if reply.status not in (statuses or (200,)):
        raise FaultCheckError(f"{what}: HTTP {reply.status}: {reply.body[:300]!r}")
    return reply.json()


def served_results(server: Server, queries: Iterable[str], sides: Iterable[str]) -> Results:
    results: Results = {}
    for query in queries:
        for side in sides:
            for mode in MODES:
                body = {"text": query, "side": side, "mode": mode, "top_k": TOP_K, "candidate_k": CANDIDATE_K}
                hits = _ok(server.post_json("/v1/search", body), f"search {query!r}")["hits"]
                results[_key(query, side, mode)] = [(h["id"], float(h["scores"]["fused"])) for h in hits]
    return results


def wait_ready(server: Server, timeout: float = 300) -> None:
    """Until the index is loaded; a server that never gets there fails the check, not the part."""
    try:
        server.wait_ready(timeout)
    except TimeoutError as e:
        raise FaultCheckError(str(e)) from e


def start_server(index: Path, log: Path) -> Server:
    server = Server(["--index", str(index), "--api-key", KEY], log, SERVER_ENV)
    try:
        server.wait_started()
        wait_ready(server)
    except BaseException:
        with _suppressed():
            server.kill()
        raise
    return server


@contextmanager
def _suppressed() -> Iterator[None]:
    try:
        yield
    except Exception as e:  # cleanup after a failure: the failure is what gets reported
        _logger.debug("cleanup failed: %s", e)


def _item(server: Server, item_id: str) -> dict[str, Any] | None:
    reply = server.request("GET", f"/v1/items/{quote(item_id, safe='')}")
    return None if reply.status == 404 else _ok(reply, f"GET item {item_id!r}")


def observe(server: Server, item_id: str, kind: str, probes: int) -> ItemState | None:
    """The item's state as the API shows it (``probes``: caption items ``<id>#n`` read)."""
    captions = tuple((_item(server, f"{item_id}#{n}") or {}).get("text") for n in range(probes))
    return observed_state(kind, _item(server, item_id), captions if kind == "image" else ())


def found_by_search(server: Server, item_id: str, kind: str, content: tuple[str, ...], image: bytes | None) -> bool:
    """An image is its own nearest neighbour, a text too: a present item is the top hit of itself as the query."""
    if kind == "image" and image is not None:
        fields: dict[str, str | list[str]] = {"side": "images", "mode": "dense", "top_k": "5"}
        reply = server.post_multipart("/v1/search", fields, {"image": ("q.png", image, "image/png")})
    elif kind == "text":
        reply = server.post_json("/v1/search", {"text": content[0], "side": "texts", "mode": "dense", "top_k": 5})
    else:
        return True  # an image only known by id (a published one): read back, not searched
    return item_id in {h["id"] for h in _ok(reply, f"search for {item_id!r}")["hits"]}


# ----- part 1: build kills -----
@dataclass
class BuildKills:
    config: ReliabilityConfig
    scratch: Path
    rng: random.Random
    findings: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.scratch / "built"

    def build(self, cache: Path, kill_at: float | None = None) -> Run:
        command = indexer_command("build", "--folder", str(self.config.build_folder), "--checkpoint",
                                  str(self.config.checkpoint), "--out", str(self.out), "--cache-root", str(cache))
        return run_process(command, self.scratch / "build.log", stdout=self.scratch / "build.out", kill_at=kill_at)

    def run(self) -> list[Goal]:
        from core.encoder import DuetEncoder

        first = self.build(self.scratch / "cache-0")
        self.figures["build_seconds"] = round(first.seconds, 2)
        if first.returncode != 0:
            raise FaultCheckError(f"the uninterrupted build failed (exit {first.returncode}): "
                                  f"{(self.scratch / 'build.log').read_text()[-2000:]}")
        self.encoder = DuetEncoder.from_checkpoint(self.config.checkpoint)
        self.sides = index_sides(self.out)
        self.queries = fixed_queries(self.out, self.rng)
        self.reference = engine_results(self.out, self.encoder, self.queries, self.sides)
        _logger.info("faults: uninterrupted build %.1fs; %d kills next", first.seconds, self.config.budget.build_kills)
        for n in range(self.config.budget.build_kills):
            self.records.append(self.kill_one(n, first.seconds))
        survived = sum(1 for r in self.records if not r["problems"])
        final_ok = self.final_build(self.scratch / f"cache-{self.config.budget.build_kills}")
        self.figures.update(kills=self.records, kill_points_s=[r["at_s"] for r in self.records])
        return [Goal(name="build kills survived (live version complete, verifies, same results)", target="all",
                     value=f"{survived}/{len(self.records)}", met=survived == len(self.records)),
                Goal(name="the next build completes, verifies and serves the same results", target="yes",
                     value="yes" if final_ok else "no", met=final_ok)]

    def kill_one(self, n: int, duration: float) -> dict[str, Any]:
        before = live_version(self.out)
        at = self.rng.uniform(0, duration)
        run = self.build(self.scratch / f"cache-{n + 1}", kill_at=at)
        problems = self.check_live()
        record = {"kill": n, "at_s": round(at, 3), "fraction": round(at / duration, 3),
                  "finished_before_kill": not run.killed, "new_version_live": live_version(self.out) != before,
                  "leftovers": leftovers(self.out), "problems": problems}
        _logger.info("faults: build kill %d/%d at %.2fs (%.0f%% of the build): %s", n + 1,
                     self.config.budget.build_kills, at, 100 * at / duration, "; ".join(problems) or "survived")
        for problem in problems:
            self.findings.append(f"build killed at {at:.2f}s of {duration:.1f}s: {problem}. Reproduce: python -m "
                                 f"indexer build --folder {self.config.build_folder} --checkpoint "
                                 f"{self.config.checkpoint} --out OUT twice, the second SIGKILLed (process group) "
                                 f"{at:.2f}s after its start, then python -m indexer verify --index OUT")
        return record

    def check_live(self, index: Path | None = None) -> list[str]:
        """What is wrong with the live version of ``index`` (default: the one the kills build): it must be a
        complete version that verifies and answers the fixed queries as the first build did."""
        index = index or self.out
        if not complete_version(index):
            return [f"current names no complete version ({live_version(index)})"]
        error = verify_in_process(index)
        if error is not None:
            return [f"the live version does not verify: {error}"]
        differences = result_differences(self.reference, engine_results(index, self.encoder, self.queries,
                                                                         self.sides))
        return [f"results changed: {differences[:3]}"] if differences else []

    def final_build(self, cache: Path) -> bool:
        """One more build, resuming the feature cache the last killed build left (``cache``); verified, then served:
        its results are the first build's."""
        problems: list[str] = []
        run = self.build(cache)
        self.figures["final_build_seconds"] = round(run.seconds, 2)
        if run.returncode != 0:
            problems.append(f"the build after the kills failed (exit {run.returncode})")
        error = verify_in_process(self.out)
        if error is not None:
            problems.append(f"the final build does not verify: {error}")
        with serving(self.out, self.scratch / "server.log") as server:
            wait_ready(server)
            served = served_results(server, self.queries, self.sides)
        differences = result_differences(self.reference, served)
        if differences:
            problems.append(f"the served results of the final build differ from the first build's: {differences[:3]}")
        self.figures["leftovers_after_final_build"] = leftovers(self.out)
        self.findings += [f"{p}. Reproduce: kill builds of {self.out} as above, then build it once more" for p in
                          problems]
        if self.figures["leftovers_after_final_build"]:
            self.findings.append(f"killed builds leave their unfinished versions behind, and the next completed "
                                 f"build does not remove them: {self.figures['leftovers_after_final_build']} "
                                 f"under {self.out} (disk lost per kill: up to one version)")
        return not problems


# ----- part 2: write kills -----
@dataclass(frozen=True)
class Expected:
    """What an acknowledged write left: the item's state, how many caption items to read, its image's bytes."""

    kind: str
    state: ItemState
    probes: int = 0
    image: bytes | None = None


@dataclass(frozen=True)
class Write:
    op: str
    item_id: str  # "" for a compaction
    kind: str
    before: ItemState
    after: ItemState
    probes: int = 0
    image: bytes | None = None

    def touched(self) -> set[str]:
        if not self.item_id:
            return set()
        return {self.item_id, *(f"{self.item_id}#{n}" for n in range(self.probes))}

    def expected(self, state: ItemState) -> Expected:
        # only the new content has known bytes (a published image is known by id alone)
        return Expected(self.kind, state, self.probes, self.image if state == self.after else None)


def send(server: Server, write: Write) -> Reply:
    """The write as the API takes it."""
    if write.op == "compact":
        return server.post_json("/v1/compact", {}, AUTH)
    if write.op == "delete":
        return server.request("DELETE", f"/v1/items/{quote(write.item_id, safe='')}", headers=AUTH)
    if write.kind == "text":
        return server.post_json("/v1/items", {"id": write.item_id, "text": write.after.content[0]}, AUTH)
    assert write.image is not None
    files = {"image": ("fault.png", write.image, "image/png")}
    captions: dict[str, str | list[str]] = {"captions": list(write.after.content)}  # a part each
    if write.op == "replace":
        return server.post_multipart(f"/v1/items/{quote(write.item_id, safe='')}", captions, files, AUTH, "PUT")
    return server.post_multipart("/v1/items", {"id": write.item_id, **captions}, files, AUTH)


def _acked(reply: Reply | None) -> bool:
    return reply is not None and 200 <= reply.status < 300


@dataclass
class Tally:
    kills: int = 0
    lost: int = 0
    half: int = 0
    verified: int = 0
    verifications: int = 0
    same_results: int = 0
    compared: int = 0
    recovered: int = 0


class WriteKills:
    """Each write operation, killed ``write_kills`` times (a round: every operation once on a fresh copy)."""

    def __init__(self, config: ReliabilityConfig, scratch: Path, rng: random.Random) -> None:
        self.config, self.scratch, self.rng = config, scratch, rng
        self.findings: list[str] = []
        self.records: list[dict[str, Any]] = []
        self.tally = Tally()
        self.latency: dict[str, float] = {}
        self.compaction_s = _manifest_compaction_estimate(config.index)
        self.restart_s: list[float] = []
        self.compactions_s: list[float] = []
        self.sides = index_sides(config.index)
        self.queries = fixed_queries(config.index, rng)
        self.base = [i for i in index_items(config.index, "images") if i.get("id")]
        self.probe_captions = "texts" in self.sides

    # -- a round --
    def run(self) -> list[Goal]:
        for r in range(self.config.budget.write_kills):
            self.round(r)
        t = self.tally
        return [Goal(name="acknowledged writes lost (not read back or not found by search after a kill)",
                     target="0", value=t.lost, met=t.lost == 0),
                Goal(name="half states seen (an image without its captions, captions without their image)",
                     target="0", value=t.half, met=t.half == 0),
                Goal(name="verify after kill", target="all", value=f"{t.verified}/{t.verifications}",
                     met=t.verified == t.verifications and t.verifications > 0),
                Goal(name="results of untouched items unchanged after a kill", target="all",
                     value=f"{t.same_results}/{t.compared}", met=t.same_results == t.compared),
                Goal(name="restart and next write succeed after a kill", target="all",
                     value=f"{t.recovered}/{t.kills}", met=t.recovered == t.kills)]

    def round(self, r: int) -> None:
        self.dir = self.scratch / f"writes-{r}"
        self.index = copy_index(self.config.index, self.dir / "index")
        self.log = self.dir / "server.log"
        self.ledger: dict[str, Expected] = {}
        self.server: Server | None = None
        try:
            self.server = start_server(self.index, self.log)
            self.snapshot = served_results(self.server, self.queries, self.sides)
            self.since: set[str] = set()  # written after the snapshot (the probes): left out of the comparison
            self.each_op(r)
            if r == 0:
                self.cli_path(r)
        except Exception as e:  # a server that does not come back ends the round, reported
            self.findings.append(f"write round {r} stopped: {type(e).__name__}: {e} (server log: {self.log})")
        finally:
            if self.server is not None and self.server.process.poll() is None:
                self.server.stop()
        self.count_verify(verify_cli(self.index, self.dir / "verify.log").returncode == 0, "python -m indexer "
                          f"verify --index {self.index} after the round's server stopped")
        left = leftovers(self.index)
        if left:
            self.findings.append(f"killed compactions leave their unfinished versions behind, and later compactions "
                                 f"do not remove them: {left} in a copy of {self.config.index} after round {r}")
        shutil.rmtree(self.index, ignore_errors=True)

    def each_op(self, r: int) -> None:
        """Every operation once, killed after its acknowledgement or mid-request, alternately across rounds."""
        targets = self.rng.sample(self.base, 2) if len(self.base) >= 2 else []
        for i, op in enumerate(OPS):
            if op in ("replace", "delete") and not targets:
                continue  # no published image to replace or delete
            mode = "during_compaction" if op == "compact" else ("after_ack", "mid_request")[(i + r) % 2]
            self.kill_write(r, self.make_write(op, r, targets), mode)

    def make_write(self, op: str, r: int, targets: list[dict[str, Any]]) -> Write:
        tag = f"{self.config.seed}-{r}"
        probes = 3 if self.probe_captions else 0
        if op == "add_image":
            captions = (f"fault probe image {tag} kite", f"fault probe image {tag} lantern")
            return Write(op, f"fault-image-{tag}.png", "image", ABSENT, ItemState(True, captions), probes,
                         noise_png(zlib.crc32(tag.encode()) + 1))
        if op == "add_text":
            return Write(op, f"fault-text-{tag}", "text", ABSENT, ItemState(True, (f"fault probe text {tag}",)))
        if op == "compact":
            return Write(op, "", "", ABSENT, ABSENT)
        target = targets[0] if op == "replace" else targets[1]
        old = ItemState(True, tuple(str(c) for c in target.get("captions", [])))
        probes = len(old.content) + 1 if self.probe_captions else 0
        if op == "delete":
            return Write(op, str(target["id"]), "image", old, ABSENT, probes)
        return Write(op, str(target["id"]), "image", old, ItemState(True, (f"fault replacement {tag}",)), probes,
                     noise_png(zlib.crc32(tag.encode()) + 2))

    # -- one kill --
    def kill_write(self, r: int, write: Write, mode: str) -> None:
        assert self.server is not None
        before = self.snapshot
        generation = _ok(self.server.request("GET", "/v1/collection", headers=AUTH), "collection")["generation"]
        acked, at = self.kill(write, mode)
        record: dict[str, Any] = {"round": r, "op": write.op, "mode": mode, "kill_at_s": round(at, 4),
                                  "acked": acked}
        self.after_kill(write, acked, before, record, generation)
        self.records.append(record)

    def kill(self, write: Write, mode: str) -> tuple[bool, float]:
        """Send the write and SIGKILL the server: once the reply is in, mid-request, or during a compaction;
        (whether the write was acknowledged, seconds from sending to the kill)."""
        assert self.server is not None
        started = time.monotonic()
        if mode == "after_ack":
            reply: Reply | None = send(self.server, write)
            self.latency[write.op] = time.monotonic() - started
        elif mode == "during_compaction":
            reply = send(self.server, write)
            if reply.status != 202:
                raise FaultCheckError(f"POST /v1/compact answered {reply.status}: {reply.body[:300]!r}")
            time.sleep(self.rng.uniform(0, self.compaction_s))
        else:
            reply = self.send_and_kill_midway(write)
        at = time.monotonic() - started
        if self.server.process.poll() is None:
            self.server.kill()
        self.server = None
        return _acked(reply), at

    def send_and_kill_midway(self, write: Write) -> Reply | None:
        """The write in a thread; the kill at a uniform moment of the time such a write took before."""
        assert self.server is not None
        server, replies = self.server, []

        def sending() -> None:
            try:
                replies.append(send(server, write))
            except (OSError, http.client.HTTPException):  # the connection died with the server, before or in the
                pass  # reply (IncompleteRead: the status came, its body did not): not acknowledged

        thread = threading.Thread(target=sending, daemon=True)
        thread.start()
        # the kill lands within the time such a write took (unmeasured: the quickest write's)
        time.sleep(self.rng.uniform(0, self.latency.get(write.op, min(self.latency.values(), default=0.05))))
        server.kill()
        thread.join(timeout=30)
        return replies[0] if replies else None

    def after_kill(self, write: Write, acked: bool, before: Results, record: dict[str, Any],
                   generation: str) -> None:
        self.tally.kills += 1
        error = verify_in_process(self.index)
        self.count_verify(error is None, f"the published version after killing {write.op}: {error}")
        record["leftovers"] = leftovers(self.index)
        started = time.monotonic()
        self.server = start_server(self.index, self.log)  # a failure here ends the round
        self.restart_s.append(time.monotonic() - started)
        if write.item_id:
            record["state"] = self.check_write(write, acked)
        else:
            state = _ok(self.server.request("GET", "/v1/collection", headers=AUTH), "collection")
            record["compaction_landed"] = state["generation"] != generation
        after = served_results(self.server, self.queries, self.sides)
        self.check_ledger(after, skip=write.item_id)
        self.compare(before, after, write.touched() | self.since, f"after killing {write.op}")
        self.snapshot, self.since = after, set()
        recovered = self.recover(write)
        self.tally.recovered += recovered
        _logger.info("faults: write kill %s (%s) at %.3fs: acked=%s %s", write.op, record["mode"],
                     record["kill_at_s"], acked, record.get("state", record.get("compaction_landed")))

    def check_write(self, write: Write, acked: bool) -> str:
        """The killed write's item: the state after it if acknowledged, else that or the one before, whole."""
        assert self.server is not None
        state = observe(self.server, write.item_id, write.kind, write.probes)
        verdict = judge(state, acked=acked, before=write.before, after=write.after)
        if verdict == "ok" and state is not None:
            self.ledger[write.item_id] = write.expected(state)
            if state == write.after and state.present and not found_by_search(
                    self.server, write.item_id, write.kind, state.content, write.image):
                verdict = "lost"  # read back, yet not found: a search would never return it
        self.count(verdict, f"{write.op} of {write.item_id!r} (acked={acked}): found {state}, before {write.before}, "
                   f"after {write.after}")
        return verdict

    def check_ledger(self, results: Results, skip: str = "") -> None:
        """Every write acknowledged before is still there as it was left, found by search (or absent from every
        result, when deleted)."""
        assert self.server is not None
        seen = ids_in(results)
        for item_id, expected in self.ledger.items():
            if item_id == skip:
                continue
            state = observe(self.server, item_id, expected.kind, expected.probes)
            findable = (found_by_search(self.server, item_id, expected.kind, expected.state.content, expected.image)
                        if expected.state.present else item_id not in seen)
            if state != expected.state or not findable:
                self.count("lost" if state is not None else "half",
                           f"earlier write of {item_id!r}: found {state} (findable={findable}), expected "
                           f"{expected.state}")

    def compare(self, before: Results, after: Results, touched: set[str], what: str) -> None:
        differences = result_differences(before, after, touched)
        self.tally.compared += 1
        self.tally.same_results += not differences
        if differences:
            self.findings.append(f"results changed {what}: {differences[:3]}")

    def recover(self, write: Write) -> bool:
        """The next write succeeds (a compaction after a killed one, too)."""
        try:
            if write.op == "compact":
                self.compact_to_end()
            self.probe_write(f"probe-{write.op}-{len(self.records)}")
        except FaultCheckError as e:
            self.findings.append(f"no recovery after killing {write.op}: {e}")
            return False
        return True

    def probe_write(self, item_id: str) -> None:
        assert self.server is not None
        write = Write("add_text", item_id, "text", ABSENT, ItemState(True, (f"fault probe {item_id}",)))
        started = time.monotonic()
        _ok(send(self.server, write), f"the write after a kill ({item_id})", 201)
        self.latency["add_text"] = time.monotonic() - started
        self.ledger[item_id] = write.expected(write.after)
        self.since.add(item_id)

    def compact_to_end(self) -> None:
        assert self.server is not None
        _ok(self.server.post_json("/v1/compact", {}, AUTH), "POST /v1/compact", 202)
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            state = _ok(self.server.request("GET", "/v1/collection", headers=AUTH), "collection")["compaction"]
            if not state["running"]:
                if state["last_error"] is not None:
                    raise FaultCheckError(f"the compaction after a killed one failed: {state['last_error']}")
                self.compaction_s = float(state["last_result"]["seconds"])
                self.compactions_s.append(round(self.compaction_s, 2))
                return
            time.sleep(0.1)
        raise FaultCheckError("the compaction after a killed one did not finish in 30 minutes")

    def count(self, verdict: str, what: str) -> None:
        if verdict == "lost":
            self.tally.lost += 1
        elif verdict == "half":
            self.tally.half += 1
        if verdict != "ok":
            self.findings.append(f"{verdict}: {what}. Reproduce: serve a copy of {self.config.index} with python -m "
                                 f"service --index COPY --api-key KEY, send the write, SIGKILL the server, restart it "
                                 f"and GET /v1/items/ID")

    def count_verify(self, ok: bool, what: str) -> None:
        self.tally.verifications += 1
        self.tally.verified += ok
        if not ok:
            self.findings.append(f"verify failed: {what}")

    # -- the CLI --
    def cli_path(self, r: int) -> None:
        """``python -m indexer add`` once whole (its duration), once killed mid-run, then ``compact`` killed; the
        server restarted over what they left finds it whole."""
        assert self.server is not None
        before, since = self.snapshot, set(self.since)
        self.server.stop()
        self.server = None
        text = Write("add_text", f"cli-text-{r}", "text", ABSENT, ItemState(True, (f"fault cli text {r}",)))
        whole = self.cli(text, kill_at=None)
        if not whole["acked"]:
            self.findings.append(f"python -m indexer add --text failed (exit {whole['returncode']})")
        duration = max(whole["seconds"], 0.1)
        image = Write("add_image", f"cli-image-{r}.png", "image", ABSENT,
                      ItemState(True, (f"fault cli caption {r} one", f"fault cli caption {r} two")),
                      3 if self.probe_captions else 0, noise_png(10_000 + r))
        killed_add = self.cli(image, kill_at=self.rng.uniform(0, duration))
        compact = Write("compact", "", "", ABSENT, ABSENT)
        killed_compact = self.cli(compact, kill_at=self.rng.uniform(0, duration + self.compaction_s))
        self.server = start_server(self.index, self.log)
        killed_add["state"] = self.check_write(image, killed_add["acked"])
        after = served_results(self.server, self.queries, self.sides)
        self.check_ledger(after, skip=image.item_id)
        self.compare(before, after, image.touched() | text.touched() | since,
                     "after killing python -m indexer add/compact")
        self.snapshot, self.since = after, set()
        # both kills recover by the one write after them (compaction after a killed one: the HTTP round's)
        self.tally.recovered += 2 * self.recover(text)
        self.records += [whole, killed_add, killed_compact]

    def cli(self, write: Write, kill_at: float | None) -> dict[str, Any]:
        if write.op == "compact":
            args = ["compact", "--index", str(self.index)]
        elif write.kind == "text":
            args = ["add", "--index", str(self.index), "--text", write.after.content[0], "--id", write.item_id]
        else:
            assert write.image is not None
            path = self.dir / "cli.png"
            path.write_bytes(write.image)
            args = ["add", "--index", str(self.index), "--image", str(path), "--id", write.item_id,
                    *(a for c in write.after.content for a in ("--caption", c))]
        out = self.dir / "cli.out"
        out.write_text("")
        run = run_process(indexer_command(*args), self.dir / "cli.log", stdout=out, kill_at=kill_at, timeout=1800)
        acked = run.returncode == 0 and out.read_text().strip().startswith("{")
        record: dict[str, Any] = {"op": f"cli_{write.op}", "mode": "whole" if kill_at is None else "mid_run",
                  "kill_at_s": None if kill_at is None else round(kill_at, 3), "seconds": round(run.seconds, 2),
                  "returncode": run.returncode, "acked": acked}
        if write.item_id and acked:
            self.ledger[write.item_id] = write.expected(write.after)
        if kill_at is not None:
            self.tally.kills += 1
            error = verify_in_process(self.index)
            self.count_verify(error is None, f"the published version after killing python -m indexer {args[0]}: "
                              f"{error}")
            record["leftovers"] = leftovers(self.index)
            _logger.info("faults: CLI kill %s at %.2fs: acked=%s", write.op, kill_at, acked)
        return record

    def figures(self) -> dict[str, Any]:
        per_op: dict[str, dict[str, int]] = {}
        for record in self.records:
            counts = per_op.setdefault(record["op"], {"kills": 0, "acked": 0})
            counts["kills"] += record["mode"] != "whole"
            counts["acked"] += bool(record["acked"])
            counts[record["mode"]] = counts.get(record["mode"], 0) + 1
        return {"per_op": per_op, "kills": self.records, "restart_seconds": [round(s, 2) for s in self.restart_s],
                "compaction_seconds": self.compactions_s,
                "write_latency_s": {k: round(v, 4) for k, v in self.latency.items()}, **asdict_tally(self.tally)}


def asdict_tally(tally: Tally) -> dict[str, int]:
    return {f"writes_{k}": v for k, v in vars(tally).items()}


def _manifest_compaction_estimate(index: Path) -> float:
    """How long a compaction takes, before one was seen: the build's index-writing stages (what it redoes)."""
    from indexer.store import read_manifest

    timings = read_manifest(index).build.get("timings", {})
    seconds = sum(float(v) for k, v in timings.items() if k.endswith(("_dense_seconds", "_sparse_seconds")))
    return seconds or 5.0


# ----- part 3: full disk -----
_FULL_DISK_SCRIPT = r"""
set -u
mount -t tmpfs -o size="$2"k tmpfs "$1" || exit 90
cp -a "$3" "$1/index" || exit 91
readlink "$1/index/current" > "$8/before.txt"
df -k "$1" | tail -n 1 > "$8/df.txt"
"$4" -m indexer build --folder "$5" --checkpoint "$6" --out "$1/index" --cache-root "$7" \
    > "$8/build.out" 2> "$8/build.err"
echo $? > "$8/build.rc"
readlink "$1/index/current" > "$8/after.txt"
ls -a "$1/index" "$1/index/versions" > "$8/ls.txt"
cp -a "$1/index" "$8/index"
"""


def disk_kb(path: Path) -> int:
    """What a copy of ``path`` takes on a tmpfs: whole 4 KiB pages per file."""
    return sum(4 * math.ceil(p.stat().st_size / 4096) for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def full_disk_unavailable() -> str | None:
    """Why no tmpfs can be mounted here (None: it can)."""
    if os.geteuid() != 0:
        return "not root: no tmpfs can be mounted (and no loop device either)"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare or mount is missing"
    return None


Check = Callable[[Path], list[str]]  # what is wrong with an index's live version (empty: nothing)


def full_disk_attempt(config: ReliabilityConfig, scratch: Path, published: Path, cache: Path, fraction: float,
                      check: Check) -> dict[str, Any]:
    """A build into a tmpfs that holds the published index and ``fraction`` of one more version; the index is
    copied out after it (the mount ends with its namespace) and checked here."""
    from core.atomic import current_version

    results = scratch / f"disk-{fraction:g}"
    results.mkdir(parents=True)
    mount_point = Path(tempfile.mkdtemp(prefix="tmpfs-", dir=scratch))
    size = disk_kb(published) + 64 + int(fraction * disk_kb(current_version(published)))
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _FULL_DISK_SCRIPT, "sh",
               str(mount_point), str(size), str(published), sys.executable, str(config.build_folder),
               str(config.checkpoint), str(cache), str(results)]
    done = subprocess.run(command, cwd=ROOT, env=_child_env(), capture_output=True, text=True, timeout=3600)
    mount_point.rmdir()  # the mount went with the namespace: an empty directory again

    def read(name: str) -> str:
        return (results / name).read_text().strip() if (results / name).is_file() else ""

    if done.returncode in (90, 91):
        return {"fraction": fraction, "size_kb": size, "not_run": f"mount or copy failed: {done.stderr[-500:]}"}
    error = read("build.err")
    return {"fraction": fraction, "size_kb": size, "build_exit": int(read("build.rc") or -1),
            "message": error_line(error), "traceback": TRACEBACK in error,
            "names_the_disk": any(w in error.lower() for w in ("no space", "enospc", "disk full", "disk space")),
            "live_before": read("before.txt"), "live_after": read("after.txt"),
            "problems": check(results / "index") if (results / "index").is_dir() else ["not copied out"],
            "listing": read("ls.txt").split(), "df": read("df.txt")}


SAFE_DISK = "full disk: the build fails, the live index untouched"
CLEAR_DISK = "full disk: clear error (the message names the full disk)"


def _disk_findings(config: ReliabilityConfig, full: list[dict[str, Any]]) -> list[str]:
    reproduce = (f"Reproduce: as root, unshare -m sh -c 'mount -t tmpfs -o size=SIZEk tmpfs DIR; cp -a INDEX "
                 f"DIR/index; python -m indexer build --folder {config.build_folder} --checkpoint {config.checkpoint} "
                 "--out DIR/index' (INDEX: a published index of that folder, SIZE: its size plus half a version)")
    findings = [f"full disk ({a['size_kb']} KiB tmpfs): the build exits {a['build_exit']}, the live version "
                f"{a['live_before']} -> {a['live_after']}: {a['problems']}. {reproduce}" for a in full if not _safe(a)]
    findings += [f"full disk ({a['size_kb']} KiB tmpfs): the build's error does not say the disk is full: "
                 f"{a['message']!r}. {reproduce}" for a in full if not a["names_the_disk"]]
    findings += [f"full disk ({a['size_kb']} KiB tmpfs): python -m indexer build prints a raw traceback (exit "
                 f"{a['build_exit']}, last line {a['message']!r}). {reproduce}" for a in full if a["traceback"]]
    return findings


def _safe(attempt: dict[str, Any]) -> bool:
    return attempt["live_after"] == attempt["live_before"] and not attempt["problems"]


def full_disk(config: ReliabilityConfig, scratch: Path, published: Path, cache: Path,
              check: Check) -> tuple[list[Goal], dict[str, Any], list[str]]:
    """Builds into tmpfs too small for them (short: one; full: little, half and most of a version free)."""
    reason = full_disk_unavailable()
    if reason is not None:
        return [Goal(name=SAFE_DISK, target="all", value=f"not run: {reason}", met=False)], {}, []
    fractions = (0.5,) if config.short else (0.05, 0.5, 0.9)
    attempts = [full_disk_attempt(config, scratch, published, cache, f, check) for f in fractions]
    ran = [a for a in attempts if "not_run" not in a]
    if not ran:
        return [Goal(name=SAFE_DISK, target="all", value=f"not run: {attempts[0]['not_run']}", met=False)], {
            "attempts": attempts}, []
    full = [a for a in ran if a["build_exit"] != 0]
    fitted = f" ({len(ran) - len(full)} of {len(ran)} fitted: not a full disk)" if len(full) < len(ran) else ""
    safe, clear = sum(_safe(a) for a in full), sum(a["names_the_disk"] for a in full)
    return ([Goal(name=SAFE_DISK, target="all (non-zero exit; the live version unchanged, verifying, same results)",
                  value=f"{safe}/{len(full)}{fitted}", met=bool(full) and safe == len(full)),
             Goal(name=CLEAR_DISK, target="all", value=f"{clear}/{len(full)}", met=bool(full) and clear == len(full))],
            {"attempts": attempts}, _disk_findings(config, full))


# ----- the part -----
def _guarded(name: str, part: Callable[[], list[Goal]], findings: list[str]) -> list[Goal]:
    """A part that fails outright is a missed goal with its traceback, not the end of the others."""
    try:
        return part()
    except Exception as e:  # reported, not raised: the other parts still run
        findings.append(f"{name} part failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}")
        return [Goal(name=f"{name} part ran", target="yes", value=f"no: {type(e).__name__}: {e}"[:300], met=False)]


@dataclass
class Faults:
    """The three parts in order, sharing the scratch directory, the seeded generator and the build's index."""

    config: ReliabilityConfig
    scratch: Path
    rng: random.Random
    goals: list[Goal] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)

    def part(self, name: str, run: Callable[[], list[Goal]]) -> None:
        started = time.monotonic()
        self.goals += _guarded(name, run, self.findings)
        self.figures.setdefault(name, {})["seconds"] = round(time.monotonic() - started, 1)

    def builds(self) -> list[Goal]:
        self.build_kills = BuildKills(self.config, self.scratch / "builds", self.rng)
        self.build_kills.scratch.mkdir()
        try:
            return self.build_kills.run()
        finally:
            self.figures["builds"] = self.build_kills.figures
            self.findings += self.build_kills.findings

    def writes(self) -> list[Goal]:
        kills = WriteKills(self.config, self.scratch, self.rng)
        try:
            return kills.run()
        finally:
            self.figures["writes"] = kills.figures()
            self.findings += kills.findings

    def disk(self) -> list[Goal]:
        built = self.scratch / "builds" / "built"
        if not complete_version(built):
            raise FaultCheckError("no published index of the build folder to fill the disk under")
        goals, self.figures["disk"], findings = full_disk(self.config, self.scratch, built,
                                                          self.scratch / "builds" / "cache-0",
                                                          self.build_kills.check_live)
        self.findings += findings
        return goals


def run_faults(config: ReliabilityConfig) -> PartResult:
    """Build kills, write kills and a full disk, bounded by ``config.budget``; see the module docstring."""
    started = time.monotonic()
    config = config.model_copy(update={k: Path(getattr(config, k)).resolve() for k in
                                       ("index", "build_folder", "checkpoint", "work")})
    scratch = config.work / "faults"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    faults = Faults(config, scratch, random.Random(config.seed))
    faults.part("builds", faults.builds)
    faults.part("writes", faults.writes)
    faults.part("disk", faults.disk)
    return PartResult(part="faults", goals=faults.goals, figures=faults.figures, findings=faults.findings,
                      seconds=round(time.monotonic() - started, 1))
