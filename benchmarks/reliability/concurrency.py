"""Concurrency: searches while the collection changes, on a copy of the index served with an API key.

1. Writes: one writer adds texts and images with captions, replaces images (new file, new captions) and deletes
   both, while several clients search and read items. Each written item is a probe with content no other item
   has, so every answer can be judged exactly against the writer's ledger: a probe in an answer is whole, and of
   the version acknowledged last before the request was sent or of a later one under way (never older, never a
   mix: an image's captions are its own version's); a probe whose delete was acknowledged before the request was
   sent never appears; a probe written before it and not being deleted is never absent from its item route (not
   even while replaced), and a search for its own text finds it. Anything else is a half state.
2. Swap: a compaction (``POST /v1/compact``) publishes a new version while clients search fixed queries; it does
   not change which items are live, so every answer before, during and after it must be the same ranking (ids,
   and scores within 1e-5). A rebuild by ``python -m indexer build`` into the served directory is not a swap a
   service supports: the service holds the collection's writer lock (README, "Known limitations").
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image

from benchmarks.reliability.config import ReliabilityConfig
from benchmarks.reliability.copies import copy_index
from benchmarks.reliability.figures import Goal, PartResult
from benchmarks.reliability.load import Answer, Call, HttpClient, ask, json_call, query_texts, search_call
from benchmarks.service_process import serving

_logger = logging.getLogger("benchmarks")
KEY = "reliability-concurrency-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
READERS = 3
SCORE_TOLERANCE = 1e-5
TOP, SLACK = 10, 20  # the top 10 is compared; the swap's queries ask for 20 more, where tied items may fall
SWAP_PAUSE_S = 0.05  # between one reader's searches during the compaction: load, not a CPU-starved compaction
COMPACTION_TIMEOUT_S = 1800.0
SHED_APART = "503 + Retry-After is load shed, counted apart"
SHOWN = 10  # problems kept word for word in the findings (the counts have them all)
WORDS = "abcdefghijklmnopqrstuvwxyz"


# ----- the ledger -----
@dataclass
class Version:
    """One write of a probe: what GET /v1/items/{id} must then show (less side and image_url), and when its write
    was acknowledged (loop time)."""

    record: dict[str, Any]
    captions: tuple[str, ...] = ()
    acked_at: float | None = None

    def of(self, item_id: str) -> dict[str, Any]:
        """The record of the probe itself or of one of its captions (``<id>#<n>``)."""
        if item_id == self.record["id"]:
            return self.record
        n = int(item_id.rsplit("#", 1)[1])
        metadata = self.record.get("metadata")  # a caption carries its image's
        return {"id": item_id, "text": self.captions[n], "image_id": self.record["id"],
                **({"metadata": metadata} if metadata else {})}


@dataclass
class Probe:
    """An item the writer wrote (and maybe replaced), with the loop times of its delete."""

    id: str
    side: str  # "texts" (a text item) or "images" (an image with captions)
    versions: list[Version]
    delete_sent_at: float | None = None
    deleted_at: float | None = None

    def expected(self, item_id: str, sent: float) -> list[dict[str, Any]]:
        """The records an answer to a request sent at ``sent`` may show: the last version acknowledged by then, or
        a later one (its write under way); an older one is stale."""
        acked = [n for n, v in enumerate(self.versions) if v.acked_at is not None and v.acked_at < sent]
        return [v.of(item_id) for v in self.versions[max(acked, default=0):]]

    def exists(self, sent: float) -> bool:
        """Created before ``sent`` and no delete sent yet (asked once the answer is in): never absent, not even
        while it is being replaced."""
        first = self.versions[0].acked_at
        return first is not None and first < sent and self.delete_sent_at is None

    def settled(self, sent: float) -> bool:
        """Its latest version acknowledged before ``sent``, none under way and no delete: that version is found."""
        last = self.versions[-1].acked_at
        return last is not None and last < sent and self.delete_sent_at is None

    @property
    def acked(self) -> bool:
        return self.versions[0].acked_at is not None

    @property
    def text(self) -> str:
        """What a search finds it by: a text's own text, an image's first caption (of its latest version)."""
        latest = self.versions[-1]
        return str(latest.record.get("text") or latest.captions[0])

    @property
    def caption_ids(self) -> list[str]:
        return [f"{self.id}#{n}" for n in range(len(self.versions[0].captions))]


def shown(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("side", "image_url")}


@dataclass
class Ledger:
    probes: dict[str, Probe] = field(default_factory=dict)
    half_states: int = 0
    server_errors: int = 0
    shed: int = 0
    unanswered: int = 0
    refused: int = 0
    checks: int = 0
    problems: list[str] = field(default_factory=list)

    def probe_of(self, item_id: str) -> Probe | None:
        return self.probes.get(item_id.split("#", 1)[0])

    def half_state(self, what: str) -> None:
        self.half_states += 1
        if len(self.problems) < SHOWN:
            self.problems.append(what)

    async def ask(self, client: HttpClient, call: Call) -> Answer:
        """The answer (status 0: none in time); 5xx, load shed (503 + Retry-After, counted apart: a refusal the
        service means, not an error) and unanswered requests counted."""
        answer = await ask(client, call)
        self.shed += is_shed(answer)
        self.server_errors += answer.status >= 500 and not is_shed(answer)
        self.unanswered += answer.status == 0
        if (answer.status >= 500 or answer.status == 0) and len(self.problems) < SHOWN:
            self.problems.append(f"{call.method} {call.path}: {answer.status} {answer.body[:200]!r}")
        return answer

    def check_record(self, item_id: str, record: dict[str, Any], sent: float, where: str) -> Probe | None:
        """A probe's record seen in an answer to a request sent at ``sent``: complete, and not deleted by then."""
        probe = self.probe_of(item_id)
        if probe is None:
            return None
        self.checks += 1
        if probe.deleted_at is not None and probe.deleted_at < sent:
            self.half_state(f"{where}: {item_id} returned {sent - probe.deleted_at:.3f} s after its delete was "
                            "acknowledged")
        elif shown(record) not in (wanted := probe.expected(item_id, sent)):
            self.half_state(f"{where}: {item_id} stale or incomplete: {shown(record)} not in {wanted}")
        return probe

    def check_item(self, item_id: str, answer: Answer, sent: float) -> None:
        """``GET /v1/items/{id}`` of a probe (or of a caption of one), sent at ``sent``."""
        probe = self.probe_of(item_id)
        if probe is None or answer.status >= 500 or answer.status == 0:
            return  # counted as such
        if answer.status == 200:
            self.check_record(item_id, answer.json(), sent, "GET")
        elif answer.status == 404 and probe.exists(sent):
            self.half_state(f"GET {item_id}: 404, though written {sent - (probe.versions[0].acked_at or 0):.3f} s "
                            "before and not deleted")
        elif answer.status != 404:
            self.half_state(f"GET {item_id}: {answer.status} {answer.body[:200]!r}")


def is_shed(answer: Answer) -> bool:
    return answer.status == 503 and "retry-after" in answer.headers


def item_path(item_id: str) -> str:
    return f"/v1/items/{quote(item_id, safe='')}"


def now() -> float:
    return asyncio.get_running_loop().time()


# ----- the writer -----
def unique_text(rng: random.Random, n: int) -> str:
    words = " ".join("".join(rng.choice(WORDS) for _ in range(7)) for _ in range(4))
    return f"reliability probe {n} {words}"


def noise_png(rng: random.Random, size: int = 40) -> bytes:
    """An image no indexed one resembles: random noise."""
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def text_probe(rng: random.Random, n: int) -> tuple[Probe, Call]:
    probe_id, metadata = f"rl-text-{n}", {"probe": n, "kind": "text"}
    text = unique_text(rng, n)
    call = json_call("/v1/items", {"id": probe_id, "text": text, "metadata": metadata}, headers=AUTH)
    return Probe(probe_id, "texts", [Version({"id": probe_id, "text": text, "metadata": metadata})]), call


def image_version(rng: random.Random, probe_id: str, n: int, version: int) -> tuple[Version, dict[str, Any]]:
    """A version of an image probe (always two captions: a replacement never changes which caption ids exist)."""
    metadata = {"probe": n, "kind": "image", "version": version}
    data, captions = noise_png(rng), (unique_text(rng, n), unique_text(rng, n + 1))
    payload = {"image_base64": base64.b64encode(data).decode(), "captions": list(captions), "metadata": metadata}
    record = {"id": probe_id, "upload": f"{hashlib.sha256(data).hexdigest()}.png", "captions": list(captions),
              "metadata": metadata}
    return Version(record, captions), payload


def image_probe(rng: random.Random, n: int) -> tuple[Probe, Call]:
    probe_id = f"rl-image-{n}"
    version, payload = image_version(rng, probe_id, n, 0)
    return Probe(probe_id, "images", [version]), json_call("/v1/items", {"id": probe_id, **payload}, headers=AUTH)


def refused(ledger: Ledger, what: str, answer: Answer) -> None:
    ledger.refused += 1
    if len(ledger.problems) < SHOWN:
        ledger.problems.append(f"{what} refused: {answer.status} {answer.body[:200]!r}")


async def add(client: HttpClient, ledger: Ledger, probe: Probe, call: Call) -> None:
    ledger.probes[probe.id] = probe  # known before it is sent: a search may see it before the acknowledgement
    answer = await ledger.ask(client, call)
    if answer.status == 201:
        probe.versions[0].acked_at = now()
    else:
        refused(ledger, f"the write of {probe.id}", answer)


async def replace(client: HttpClient, ledger: Ledger, rng: random.Random, probe: Probe, n: int) -> None:
    """A new image and new captions under the same id (PUT): never a mix of the two versions, never absent."""
    version, payload = image_version(rng, probe.id, n, len(probe.versions))
    probe.versions.append(version)
    answer = await ledger.ask(client, json_call(item_path(probe.id), payload, method="PUT", headers=AUTH))
    if answer.status == 200:
        version.acked_at = now()
    else:
        refused(ledger, f"the replacement of {probe.id}", answer)


async def delete(client: HttpClient, ledger: Ledger, probe: Probe) -> None:
    probe.delete_sent_at = now()
    answer = await ledger.ask(client, Call("DELETE", item_path(probe.id), headers=AUTH))
    if answer.status == 200:
        probe.deleted_at = now()
    else:
        refused(ledger, f"the delete of {probe.id}", answer)


def oldest_live(ledger: Ledger, side: str, keep: int) -> Probe | None:
    """The oldest live probe of ``side`` with no write under way, once more than ``keep`` are live."""
    live = [p for p in ledger.probes.values() if p.side == side and p.versions[-1].acked_at is not None
            and p.delete_sent_at is None]
    return live[0] if len(live) > keep else None


async def write_step(client: HttpClient, ledger: Ledger, rng: random.Random, n: int) -> None:
    """Of every 16 steps: 8 texts and 4 images added, 2 images replaced, a text and an image deleted."""
    step = n % 8
    if step % 2 == 0:
        await add(client, ledger, *text_probe(rng, n))
    elif step % 4 == 1:
        await add(client, ledger, *image_probe(rng, n))
    elif step == 3 and (target := oldest_live(ledger, "images", keep=0)) is not None:
        await replace(client, ledger, rng, target, n)
    elif step == 7 and (target := oldest_live(ledger, "texts" if n % 16 == 7 else "images", keep=2)) is not None:
        await delete(client, ledger, target)


async def writer(client: HttpClient, ledger: Ledger, rng: random.Random, until: float) -> int:
    n = 0
    while now() < until:
        await write_step(client, ledger, rng, n)
        n += 1
    return n


# ----- the readers -----
async def search(client: HttpClient, ledger: Ledger, call: Call) -> tuple[list[dict[str, Any]] | None, float]:
    """The hits (None: no 200 answer, nothing to judge) and the loop time the search was sent."""
    sent = now()
    answer = await ledger.ask(client, call)
    if answer.status != 200:
        if 0 < answer.status < 500:
            refused(ledger, "a search", answer)
        return None, sent
    return answer.json()["hits"], sent


async def check_hits(client: HttpClient, ledger: Ledger, side: str, hits: list[dict[str, Any]] | None,
                     sent: float) -> None:
    """Each probe hit whole; and the other half of a probe (an image's first caption, a caption's image) readable
    unless its delete is under way."""
    for hit in hits or ():
        probe = ledger.check_record(hit["id"], hit["metadata"], sent, f"search of {side}")
        if probe is None or probe.side != "images":
            continue
        other = f"{probe.id}#0" if hit["id"] == probe.id else probe.id
        asked = now()
        ledger.check_item(other, await ledger.ask(client, Call("GET", item_path(other))), asked)


async def own_text(client: HttpClient, ledger: Ledger, probe: Probe) -> None:
    """A dense search for a probe's own text: it finds the probe once acknowledged (its score is 1)."""
    hits, sent = await search(client, ledger, search_call(probe.text, side="texts", mode="dense"))
    await check_hits(client, ledger, "texts", hits, sent)
    wanted = probe.id if probe.side == "texts" else f"{probe.id}#0"
    if hits is not None and probe.settled(sent) and wanted not in {h["id"] for h in hits}:
        ledger.half_state(f"a search for the text of {wanted}, written "
                          f"{sent - (probe.versions[-1].acked_at or 0):.3f} s before, did not find it")


async def reader(client: HttpClient, ledger: Ledger, rng: random.Random, texts: Sequence[str], until: float) -> int:
    n = 0
    while now() < until:
        probes = list(ledger.probes.values())
        probe = rng.choice(probes) if probes else None
        step = n % 4
        if probe is not None and step == 0:
            await own_text(client, ledger, probe)
        elif probe is not None and step == 1:
            asked = now()
            target = probe.id if rng.random() < 0.5 or probe.side == "texts" else f"{probe.id}#1"
            ledger.check_item(target, await ledger.ask(client, Call("GET", item_path(target))), asked)
        else:
            side = "images" if step == 2 else "texts"
            query = rng.choice([*(p.text for p in probes if p.side == "images"), *texts[:20]])
            hits, sent = await search(client, ledger, search_call(query, side=side))
            await check_hits(client, ledger, side, hits, sent)
        n += 1
    return n


async def during_writes(client: HttpClient, texts: Sequence[str], seconds: float, seed: int) -> Ledger:
    ledger = Ledger()
    until = now() + seconds
    rngs = [random.Random(seed * 100 + k) for k in range(READERS + 1)]
    counts = await asyncio.gather(writer(client, ledger, rngs[0], until),
                                  *(reader(client, ledger, rngs[k + 1], texts, until) for k in range(READERS)))
    _logger.info("concurrency: %d write steps, %d reader steps, %d probe checks", counts[0], sum(counts[1:]),
                 ledger.checks)
    return ledger


async def final_check(client: HttpClient, ledger: Ledger) -> None:
    """After everything: every deleted probe is gone, every other one complete (captions too)."""
    for probe in ledger.probes.values():
        for item_id in (probe.id, *probe.caption_ids):
            asked = now()
            answer = await ledger.ask(client, Call("GET", item_path(item_id)))
            if probe.deleted_at is not None and answer.status not in (0, 404):
                ledger.half_state(f"after the run, deleted {item_id} answers {answer.status}")
            elif probe.acked and probe.delete_sent_at is None:
                ledger.check_item(item_id, answer, asked)


# ----- the swap -----
Ranking = list[tuple[str, float, float, float]]  # (id, dense, sparse, fused) per hit


def ranking(hits: Sequence[dict[str, Any]]) -> Ranking:
    return [(h["id"], h["scores"]["dense"], h["scores"]["sparse"], h["scores"]["fused"]) for h in hits]


def same_ranking(before: Ranking, after: Ranking, *, top: int = TOP, tolerance: float = SCORE_TOLERANCE) -> bool:
    """The same top ``top``: the same fused score at every rank, and each item of either top with the same scores
    in the other answer. Items whose scores tie may trade places, across rank ``top`` too (the answers run on past
    it: which of tied items a leg keeps is its own order, which a compaction renumbers)."""
    if len(before) != len(after):
        return False
    if any(abs(a[3] - b[3]) > tolerance for a, b in zip(before[:top], after[:top], strict=True)):
        return False
    old, new = {h[0]: h[1:] for h in before}, {h[0]: h[1:] for h in after}
    for item in {h[0] for h in (*before[:top], *after[:top])}:
        if item not in old or item not in new:
            return False
        if any(abs(a - b) > tolerance for a, b in zip(old[item], new[item], strict=True)):
            return False
    return True


@dataclass
class SwapTally:
    baseline: dict[int, Ranking]
    searches: int = 0
    changed: int = 0
    server_errors: int = 0
    shed: int = 0
    unanswered: int = 0
    problems: list[str] = field(default_factory=list)

    def compare(self, key: int, call: Call, answer: Answer, when: str) -> None:
        self.searches += 1
        if answer.status == 0:
            self.unanswered += 1
            self._problem(f"{when}: no answer within the timeout: {answer.body[:200]!r}")
        elif is_shed(answer):
            self.shed += 1
            self._problem(f"{when}: shed: {answer.body[:200]!r}")
        elif answer.status >= 500:
            self.server_errors += 1
            self._problem(f"{when}: {answer.status} {answer.body[:200]!r}")
        elif answer.status != 200:
            self.changed += 1
            self._problem(f"{when}: {answer.status} {answer.body[:200]!r}")
        elif not same_ranking(self.baseline[key], got := ranking(answer.json()["hits"])):
            self.changed += 1
            self._problem(f"{when}: {call.body.decode()[:120]} changed: {self.baseline[key][:TOP]} -> {got[:TOP]}")

    def _problem(self, what: str) -> None:
        if len(self.problems) < SHOWN:
            self.problems.append(what)


def swap_queries(texts: Sequence[str], ledger: Ledger) -> list[Call]:
    """Fixed queries: captions of the index and texts of live probes (delta items before the compaction), both sides."""
    live = [p.text for p in ledger.probes.values() if p.acked and p.delete_sent_at is None][:2]
    return [search_call(text, side=side, top_k=TOP + SLACK) for text in [*texts[:6], *live]
            for side in ("images", "texts")]


async def collection(client: HttpClient) -> dict[str, Any]:
    answer = await ask(client, Call("GET", "/v1/collection", headers=AUTH))
    return dict(answer.json()) if answer.status == 200 else {}


async def compaction_done(client: HttpClient, finished_before: Any, tally: SwapTally) -> dict[str, Any]:
    deadline = now() + COMPACTION_TIMEOUT_S
    while now() < deadline:
        state = await collection(client)
        compaction = state.get("compaction", {})
        if not compaction.get("running") and compaction.get("last_finished_at") != finished_before:
            return state
        await asyncio.sleep(0.25)
    tally.problems.append(f"the compaction did not finish within {COMPACTION_TIMEOUT_S:.0f} s")
    return {}


async def swap_reader(client: HttpClient, calls: Sequence[Call], tally: SwapTally, done: asyncio.Event,
                      first: int) -> None:
    n = first
    while not done.is_set():
        key = n % len(calls)
        tally.compare(key, calls[key], await ask(client, calls[key]), "during the compaction")
        n += 1
        await asyncio.sleep(SWAP_PAUSE_S)


async def baseline_of(client: HttpClient, call: Call, tries: int = 5) -> Ranking:
    """The ranking before the compaction (a shed answer is asked again; none at all leaves an empty ranking, which
    every later answer then differs from)."""
    for _ in range(tries):
        answer = await ask(client, call)
        if answer.status == 200:
            return ranking(answer.json()["hits"])
        await asyncio.sleep(1.0)
    return []


async def during_swap(client: HttpClient, calls: Sequence[Call]) -> tuple[SwapTally, dict[str, Any]]:
    tally = SwapTally({key: await baseline_of(client, call) for key, call in enumerate(calls)})
    for key, call in enumerate(calls):  # a ranking that changes with no swap at all is not the swap's doing
        tally.compare(key, call, await ask(client, call), "before the compaction")
    before = await collection(client)
    started, searched = now(), tally.searches
    answer = await ask(client, Call("POST", "/v1/compact", headers=AUTH))
    if answer.status != 202:
        tally.problems.append(f"POST /v1/compact: {answer.status} {answer.body[:200]!r}")
        return tally, {"before": before}
    done = asyncio.Event()
    readers = [asyncio.create_task(swap_reader(client, calls, tally, done, k)) for k in range(READERS)]
    after = await compaction_done(client, before.get("compaction", {}).get("last_finished_at"), tally)
    seconds, during = now() - started, tally.searches - searched
    done.set()
    await asyncio.gather(*readers)
    for key, call in enumerate(calls):
        tally.compare(key, call, await ask(client, call), "after the compaction")
    return tally, {"seconds": seconds, "searches_during": during, "before": before, "after": after,
                   "queries": len(calls)}


# ----- the part -----
def swapped(info: dict[str, Any]) -> bool:
    before, after = info.get("before", {}), info.get("after", {})
    return bool(after) and after.get("generation") != before.get("generation")


def concurrency_goals(ledger: Ledger, tally: SwapTally, info: dict[str, Any]) -> list[Goal]:
    return [
        Goal(name="5xx during writes", target=f"0 ({SHED_APART})", value=ledger.server_errors,
             met=ledger.server_errors == 0),
        Goal(name="half states seen", target="0", value=ledger.half_states, met=ledger.half_states == 0),
        Goal(name="writes and searches refused (4xx) during writes", target="0", value=ledger.refused,
             met=ledger.refused == 0),
        Goal(name="5xx during swap", target=f"0 ({SHED_APART})", value=tally.server_errors,
             met=tally.server_errors == 0),
        Goal(name="results changed by swap", target="0 (a new version published)", value=tally.changed,
             met=tally.changed == 0 and swapped(info)),
        Goal(name="requests unanswered within 10 s", target="0", value=ledger.unanswered + tally.unanswered,
             met=ledger.unanswered + tally.unanswered == 0),
    ]


def figures_of(ledger: Ledger, tally: SwapTally, info: dict[str, Any]) -> dict[str, Any]:
    probes = ledger.probes.values()
    return {"writes": {"texts": sum(p.side == "texts" for p in probes),
                       "images": sum(p.side == "images" for p in probes),
                       "replacements": sum(len(p.versions) - 1 for p in probes),
                       "deletes": sum(p.deleted_at is not None for p in probes), "refused": ledger.refused,
                       "probe_checks": ledger.checks, "half_states": ledger.half_states,
                       "server_errors": ledger.server_errors, "shed": ledger.shed, "unanswered": ledger.unanswered},
            "swap": {"searches": tally.searches, "changed": tally.changed, "server_errors": tally.server_errors,
                     "shed": tally.shed, "unanswered": tally.unanswered,
                     "published": swapped(info), "seconds": info.get("seconds"),
                     "searches_during": info.get("searches_during"), "queries": info.get("queries"),
                     "generation_before": info.get("before", {}).get("generation"),
                     "generation_after": info.get("after", {}).get("generation")}}


async def _stages(port: int, texts: Sequence[str], config: ReliabilityConfig) -> tuple[Ledger, SwapTally,
                                                                                          dict[str, Any]]:
    client = HttpClient(port)
    try:
        _logger.info("concurrency: searches during writes for %.0f s", config.budget.concurrency_seconds)
        ledger = await during_writes(client, texts, config.budget.concurrency_seconds, config.seed)
        _logger.info("concurrency: searches during a compaction")
        tally, info = await during_swap(client, swap_queries(texts, ledger))
        await final_check(client, ledger)
    finally:
        client.close()
    return ledger, tally, info


def run_concurrency(config: ReliabilityConfig) -> PartResult:
    started = time.perf_counter()
    work = config.work / "concurrency"
    work.mkdir(parents=True, exist_ok=True)
    index = copy_index(config.index, work / "index")
    env = {"DUET_API_KEY": KEY, "DUET_AUTO_COMPACT_RATIO": "0"}  # the one compaction is the one under test
    try:
        with serving(index, work / "server.log", env=env) as server:
            ledger, tally, info = asyncio.run(_stages(server.port, query_texts(index), config))
    finally:
        shutil.rmtree(index, ignore_errors=True)
    return PartResult(part="concurrency", goals=concurrency_goals(ledger, tally, info),
                      figures=figures_of(ledger, tally, info), findings=[*ledger.problems, *tally.problems],
                      seconds=time.perf_counter() - started)
