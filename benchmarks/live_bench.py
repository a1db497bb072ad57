"""``python -m benchmarks live``: what a live collection (indexer/live.py) costs, measured on copies of an index.

  writes      items per second: image adds with their captions and text adds (encoding included), the same
              records with their vectors given (log append + fsync + apply only), and deletes;
  visibility  from a write's acknowledgement to the first search that returns it, on the writing thread and on
              another thread searching all the while;
  latency     one-thread search latency (text->image, image->text; dense, sparse, hybrid) on the untouched base,
              with a delta of each share of the collection added and the same share deleted, and the same
              collection compacted;
  compaction  seconds and items per second of compacting those collections and a synthetic one (benchmarks/
              synthetic.py, default 100k images), index bytes before and after; one compaction with a writer and
              a searcher running meanwhile; and whether a collection holding a text without sparse terms compacts.

Every section works on its own copy under the work directory: the given index is copied once and never opened.
Vectors given: those records are built with indexer.writes' ``log_entry`` (what ``add_image``/``add_text`` log
after encoding) and written with ``LiveCollection.write_entries``, the method both
adds end in; the time is exactly the log append with its fsync, the apply to the delta and the publication of
the new segments. Delta items of the latency and compaction sections are synthetic mixtures of real items (new
vectors in the model's space, not copies) written that way.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from benchmarks.machine import machine
from benchmarks.scale import caption_queries, synthetic_index
from benchmarks.search_bench import single_thread, stored_queries, time_calls
from benchmarks.sections import SectionStore
from benchmarks.stats import percentiles
from benchmarks.synthetic import CorpusStatistics, generate
from core.atomic import current_version
from core.encoder import DuetEncoder, EncodedItems, SparseRows
from core.progress import progress
from indexer.live import LIVE, LiveCollection, WriteAheadLog
from indexer.params import DEFAULT_CANDIDATE_K, MODES, SearchParams
from indexer.query import Query
from indexer.search import SearchEngine
from indexer.store import CHECKPOINT_DIR, SideStore, directory_bytes, manifest_path, read_manifest
from indexer.writes import log_entry

_logger = logging.getLogger("benchmarks.live")
DIRECTIONS = {"t2i": ("texts", "images"), "i2t": ("images", "texts")}  # direction -> (query side, target side)
VISIBLE_WITHIN_S = 5.0  # a write not found by then counts as never found
TERMLESS_CANDIDATES = (".", "the", "of the", "a and the of to")  # texts that may encode to no sparse term


class LiveBenchConfig(BaseModel):
    """One live-collection benchmark; every field has a CLI flag of the same name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: Path = Field(description="a built index with both sides (copied; the copy is what gets written)")
    out: Path = Field(description="report directory (report.json, README.md)")
    checkpoint: Path | None = Field(None, description="the checkpoint the index was built with (default: the one "
                                    "its manifest names)")
    images: Path | None = Field(None, description="folder of the indexed image files, re-added under new ids "
                                "(default: the collection root recorded in the index)")
    work: Path | None = Field(None, description="where the copies are made (default: a temporary directory, "
                              "removed afterwards)")
    image_adds: int = Field(100, gt=0, description="images added with their captions, encoding included")
    text_adds: int = Field(300, gt=0, description="texts added, encoding included")
    raw_writes: int = Field(1000, gt=0, description="records of each kind (image with captions, text) written "
                            "with their vectors given")
    deletes: int = Field(200, gt=0, description="images (with their captions) and texts deleted, each")
    visibility_samples: int = Field(200, gt=0, description="text adds timed to their first hit, per thread setting")
    visibility_images: int = Field(20, gt=0, description="image adds timed to their first hit")
    latency_queries: int = Field(200, gt=0, description="queries timed per direction, mode and collection state")
    delta_shares: tuple[float, ...] = Field((0.01, 0.1), description="delta sizes (and deleted shares) as shares "
                                            "of the collection")
    synthetic_items: int = Field(100_000, ge=0, description="images of the synthetic collection compacted (0: none)")
    synthetic_shares: tuple[float, ...] = Field((0.01, 0.1), description="delta shares on the synthetic collection")
    synthetic_queries: int = Field(100, gt=0, description="text->image queries timed per mode on the synthetic one")
    candidate_k: int = Field(DEFAULT_CANDIDATE_K, gt=0, description="hybrid candidates per leg")

    @field_validator("delta_shares", "synthetic_shares")
    @classmethod
    def _shares(cls, shares: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 < s <= 0.5 for s in shares):
            raise ValueError("shares are fractions of the collection in (0, 0.5]")
        return shares


# ----- measuring -----
def _timed(call: Callable[[Any], object], inputs: Sequence[Any], desc: str) -> list[float]:
    """Milliseconds per call, in input order."""
    samples = []
    for item in progress(inputs, total=len(inputs), desc=desc):
        started = time.perf_counter()
        call(item)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def rate(samples_ms: Sequence[float], items_per_call: float = 1.0) -> dict[str, Any]:
    """Calls and items per second over the calls' summed time, and the per-call latency."""
    seconds = sum(samples_ms) / 1000
    return {"calls": len(samples_ms), "items_per_call": items_per_call, "calls_per_second": len(samples_ms) / seconds,
            "items_per_second": len(samples_ms) * items_per_call / seconds, "latency_ms": percentiles(samples_ms)}


def growth(samples_ms: Sequence[float]) -> dict[str, float]:
    """Median write time of the first and the last tenth: whether a write costs more as the delta grows."""
    tenth = max(1, len(samples_ms) // 10)
    return {"first_tenth_p50_ms": float(np.median(samples_ms[:tenth])),
            "last_tenth_p50_ms": float(np.median(samples_ms[-tenth:]))}


def search_latency(engines: Mapping[str, SearchEngine], queries: dict[str, list[Query]], candidate_k: int,
                   *, warmup: int = 5) -> dict[str, Any]:
    """p50/p95/p99 per collection state, direction and mode, one query at a time (``queries``: direction -> stored
    vectors), with the median time of each leg and of the rescoring. The states take turns query by query (in
    rotating order), so a change in the machine's load while they are timed falls on all of them alike."""
    out: dict[str, Any] = {state: {} for state in engines}
    states = list(engines.items())
    runs = [(direction, mode) for direction in queries for mode in MODES]
    for direction, mode in progress(runs, total=len(runs), desc=f"search latency, {len(engines)} states"):
        params = SearchParams(side=DIRECTIONS[direction][1], mode=mode, top_k=10, candidate_k=candidate_k)
        samples: dict[str, list[float]] = {state: [] for state in engines}
        legs: dict[str, list[dict[str, float]]] = {state: [] for state in engines}
        sample = queries[direction]
        for n, query in enumerate([*sample[:warmup], *sample]):
            for state, engine in states[n % len(states):] + states[:n % len(states)]:
                started = time.perf_counter()
                result = engine.search(query, params)
                if n >= warmup:
                    samples[state].append((time.perf_counter() - started) * 1000)
                    legs[state].append(result.timings_ms)
        for state, timed in samples.items():
            parts = {key: float(np.median([t[key] for t in legs[state]])) for key in legs[state][0]}
            out[state].setdefault(direction, {})[mode] = {**percentiles(timed), "parts_p50_ms": parts}
    return out


def index_bytes(root: Path) -> dict[str, int]:
    """The live version's files (of which its own checkpoint copy), the log and uploads, and everything under the
    collection directory (an index of the pre-version layout keeps its old files at the top until the publication
    after its first compaction)."""
    live, version = root / LIVE, current_version(root)
    checkpoint = version / CHECKPOINT_DIR
    return {"version": directory_bytes(version), "checkpoint": directory_bytes(checkpoint) if checkpoint.is_dir()
            else 0, "live": directory_bytes(live) if live.is_dir() else 0, "total": directory_bytes(root)}


# ----- inputs -----
def one_row(dense: np.ndarray, ids: np.ndarray, values: np.ndarray) -> EncodedItems:
    indptr = np.array([0, ids.size], np.int64)
    return EncodedItems(np.asarray(dense, np.float32)[None, :], SparseRows(indptr, ids.astype(np.int32),
                                                                            values.astype(np.float32)))


def stored_row(store: SideStore, row: int) -> EncodedItems:
    ids, values = store.sparse.row(row)
    return one_row(np.asarray(store.dense[row]), ids, values)


def with_terms(stats: CorpusStatistics, count: int, seed: int) -> EncodedItems:
    """``count`` synthetic items that each keep at least one term. A mixture of two short captions can lose every
    term, and a compaction publishing an item without terms fails (its Lucene index holds one document fewer
    than the side has rows), so such items are left out of the delta."""
    encoded = generate(stats, 2 * count + 16, seed=seed)
    rows = np.flatnonzero(encoded.sparse.terms_per_row() > 0)[:count]
    if rows.size < count:
        raise ValueError(f"the generator gave only {rows.size} of {count} items with terms")
    parts = [one_row(encoded.dense[r], *encoded.sparse.row(int(r))).sparse for r in rows]
    return EncodedItems(encoded.dense[rows], SparseRows.concatenate(parts))


def spread(count: int, total: int) -> list[int]:
    """``count`` rows evenly spread over ``total`` (fewer when there are fewer)."""
    return sorted({int(r) for r in np.linspace(0, total - 1, min(count, total))}) if total else []


class Record:
    """One write as ``LiveCollection.write_entries`` takes it: its side, id and logged entries (vectors included)."""

    def __init__(self, side: str, item_id: str, entries: list[dict[str, Any]]) -> None:
        self.side, self.item_id, self.entries = side, item_id, entries

    def write(self, live: LiveCollection) -> None:
        live.write_entries("upsert", self.side, self.item_id, self.entries)

    def as_logged(self, seq: int) -> dict[str, Any]:
        return {"seq": seq, "op": "upsert", "side": self.side, "id": self.item_id, "deletes": [],
                "entries": self.entries, "at": time.time()}


def image_record(item_id: str, image: EncodedItems, captions: Sequence[tuple[str, EncodedItems]]) -> Record:
    """An image with its captions, as ``add_image`` logs it (one record: the image's entry and one per caption)."""
    item = {"id": item_id, "captions": [text for text, _ in captions]}
    entries = [log_entry("images", item, image, 0)]
    entries += [log_entry("texts", {"id": f"{item_id}#{n}", "text": text, "image_id": item_id}, vectors, 0)
                for n, (text, vectors) in enumerate(captions)]
    return Record("images", item_id, entries)


def text_record(item_id: str, text: str, vectors: EncodedItems) -> Record:
    return Record("texts", item_id, [log_entry("texts", {"id": item_id, "text": text}, vectors, 0)])


# ----- the benchmark -----
class LiveBench:
    """The sections, each on a fresh copy of ``base`` (the pristine copy of the given index)."""

    def __init__(self, config: LiveBenchConfig, encoder: DuetEncoder, base: Path, work: Path,
                 image_root: Path) -> None:
        self.config, self.encoder, self.base_dir, self.work, self.image_root = config, encoder, base, work, image_root
        self.base = SearchEngine.open(base, encoder=encoder)  # read only: statistics, queries, items to re-add
        self.images, self.texts = self.base.reader.stores["images"], self.base.reader.stores["texts"]
        self.captions_per_image = max(1, round(len(self.texts.ids) / max(1, len(self.images.ids))))
        self._synthetic: tuple[Path, dict[str, Any]] | None = None

    def close(self) -> None:
        self.base.close()

    @contextlib.contextmanager
    def live_copy(self, name: str, source: Path | None = None) -> Iterator[LiveCollection]:
        """A fresh copy of ``source`` (default: the base) opened for writing; removed afterwards."""
        target = self.work / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source or self.base_dir, target, symlinks=True)  # keeps the relative ``current`` link
        live = LiveCollection.open(target, encoder=self.encoder, auto_compact_ratio=None)
        try:
            yield live
        finally:
            live.close()
            shutil.rmtree(target, ignore_errors=True)

    def text_queries(self, count: int) -> list[Query]:
        return stored_queries(self.texts)[::max(1, len(self.texts.ids) // count)][:count]

    def queries(self) -> dict[str, list[Query]]:
        count = self.config.latency_queries
        return {"t2i": self.text_queries(count),
                "i2t": stored_queries(self.images)[::max(1, len(self.images.ids) // count)][:count]}

    # -- 1. writes --
    def image_files(self, count: int) -> list[tuple[dict[str, Any], bytes]]:
        """Indexed images with their files' bytes (read beforehand: a write starts from bytes in memory)."""
        out = []
        for row in spread(count, len(self.images.ids)):
            item = self.images.items[row]
            path = self.image_root / str(item.get("path", item["id"]))
            if path.is_file():
                out.append((item, path.read_bytes()))
        if not out:
            raise FileNotFoundError(f"none of the index's image files are under {self.image_root} (pass --images)")
        return out

    def writes(self) -> dict[str, Any]:
        config = self.config
        with self.live_copy("writes") as live:
            images = self.image_files(config.image_adds)
            image_ms = _timed(lambda entry: live.add_image(entry[1], item_id=f"added-{entry[0]['id']}",
                                                           captions=entry[0].get("captions", [])),
                              images, "image adds")
            texts = [(n, self.texts.items[row]["text"]) for n, row in enumerate(spread(config.text_adds,
                                                                                       len(self.texts.ids)))]
            text_ms = _timed(lambda entry: live.add_text(entry[1], item_id=f"added-text-{entry[0]}"), texts,
                             "text adds")
            raw = self.raw_writes(live)
            victims = [self.images.ids[row] for row in spread(config.deletes, len(self.images.ids))]
            image_delete_ms = _timed(live.delete, victims, "image deletes")
            text_delete_ms = _timed(live.delete, [f"added-text-{n}" for n, _ in texts][:config.deletes],
                                    "text deletes")
            stats = live.stats()
        captions = float(np.mean([len(item.get("captions", [])) for item, _ in images]))
        return {"image_add": rate(image_ms, 1 + captions), "text_add": rate(text_ms),
                **raw, "image_delete": rate(image_delete_ms, 1 + self.captions_per_image),
                "text_delete": rate(text_delete_ms), "final_stats": stats,
                "image_bytes_mean": float(np.mean([len(data) for _, data in images]))}

    def raw_writes(self, live: LiveCollection) -> dict[str, Any]:
        """Image and text records with their vectors given (real items' vectors under new ids), and the log
        append alone (the same records, appended and fsynced to a scratch log)."""
        count = self.config.raw_writes
        image_rows = [r % len(self.images.ids) for r in range(count)]
        caption_rows: dict[str, list[int]] = {}
        for row, item in enumerate(self.texts.items):
            caption_rows.setdefault(str(item.get("image_id")), []).append(row)
        records = [image_record(f"raw-{n}-{self.images.ids[r]}", stored_row(self.images, r),
                                [(self.texts.items[t]["text"], stored_row(self.texts, t))
                                 for t in caption_rows.get(self.images.ids[r], [])])
                   for n, r in enumerate(image_rows)]
        texts = [text_record(f"raw-text-{n}", self.texts.items[n % len(self.texts.ids)]["text"],
                             stored_row(self.texts, n % len(self.texts.ids))) for n in range(count)]
        image_ms = _timed(lambda record: record.write(live), records, "image records, vectors given")
        text_ms = _timed(lambda record: record.write(live), texts, "text records, vectors given")
        scratch = WriteAheadLog(self.work / "scratch-wal.jsonl")
        try:
            append_ms = _timed(lambda n: scratch.append(records[n].as_logged(n + 1)), range(count), "log appends")
        finally:
            scratch.close()
            (self.work / "scratch-wal.jsonl").unlink(missing_ok=True)
        per_record = float(np.mean([len(r.entries) for r in records]))
        return {"image_record_vectors_given": {**rate(image_ms, per_record), **growth(image_ms)},
                "text_record_vectors_given": {**rate(text_ms), **growth(text_ms)},
                "log_append_fsync": rate(append_ms, per_record)}

    # -- 2. visibility --
    def visibility(self) -> dict[str, Any]:
        config = self.config
        rows = spread(2 * config.visibility_samples, len(self.texts.ids))
        samples = [(f"seen-{n}", self.texts.items[row]["text"]) for n, row in enumerate(rows)]
        half = len(samples) // 2
        with self.live_copy("visibility") as live:
            engine = live.engine
            queries = {item_id: engine.encode_text(text) for item_id, text in samples}
            same = self.same_thread(live, samples[:half], queries)
            other = self.other_thread(live, samples[half:], queries)
            images = self.image_visibility(live)
        return {"text_add_same_thread": same, "text_add_other_thread": other, "image_add_same_thread": images,
                "search": "dense, top 10, the item's own vector as the query"}

    @staticmethod
    def _found(engine: SearchEngine, query: Query, side: str, item_id: str) -> bool:
        hits = engine.search(query, SearchParams(side=side, mode="dense", top_k=10)).hits
        return any(hit.id == item_id for hit in hits)

    def _search_once(self, live: LiveCollection, query: Query, side: str) -> None:
        """One search as ``_first_hit`` makes it (for the time of one search alone)."""
        with live.searching() as engine:
            self._found(engine, query, side, "")

    def _first_hit(self, live: LiveCollection, query: Query, side: str, item_id: str) -> tuple[float, int]:
        """(ms from now until a search on this thread returns the item, searches it took); inf if never."""
        started, attempts = time.perf_counter(), 0
        while time.perf_counter() - started < VISIBLE_WITHIN_S:
            attempts += 1
            with live.searching() as engine:
                if self._found(engine, query, side, item_id):
                    return (time.perf_counter() - started) * 1000, attempts
        return float("inf"), attempts

    @staticmethod
    def _visible(delays_ms: list[float], attempts: list[int], search_ms: dict[str, float]) -> dict[str, Any]:
        found = [d for d in delays_ms if np.isfinite(d)]
        return {"samples": len(delays_ms), "never_found": len(delays_ms) - len(found),
                "ack_to_hit_ms": percentiles(found) if found else None,
                "max_ms": max(found) if found else None,
                "found_by_first_search": sum(a == 1 for a in attempts) / max(1, len(attempts)),
                "one_search_ms": search_ms}

    def same_thread(self, live: LiveCollection, samples: list[tuple[str, str]],
                    queries: dict[str, Query]) -> dict[str, Any]:
        delays, attempts = [], []
        for item_id, text in progress(samples, total=len(samples), desc="visibility, same thread"):
            live.add_text(text, item_id=item_id)
            delay, tries = self._first_hit(live, queries[item_id], "texts", item_id)  # from the acknowledgement
            delays.append(delay)
            attempts.append(tries)
        search_ms = time_calls(lambda q: self._search_once(live, q, "texts"), list(queries.values())[:50])
        return self._visible(delays, attempts, search_ms)

    def other_thread(self, live: LiveCollection, samples: list[tuple[str, str]],
                     queries: dict[str, Query]) -> dict[str, Any]:
        """A reader thread searches for the awaited item without pause; the delay is from the writer's
        acknowledgement to the end of the first search that returned the item (negative when that search began
        before the write returned: the segment is published before the acknowledgement)."""
        watcher = _Watcher(live, self._found)
        watcher.start()
        delays, began_before = [], 0
        try:
            for item_id, text in progress(samples, total=len(samples), desc="visibility, other thread"):
                watcher.await_item(item_id, queries[item_id])
                live.add_text(text, item_id=item_id)
                acked = time.perf_counter()
                hit = watcher.wait()
                delays.append((hit[1] - acked) * 1000 if hit else float("inf"))
                began_before += bool(hit and hit[0] < acked)
        finally:
            watcher.stop()
        found = [d for d in delays if np.isfinite(d)]
        return {"samples": len(delays), "never_found": len(delays) - len(found),
                "ack_to_hit_ms": percentiles(found) if found else None, "min_ms": min(found) if found else None,
                "max_ms": max(found) if found else None, "reader_searches": watcher.searches,
                "hit_by_a_search_begun_before_the_ack": began_before / max(1, len(found))}

    def image_visibility(self, live: LiveCollection) -> dict[str, Any]:
        files = self.image_files(self.config.visibility_images)
        engine = live.engine
        queries = [engine.encode_image(Image.open(io.BytesIO(data))) for _, data in files]
        delays, attempts = [], []
        for n, ((item, data), query) in enumerate(progress(list(zip(files, queries, strict=True)), total=len(files),
                                                           desc="visibility, images")):
            item_id = f"seen-image-{n}"
            live.add_image(data, item_id=item_id, captions=item.get("captions", []))
            delay, tries = self._first_hit(live, query, "images", item_id)
            delays.append(delay)
            attempts.append(tries)
        search_ms = time_calls(lambda q: self._search_once(live, q, "images"), queries)
        return self._visible(delays, attempts, search_ms)

    # -- 3. search latency, 4. compaction --
    def delta_records(self, with_captions: bool, count: int, seed: int) -> list[Record]:
        """``count`` new images (with captions when the collection has texts): synthetic mixtures of real items."""
        images = with_terms(CorpusStatistics.of(self.images), count, seed)
        captions = (with_terms(CorpusStatistics.of(self.texts), count * self.captions_per_image, seed + 1)
                    if with_captions else None)
        records = []
        for n in range(count):
            ids, values = images.sparse.row(n)
            own: list[tuple[str, EncodedItems]] = []
            for c in range(self.captions_per_image if captions is not None else 0):
                row = n * self.captions_per_image + c
                terms, weights = captions.sparse.row(row)  # type: ignore[union-attr]
                own.append((self.texts.items[row % len(self.texts.ids)]["text"],
                            one_row(captions.dense[row], terms, weights)))  # type: ignore[union-attr]
            records.append(image_record(f"delta-{seed}-{n}", one_row(images.dense[n], ids, values), own))
        return records

    def apply_delta(self, live: LiveCollection, share: float, *, seed: int = 1) -> dict[str, Any]:
        """Add ``share`` of the images (with their captions) and delete as many of the base's."""
        reader = live.reader
        base_ids = reader.stores["images"].ids
        count = max(1, round(share * len(base_ids)))
        records = self.delta_records("texts" in reader.stores, count, seed)
        write_ms = _timed(lambda record: record.write(live), records, f"delta {share:g}: writes")
        victims = [base_ids[row] for row in spread(count, len(base_ids))]
        delete_ms = _timed(live.delete, victims, f"delta {share:g}: deletes")
        return {"share": share, "images_added": count, "images_deleted": len(victims),
                "writes": {**rate(write_ms, float(np.mean([len(r.entries) for r in records]))), **growth(write_ms)},
                "deletes": {**rate(delete_ms), **growth(delete_ms)}, "stats": live.stats()}

    @staticmethod
    def compaction(live: LiveCollection) -> dict[str, Any]:
        before = index_bytes(live.index_dir)
        rows = {side: s["base"] + s["delta"] for side, s in live.stats()["sides"].items()}
        result = live.compact()
        items = sum(result.counts.values())
        return {"seconds": result.seconds, "rows_before": rows, "live_items": result.counts,
                "items_per_second": items / result.seconds, "seconds_per_100k_items": result.seconds * 1e5 / items,
                "bytes_before": before, "bytes_after": index_bytes(live.index_dir),
                "build_timings": live.engine.manifest.build.get("timings", {})}

    def delta_latency(self, share: float) -> dict[str, Any]:
        return self.delta_states(share, self.base_dir, self.base, self.queries())

    def delta_states(self, share: float, source: Path, base: SearchEngine,
                     queries: dict[str, list[Query]]) -> dict[str, Any]:
        """A copy of ``source`` given the delta, a copy of that copy (its log replayed on open) compacted, and
        search latency on the base, the delta and the compacted copy, timed in turns."""
        with self.live_copy(f"delta-{share:g}", source) as live:
            delta = self.apply_delta(live, share)
            started = time.perf_counter()
            with self.live_copy(f"compacted-{share:g}", live.index_dir) as compacted:
                reopen_seconds = time.perf_counter() - started
                compaction = self.compaction(compacted)
                latency = search_latency({"base": base, "delta": live.engine,
                                          "compacted": compacted.engine},
                                         queries, self.config.candidate_k)
        return {"delta": delta, "copy_and_reopen_seconds": reopen_seconds, "compaction": compaction,
                "latency": latency}

    def compaction_under_load(self) -> dict[str, Any]:
        """One compaction (a delta of the largest share) while a thread adds texts and another searches."""
        share = max(self.config.delta_shares)
        texts = [self.texts.items[row]["text"] for row in range(len(self.texts.ids))]
        with self.live_copy("under-load") as live:
            self.apply_delta(live, share, seed=7)
            load = _Load(live, texts, self.text_queries(50), self.config.candidate_k)
            load.start()
            try:
                compaction = self.compaction(live)
            finally:
                load.stop()
            missing = sum(1 for item_id in load.written if not _has(live.engine, item_id))
        return {"share": share, "compaction": compaction, "writes_meanwhile": len(load.written),
                "write_ms": percentiles(load.write_ms) if load.write_ms else None,
                "write_max_ms": max(load.write_ms, default=None), "searches_meanwhile": len(load.search_ms),
                "search_ms": percentiles(load.search_ms) if load.search_ms else None,
                "search_max_ms": max(load.search_ms, default=None), "failures": load.failures,
                "writes_missing_afterwards": missing}

    def termless_text(self) -> dict[str, Any]:
        """Compact a copy holding one text whose sparse vector is empty (a text of stopwords only, if the model has
        such texts): does the compaction publish a version that opens?"""
        text = next((t for t in TERMLESS_CANDIDATES
                     if self.encoder.encode_texts([t]).sparse.terms_per_row()[0] == 0), None)
        if text is None:
            return {"text": None, "note": "every candidate text has sparse terms under this model"}
        with self.live_copy("termless") as live:
            live.add_text(text, item_id="termless")
            try:
                live.compact()
                error = None
            except Exception as e:  # noqa: BLE001 - the failure is what this probe reports
                error = f"{type(e).__name__}: {e}".replace(str(live.index_dir), "<the copy>")
            try:
                SearchEngine.open(live.index_dir, encoder=self.encoder).close()
                opens = True
            except Exception:  # noqa: BLE001 - likewise
                opens = False
        return {"text": text, "compacted": error is None, "error": error, "published_version_opens": opens}

    # -- the synthetic collection --
    def synthetic_base(self) -> tuple[Path, dict[str, Any]]:
        """The synthetic images index, built once (by the scale benchmark's path) and kept for every share."""
        if self._synthetic is None:
            items = self.config.synthetic_items
            with synthetic_index(self.base, items, self.work, keep=True) as built:
                info = {"items": items, "build_seconds": built.build_seconds, "statistics": built.statistics,
                        "sparse_build_items_per_second": built.sparse_items_per_second}
            self._synthetic = (self.work / f"synthetic-{items}", info)
        return self._synthetic

    def synthetic(self, share: float) -> dict[str, Any]:
        path, info = self.synthetic_base()
        queries = {"t2i": caption_queries(self.base, self.config.synthetic_queries)}
        base = SearchEngine.open(path, encoder=self.encoder)  # read only: the untouched synthetic collection
        try:
            return {"collection": info, **self.delta_states(share, path, base, queries)}
        finally:
            base.close()


def _has(engine: SearchEngine, item_id: str) -> bool:
    try:
        engine.item(item_id)
    except KeyError:
        return False
    return True


class _Watcher:
    """A thread that searches for the awaited item without pause and notes when a search first returned it."""

    def __init__(self, live: LiveCollection, found: Callable[[SearchEngine, Query, str, str], bool]) -> None:
        self.live, self.found = live, found
        self.target: tuple[str, Query] | None = None
        self.hit: tuple[float, float] | None = None  # (search began, search ended)
        self.searches = 0
        self._seen, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def await_item(self, item_id: str, query: Query) -> None:
        self.hit = None
        self._seen.clear()
        self.target = (item_id, query)

    def wait(self) -> tuple[float, float] | None:
        self._seen.wait(VISIBLE_WITHIN_S)
        self.target = None
        return self.hit

    def _run(self) -> None:
        while not self._stop.is_set():
            target = self.target
            if target is None:
                time.sleep(0.0001)
                continue
            began = time.perf_counter()
            with self.live.searching() as engine:
                seen = self.found(engine, target[1], "texts", target[0])
            self.searches += 1
            if seen and self.target is target:
                self.hit = (began, time.perf_counter())
                self.target = None
                self._seen.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class _Load:
    """A writer adding texts and a reader searching (hybrid text->image), both timed, until stopped."""

    def __init__(self, live: LiveCollection, texts: list[str], queries: list[Query], candidate_k: int) -> None:
        self.live, self.texts, self.queries = live, texts, queries
        self.params = SearchParams(side="images", mode="hybrid", top_k=10, candidate_k=candidate_k)
        self.written: list[str] = []
        self.write_ms: list[float] = []
        self.search_ms: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._guarded, args=(f,), daemon=True)
                         for f in (self._write, self._search)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _guarded(self, loop: Callable[[int], None]) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                loop(n)
            except Exception as e:  # noqa: BLE001 - a failure during compaction is what this load counts
                self.failures.append(repr(e)[:200])
            n += 1

    def _write(self, n: int) -> None:
        item_id = f"meanwhile-{n}"
        started = time.perf_counter()
        self.live.add_text(self.texts[n % len(self.texts)], item_id=item_id)
        self.write_ms.append((time.perf_counter() - started) * 1000)
        self.written.append(item_id)

    def _search(self, n: int) -> None:
        started = time.perf_counter()
        with self.live.searching() as engine:
            engine.search(self.queries[n % len(self.queries)], self.params)
        self.search_ms.append((time.perf_counter() - started) * 1000)


# ----- the run -----
def load_encoder(config: LiveBenchConfig, base: Path) -> DuetEncoder:
    if config.checkpoint is not None:
        return DuetEncoder.from_checkpoint(config.checkpoint)
    manifest = read_manifest(base)
    path = manifest_path(current_version(base), manifest.checkpoint.path)
    if not path.is_dir():
        raise FileNotFoundError(f"the index's checkpoint {path} is not there: pass --checkpoint")
    return DuetEncoder.from_checkpoint(path)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def workspace(work: Path | None) -> Iterator[Path]:
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
        yield work
        return
    with tempfile.TemporaryDirectory(prefix="duet-live-") as tmp:
        yield Path(tmp)


def run_live(config: LiveBenchConfig, *, resume: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    single_thread()  # one thread for torch and FAISS: single-image encoding on a shared machine stays steady
    with workspace(config.work) as work:
        base = work / "base"
        shutil.rmtree(base, ignore_errors=True)
        shutil.copytree(config.index, base, symlinks=True)  # from here on only copies are opened
        manifest = read_manifest(base)
        encoder = load_encoder(config, base)
        image_root = config.images or manifest_path(config.index, str(manifest.collection.get("root", "")))
        key = {"index_manifest": _digest(current_version(base) / "manifest.json"),
               "content_hash": encoder.checkpoint.content_hash,
               "config": json.loads(config.model_dump_json(exclude={"out", "work", "checkpoint", "images"}))}
        sections = SectionStore(config.out, key)
        if resume:
            sections.resume()
        bench = LiveBench(config, encoder, base, work, image_root)
        try:
            report = measure(bench, sections)
        finally:
            bench.close()
        report |= {"index": str(config.index), "config": json.loads(config.model_dump_json()), "machine": machine(),
                   "threads": {"torch": 1, "faiss": 1, "compaction_lucene": "the index's recorded build threads"},
                   "checkpoint": {"content_hash": encoder.checkpoint.content_hash,
                                  "method": encoder.checkpoint.metadata.get("method")},
                   "collection": {side: s.count for side, s in manifest.sides.items()},
                   "seconds": time.perf_counter() - started, "sections": sections.log}
    sections.finish()
    return report


def measure(bench: LiveBench, sections: SectionStore) -> dict[str, Any]:
    config = bench.config
    report: dict[str, Any] = {"writes": sections.section("writes", bench.writes),
                              "visibility": sections.section("visibility", bench.visibility)}
    report["delta"] = {f"{s:g}": sections.section(f"delta-{s:g}", partial(bench.delta_latency, s))
                       for s in config.delta_shares}
    report["compaction_under_load"] = sections.section("compaction-under-load", bench.compaction_under_load)
    report["termless_text"] = sections.section("termless-text", bench.termless_text)
    if config.synthetic_items:
        report["synthetic"] = {f"{s:g}": sections.section(f"synthetic-{s:g}", partial(bench.synthetic, s))
                               for s in config.synthetic_shares}
    return report


# ----- the README -----
def _ms(stats: dict[str, float] | None, keys: tuple[str, ...] = ("p50", "p95", "p99")) -> str:
    return " / ".join(f"{stats[k]:.2f}" for k in keys) if stats else "n/a"


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f}"


def _write_rows(writes: dict[str, Any]) -> list[str]:
    names = {"image_add": "add_image, 1 image + its captions, encoding included",
             "text_add": "add_text, encoding included",
             "image_record_vectors_given": "image + captions record, vectors given (append, fsync, apply)",
             "text_record_vectors_given": "text record, vectors given (append, fsync, apply)",
             "log_append_fsync": "log append + fsync alone (image + captions record)",
             "image_delete": "delete an image (and its captions)", "text_delete": "delete a text"}
    rows = ["| write | calls | items per call | calls/s | items/s | latency p50 / p95 / p99 ms |",
            "|---|---:|---:|---:|---:|---|"]
    for key, name in names.items():
        r = writes[key]
        rows.append(f"| {name} | {r['calls']} | {r['items_per_call']:.1f} | {r['calls_per_second']:.1f} | "
                    f"{r['items_per_second']:.1f} | {_ms(r['latency_ms'])} |")
    return rows


def _visibility_rows(visibility: dict[str, Any]) -> list[str]:
    rows = ["| write, searched from | samples | never found | ack -> hit p50 / p95 / p99 ms | max ms | note |",
            "|---|---:|---:|---|---:|---|"]
    for key, name in (("text_add_same_thread", "add_text, the writing thread"),
                      ("image_add_same_thread", "add_image, the writing thread"),
                      ("text_add_other_thread", "add_text, another thread searching throughout")):
        v = visibility[key]
        if "found_by_first_search" in v:
            note = (f"found by the first search {100 * v['found_by_first_search']:.0f}%; one search alone p50 "
                    f"{v['one_search_ms']['p50']:.2f} ms")
        else:
            note = (f"{100 * v['hit_by_a_search_begun_before_the_ack']:.0f}% found by a search begun before the "
                    f"write returned; min {v['min_ms']:.2f} ms")
        rows.append(f"| {name} | {v['samples']} | {v['never_found']} | {_ms(v['ack_to_hit_ms'])} | "
                    f"{v['max_ms']:.2f} | {note} |")
    return rows


def _latency_rows(columns: dict[str, dict[str, Any]]) -> list[str]:
    """One row per direction and mode, one column per collection state: p50 / p95 / p99 ms."""
    rows = ["| direction | mode | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    first = next(iter(columns.values()))
    for direction, modes in first.items():
        for mode in modes:
            cells = [_ms(state.get(direction, {}).get(mode)) for state in columns.values()]
            rows.append(f"| {direction} | {mode} | " + " | ".join(cells) + " |")
    return rows


def _compaction_row(name: str, share: str, c: dict[str, Any]) -> str:
    before, after = c["bytes_before"], c["bytes_after"]
    return (f"| {name} | {share} | {sum(c['rows_before'].values()):,} | {sum(c['live_items'].values()):,} | "
            f"{c['seconds']:.1f} | {c['items_per_second']:,.0f} | {c['seconds_per_100k_items']:.1f} | "
            f"{_mb(before['version'])} ({_mb(before['checkpoint'])}) + {_mb(before['live'])} | "
            f"{_mb(after['version'])} ({_mb(after['checkpoint'])}) + {_mb(after['live'])} | "
            f"{_mb(before['total'])} -> {_mb(after['total'])} |")


def render_live(report: dict[str, Any]) -> str:
    config, machine = report["config"], report["machine"]
    lines = ["# Live collections: writes, time to searchable, search with a delta, compaction", "",
             "Generated by `python -m benchmarks live` from `report.json` (every number, with the sample counts, is "
             "there).", "", f"Machine: {machine.get('cpu') or machine.get('processor')}, {machine['cpus']} CPUs "
             f"(shared with other work: timings are noisy; latencies are medians and percentiles of single calls), "
             f"torch and FAISS on 1 thread. Index: `{report['index']}`, {report['collection']['images']:,} images and "
             f"{report['collection'].get('texts', 0):,} captions, checkpoint {report['checkpoint']['method']} "
             f"({report['checkpoint']['content_hash'][:12]}). Run: {report['seconds']:.0f} s"
             + (f", `{report['command']}`." if "command" in report else "."), "",
             "## Writes", "", *_write_rows(report["writes"]), "",
             "Items per second count an image with its captions as 1 + captions items. \"Vectors given\" records are "
             "written with `LiveCollection.write_entries`: the log append with its fsync, "
             "the apply to the delta and the publication of the new segments.", "",
             "## From acknowledgement to searchable", "", *_visibility_rows(report["visibility"]), "",
             "Each search is dense, top 10, with the new item's own vector; the time runs from the write's return "
             "to the end of the first search that returned the item (so it includes that search).", "",
             "## Search latency with a delta (one thread, p50 / p95 / p99 ms)", ""]
    lines += ["Each table times the untouched collection, a copy given a delta (items added and as many deleted) "
              "and that copy compacted, in turns query by query.", ""]
    for share, d in report["delta"].items():
        lines += [f"The index, delta {share} ({d['delta']['images_added']} images with their captions added, "
                  f"{d['delta']['images_deleted']} deleted; {config['latency_queries']} stored query vectors):", "",
                  *_latency_rows(d["latency"]), ""]
    for share, s in report.get("synthetic", {}).items():
        lines += [f"Synthetic {s['collection']['items']:,} images, delta {share} ({s['delta']['images_added']:,} "
                  f"added, {s['delta']['images_deleted']:,} deleted; text->image, {config['synthetic_queries']} real "
                  f"caption vectors):", "", *_latency_rows(s["latency"]), ""]
    lines += ["## Compaction", "", "| collection | delta share | rows before | live items | seconds | items/s | "
              "s per 100k items | MB before: version (its checkpoint) + log | after | whole directory MB |",
              "|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    lines += [_compaction_row("the index", share, d["compaction"]) for share, d in report["delta"].items()]
    lines += [_compaction_row(f"synthetic {s['collection']['items']:,}", share, s["compaction"])
              for share, s in report.get("synthetic", {}).items()]
    load = report["compaction_under_load"]
    lines += ["", f"Under load (the index, delta {load['share']:g}): compaction {load['compaction']['seconds']:.1f} s "
              f"while {load['writes_meanwhile']} texts were added (p50 / p95 / p99 {_ms(load['write_ms'])} ms, max "
              f"{load['write_max_ms'] or 0:.0f} ms) and {load['searches_meanwhile']} hybrid searches ran (p50 / p95 / "
              f"p99 {_ms(load['search_ms'])} ms, max {load['search_max_ms'] or 0:.0f} ms); failures: "
              f"{len(load['failures'])}; writes missing afterwards: {load['writes_missing_afterwards']}.", ""]
    lines += ["## Observations (from the numbers above)", "", *[f"- {line}" for line in observations(report)], ""]
    return "\n".join(lines)


def _ratios(latency: dict[str, Any], direction: str, state: str) -> str:
    base = latency["base"][direction]
    return ", ".join(f"{mode} x{latency[state][direction][mode]['p50'] / base[mode]['p50']:.1f}" for mode in base)


def _parts(latency: dict[str, Any], state: str, direction: str = "t2i", mode: str = "sparse") -> str:
    parts = latency[state][direction][mode].get("parts_p50_ms", {})
    return ", ".join(f"{name.removesuffix('_ms')} {ms:.2f}" for name, ms in parts.items())


def _synthetic_observation(share: str, s: dict[str, Any]) -> str:
    writes, c, latency = s["delta"]["writes"], s["compaction"], s["latency"]
    return (f"Synthetic {s['collection']['items']:,}, delta {share}: p50 with the delta / base: "
            f"{_ratios(latency, 't2i', 'delta')}; compacted / base: {_ratios(latency, 't2i', 'compacted')}. With "
            f"{s['delta']['images_deleted']:,} rows deleted, FAISS skips them inside its search and Lucene is asked "
            f"for about twice their share of k more (again, deeper, when short); sparse mode per part "
            f"(p50 ms): base {_parts(latency, 'base')}; with the delta {_parts(latency, 'delta')}. A write took "
            f"{writes['first_tenth_p50_ms']:.2f} ms (p50) in the first tenth of the delta and "
            f"{writes['last_tenth_p50_ms']:.2f} ms in the last; compaction {c['seconds']:.0f} s, "
            f"{c['seconds_per_100k_items']:.0f} s per 100k items.")


def observations(report: dict[str, Any]) -> list[str]:
    w, v = report["writes"], report["visibility"]
    add, given, log = (w[k]["latency_ms"]["p50"] for k in ("image_add", "image_record_vectors_given",
                                                           "log_append_fsync"))
    same, other = v["text_add_same_thread"], v["text_add_other_thread"]
    out = [f"Encoding is most of a write: add_image takes {add:.1f} ms (p50), the same record with its vectors given "
           f"{given:.2f} ms ({100 * given / add:.1f}%), of which the log append with its fsync {log:.2f} ms.",
           f"After the acknowledgement there is nothing to wait for: the writing thread's first search found the item "
           f"in {100 * same['found_by_first_search']:.0f}% of {same['samples']} text adds (ack -> hit p50 "
           f"{_ms(same['ack_to_hit_ms'], ('p50',))} ms, one search alone {same['one_search_ms']['p50']:.2f} ms); from "
           f"another thread p50 {_ms(other['ack_to_hit_ms'], ('p50',))} ms, never found: "
           f"{same['never_found'] + other['never_found']}."]
    for share, d in report["delta"].items():
        out.append(f"The index, delta {share}: p50 with the delta / base: t2i {_ratios(d['latency'], 't2i', 'delta')}; "
                   f"i2t {_ratios(d['latency'], 'i2t', 'delta')}; compacted / base: t2i "
                   f"{_ratios(d['latency'], 't2i', 'compacted')}.")
    out += [_synthetic_observation(share, s) for share, s in report.get("synthetic", {}).items()]
    for share, d in report["delta"].items():
        after = d["compaction"]["bytes_after"]
        kept = after["total"] - after["version"] - after["live"]
        if kept > 0.1 * after["total"]:
            out.append(f"After compacting the index (delta {share}) its directory holds {_mb(after['total'])} MB: "
                       f"the new version ({_mb(after['version'])} MB, of which {_mb(after['checkpoint'])} MB its own "
                       f"checkpoint copy) and {_mb(kept)} MB left from before (an index of the layout without "
                       f"versions keeps its old top-level files until the next publication).")
            break
    probe = report.get("termless_text", {})
    if probe.get("text") is not None:
        out.append(f"A text without sparse terms ({probe['text']!r}, accepted by add_text): compaction "
                   f"{'succeeded' if probe['compacted'] else 'failed: ' + str(probe['error'])}; the version it "
                   f"published {'opens' if probe['published_version_opens'] else 'does not open'}.")
    return out
