"""A collection that changes while it serves: add, replace and delete items, with nothing acknowledged lost.

Layout beside the index's versions (``<index>/current -> versions/<id>``):
  live/wal.jsonl      the write-ahead log: one record per write, ``<crc32> <json>`` a line, fsynced before the
                      write is acknowledged; the vectors are in the record, so replay needs no encoder pass
  live/uploads/       uploaded image files (content-addressed), fsynced before their record
  live/.writer.lock   held by the one process that writes the collection

A write is encoded, logged, then applied to each side's segment (indexer/segments.py): the delta it appends and
the rows it deletes are searchable from the next search on. Opening a collection replays the records its live
version does not include (``manifest.wal_seq``); a torn last line (a write that was never acknowledged) is cut.
``compact`` writes base + delta - deletes as a new version through the build's publication (one link swap, while
searches go on), opens it, re-applies the writes that arrived meanwhile, swaps it in and rewrites the log to
those writes only. A crash at any point leaves the old version with its full log, or the new one with a log
whose already-included records are skipped by sequence number.

Followers (``LiveCollection.follow``) serve the same collection from other processes (read replicas) while one
writer writes: they take no lock and write nothing. ``refresh``, done before every read, applies the log's new
whole lines (read on from the byte offset already consumed; a torn last line is a write in progress, read when
complete, never cut) and, when the writer compacted (``current`` names another version), opens that version as a
new generation (readers of the old one finish on it) and replays the log on from its ``manifest.wal_seq``. A log
that skips a sequence number belongs to a version not yet opened: it is read again after that version.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from core.atomic import CURRENT, atomic_file, current_version
from core.cancel import Cancellation
from core.encoder import DuetEncoder, EncodedItems, SparseRows
from indexer.build import AUTO_FACTORY, EncodedSide, IndexBuildConfig, publish_index
from indexer.index_reader import IndexReader
from indexer.search import SearchEngine
from indexer.segments import Delta, Segment, SideView, live_row
from indexer.store import LIVE, SIDES, UPLOADS, image_file, read_manifest
from indexer.writes import (
    IdConflictError,
    PreparedWrite,
    Upload,
    prepare_image,
    prepare_text,
)

_logger = logging.getLogger(__name__)
WAL = "wal.jsonl"
LOCK = ".writer.lock"
COMPACTION_FLOOR = 10_000
_FOLLOW_ATTEMPTS = 5  # passes of one refresh: each compaction that lands during it costs one


class ItemNotFoundError(KeyError):
    """No live item has this id."""


class CollectionLockedError(RuntimeError):
    """Another process writes this collection."""


class ReadOnlyCollectionError(RuntimeError):
    """A write to a follower: only the one writer process writes the collection."""


@dataclass(frozen=True)
class WriteResult:
    seq: int
    op: Literal["upsert", "delete"]
    id: str
    side: str
    replaced: bool
    written: dict[str, list[str]]  # side -> ids added
    deleted: dict[str, list[str]]  # side -> ids removed (a replaced item, an image's captions)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CompactionResult:
    generation: str
    counts: dict[str, int]
    seconds: float
    wal_seq: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ----- the log -----
def _array(text: str, dtype: type) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).copy()


def _line(record: Mapping[str, Any]) -> bytes:
    body = json.dumps(record, separators=(",", ":"), ensure_ascii=True)
    return f"{zlib.crc32(body.encode('ascii')):08x} {body}\n".encode("ascii")


def _record(raw: bytes) -> dict[str, Any] | None:
    """One log line's record; None for a torn (no newline yet) or corrupt line."""
    if not raw.endswith(b"\n") or len(raw) < 10:
        return None
    crc, body = raw[:8], raw[9:-1]
    try:
        if int(crc, 16) != zlib.crc32(body):
            return None
        record: dict[str, Any] = json.loads(body)
    except ValueError:
        return None
    return record


def _intact(handle: BinaryIO) -> tuple[list[dict[str, Any]], int]:
    """The intact records from the handle's position on, and the bytes they span (the first bad line ends them)."""
    records: list[dict[str, Any]] = []
    good = 0
    for raw in handle:
        record = _record(raw)
        if record is None:
            break
        records.append(record)
        good += len(raw)
    return records, good


def read_log(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The log's intact records in order, and the byte length they span (a torn or corrupt tail ends the log)."""
    if not path.is_file():
        return [], 0
    with path.open("rb") as handle:
        return _intact(handle)


class WriteAheadLog:
    """Append-only, one fsync per record: a record is durable when ``append`` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        records, good = read_log(path)
        if path.is_file() and path.stat().st_size != good:
            _logger.warning("%s: cutting %d bytes after the last intact record", path, path.stat().st_size - good)
            with path.open("r+b") as handle:
                handle.truncate(good)
                os.fsync(handle.fileno())
        self.records = records
        self._handle = path.open("ab")

    def append(self, record: Mapping[str, Any]) -> None:
        self._handle.write(_line(record))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def rewrite(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Replace the log with ``records`` (atomically: the old log until the new one is complete)."""
        self._handle.close()
        with atomic_file(self.path) as handle:
            for record in records:
                handle.write(_line(record))  # type: ignore[attr-defined]
        self._handle = self.path.open("ab")

    def size(self) -> int:
        return self.path.stat().st_size if self.path.is_file() else 0

    def close(self) -> None:
        self._handle.close()


class LogTail:
    """A follower's place in a log another process appends to. It only reads: whole intact lines are taken, a torn
    last line (a write in progress) waits for the next read, and a replaced file (a compaction's rewrite, a new
    inode) is read from its start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0  # bytes of the file read as records
        self._inode: int | None = None
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime) at the last read; None: read anyway

    def _signature(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return (-1, 0, 0)  # no log yet: the writer has not opened the collection
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def unchanged(self) -> bool:
        """Nothing written since the last read (one stat call)."""
        return self._signature() == self._seen

    def restart(self) -> None:
        """Read the whole log again on the next read (a newly opened version replays it from the start)."""
        self.offset, self._seen = 0, None

    def read(self) -> list[dict[str, Any]]:
        """The intact records after the ones read before: the whole log if it is another file than last time."""
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            self.offset, self._inode, self._seen = 0, None, (-1, 0, 0)
            return []
        with handle:
            st = os.fstat(handle.fileno())  # the file opened, whatever the path names by now
            if st.st_ino != self._inode or st.st_size < self.offset:
                self.offset, self._inode = 0, st.st_ino
            handle.seek(self.offset)
            records, good = _intact(handle)
        self.offset += good
        self._seen = (st.st_ino, st.st_size, st.st_mtime_ns)  # taken before the read: a later append differs
        return records

    def size(self) -> int:
        return self._signature()[1]


# ----- one side's changes -----
class DeltaBuffer:
    """The writer's side of a segment: append-only buffers (grown by doubling) and the deleted rows."""

    def __init__(self, view: SideView) -> None:
        self.base = view.base
        self.base_count = len(view.base.ids)
        dim = int(view.base.dense.shape[1])
        self.dense = np.zeros((16, dim), np.float32)
        self.indptr = np.zeros(17, np.int64)
        self.indices = np.zeros(64, np.int32)
        self.values = np.zeros(64, np.float32)
        self.ids: list[str] = []
        self.items: list[dict[str, Any]] = []
        self.count = 0
        self.deleted: np.ndarray = np.zeros(0, np.int64)
        self.row_of: dict[str, int] = {}
        self.removed: set[str] = set()

    def live_row(self, item_id: str) -> int | None:
        return live_row(item_id, self.row_of, self.removed, self.base.row_of)

    def item(self, row: int) -> dict[str, Any]:
        return self.base.items[row] if row < self.base_count else self.items[row - self.base_count]

    def delete(self, item_id: str) -> bool:
        row = self.live_row(item_id)
        if row is None:
            return False
        self.deleted = np.union1d(self.deleted, [row]).astype(np.int64)
        self.row_of.pop(item_id, None)
        self.removed.add(item_id)
        return True

    @staticmethod
    def _grown(array: np.ndarray, needed: int) -> np.ndarray:
        if needed <= array.shape[0]:
            return array
        grown = np.zeros((max(needed, 2 * array.shape[0]), *array.shape[1:]), array.dtype)
        grown[:array.shape[0]] = array  # a new buffer: snapshots keep the old one, still valid for their rows
        return grown

    def append(self, item: dict[str, Any], dense: np.ndarray, term_ids: np.ndarray, weights: np.ndarray) -> None:
        n, start = self.count, int(self.indptr[self.count])
        self.dense = self._grown(self.dense, n + 1)
        self.indptr = self._grown(self.indptr, n + 2)
        self.indices = self._grown(self.indices, start + term_ids.size)
        self.values = self._grown(self.values, start + term_ids.size)
        self.dense[n] = dense
        self.indices[start:start + term_ids.size] = term_ids
        self.values[start:start + term_ids.size] = weights
        self.indptr[n + 1] = start + term_ids.size
        self.ids.append(str(item["id"]))
        self.items.append(item)
        self.count = n + 1
        self.row_of[str(item["id"])] = self.base_count + n
        self.removed.discard(str(item["id"]))

    def snapshot(self) -> Segment:
        n = self.count
        nnz = int(self.indptr[n])
        delta = Delta(self.dense[:n], SparseRows(self.indptr[:n + 1], self.indices[:nnz], self.values[:nnz]),
                      self.ids, self.items, n)
        return Segment(self.base_count, delta, self.deleted, dict(self.row_of), frozenset(self.removed))

    def live_rows(self) -> tuple[list[dict[str, Any]], EncodedItems]:
        """Every live item in row order (base, then delta) with its vectors: what a compaction publishes."""
        rows = np.arange(self.base_count + self.count, dtype=np.int64)
        rows = rows[~np.isin(rows, self.deleted)]
        base_rows, delta_rows = rows[rows < self.base_count], rows[rows >= self.base_count] - self.base_count
        dense = np.concatenate([np.asarray(self.base.dense[base_rows], np.float32), self.dense[delta_rows]])
        parts = [self.base.sparse.row(int(r)) for r in base_rows]
        parts += [(self.indices[self.indptr[r]:self.indptr[r + 1]], self.values[self.indptr[r]:self.indptr[r + 1]])
                  for r in delta_rows]
        indptr = np.concatenate([[0], np.cumsum([ids.size for ids, _ in parts])]).astype(np.int64)
        indices = np.concatenate([ids for ids, _ in parts]) if parts else np.zeros(0, np.int32)
        values = np.concatenate([v for _, v in parts]) if parts else np.zeros(0, np.float32)
        items = [self.item(int(r)) for r in rows]
        return items, EncodedItems(dense, SparseRows(indptr, indices.astype(np.int32), values.astype(np.float32)))


@dataclass
class _Generation:
    """One published version in use: its reader, the writer's buffers over it, and who still reads it."""

    reader: IndexReader
    buffers: dict[str, DeltaBuffer]
    readers: int = 0
    retired: bool = False


class LiveCollection:
    """An index plus its write-ahead log: searches see every acknowledged write; see the module docstring."""

    def __init__(self, index_dir: Path, engine: IndexReader, wal: WriteAheadLog | None,
                 lock_handle: io.BufferedWriter | None, *, auto_compact_ratio: float | None,
                 tail: LogTail | None = None) -> None:
        """A writer has ``wal`` and ``lock_handle``; a follower has neither, only ``tail`` (``follow``)."""
        self.index_dir, self.wal, self._lock_handle, self._tail = index_dir, wal, lock_handle, tail
        self.auto_compact_ratio = auto_compact_ratio
        self._lock = threading.RLock()  # writes, swaps, reader counts and a follower's refreshes
        self._compacting = threading.Lock()  # one compaction at a time
        self._since_snapshot: list[dict[str, Any]] | None = None  # during a compaction: the writes after its snapshot
        self._generation = self._new_generation(engine)
        self.last_seq = engine.manifest.wal_seq
        for record in wal.records if wal is not None else ():
            if record["seq"] > engine.manifest.wal_seq:
                self._apply(self._generation, record)
                self.last_seq = record["seq"]
        self._publish_segments(self._generation)

    @classmethod
    def open(cls, index_dir: str | Path, *, checkpoint: str | Path | None = None, encoder: DuetEncoder | None = None,
             auto_compact_ratio: float | None = 0.1) -> LiveCollection:
        """Open a built index for writing (it becomes live: ``live/`` appears beside its versions)."""
        root = Path(index_dir)
        read_manifest(root)  # a missing or foreign directory is refused before anything is created in it
        live = root / LIVE
        (live / UPLOADS).mkdir(parents=True, exist_ok=True)
        handle = (live / LOCK).open("ab")
        try:  # before loading anything: a second writer is refused at once
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            handle.close()
            raise CollectionLockedError(f"{root} is being written by another process (it holds {live / LOCK})") \
                from e
        engine: IndexReader | None = None
        try:
            engine = IndexReader(root, checkpoint=checkpoint, encoder=encoder)
            return cls(root, engine, WriteAheadLog(live / WAL), handle, auto_compact_ratio=auto_compact_ratio)
        except BaseException:
            handle.close()
            if engine is not None:
                engine.close()
            raise

    @classmethod
    def follow(cls, index_dir: str | Path, *, checkpoint: str | Path | None = None,
               encoder: DuetEncoder | None = None) -> LiveCollection:
        """Open a collection read-only beside its writer (another process): no lock is taken and nothing is written
        (not even ``live/``); ``refresh`` (done before each read) catches up with the writer's log."""
        root = Path(index_dir)
        read_manifest(root)
        engine = IndexReader(root, checkpoint=checkpoint, encoder=encoder)
        try:
            collection = cls(root, engine, None, None, auto_compact_ratio=None, tail=LogTail(root / LIVE / WAL))
        except BaseException:
            engine.close()
            raise
        try:
            collection.refresh()
        except BaseException:
            collection.close()
            raise
        return collection

    @property
    def follower(self) -> bool:
        return self._tail is not None

    # ----- reading -----
    @property
    def reader(self) -> IndexReader:
        """The current generation's index reader."""
        self.refresh()
        return self._generation.reader

    @property
    def engine(self) -> SearchEngine:
        """The read engine over the current generation (``searching`` holds one generation for a whole read)."""
        return SearchEngine.over(self.reader)

    @contextlib.contextmanager
    def reading(self) -> Iterator[IndexReader]:
        """The current generation's reader, kept open until the block ends even if a compaction replaces it."""
        with self._lock:
            self.refresh()
            generation = self._generation
            generation.readers += 1
        try:
            yield generation.reader
        finally:
            with self._lock:
                generation.readers -= 1
                if generation.retired and generation.readers == 0:
                    generation.reader.close()

    @contextlib.contextmanager
    def searching(self) -> Iterator[SearchEngine]:
        """The read engine over the current generation, kept open until the block ends (``reading``)."""
        with self.reading() as reader:
            yield SearchEngine.over(reader)

    def image_path(self, side: str, item: dict[str, Any], *, root: Path | None = None) -> Path | None:
        """Where an image item's file is: an upload, or under ``root`` (default: the recorded collection root),
        never outside it."""
        if side != "images":
            return None
        return image_file(item, index_dir=self.index_dir, root=root or self.reader.collection_root)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self.refresh()
            generation = self._generation
            sides = {side: {"base": buffer.base_count, "delta": buffer.count, "deleted": int(buffer.deleted.size),
                            "live": buffer.base_count + buffer.count - int(buffer.deleted.size)}
                     for side, buffer in generation.buffers.items()}
            log = self.wal if self.wal is not None else self._tail
            return {"generation": generation.reader.directory.name, "sides": sides,
                    "wal_bytes": log.size() if log is not None else 0,
                    "last_seq": self.last_seq, "base_wal_seq": generation.reader.manifest.wal_seq,
                    "needs_compaction": self.needs_compaction()}

    def needs_compaction(self) -> bool:
        if self.auto_compact_ratio is None:
            return False
        with self._lock:
            buffers = self._generation.buffers.values()
            changed = sum(b.count + int(b.deleted.size) for b in buffers)
            base = sum(b.base_count for b in buffers)
        # a small collection compacts as one of COMPACTION_FLOOR items would: its delta is scored exactly and cheaply,
        # while every compaction rebuilds both legs (seconds), and an empty one being filled would otherwise rebuild
        # them after every write
        return changed > 0 and changed >= self.auto_compact_ratio * max(base, COMPACTION_FLOOR)

    # ----- writing -----
    def add_image(self, data: bytes, *, item_id: str | None = None, captions: Sequence[str] = (),
                  metadata: Mapping[str, Any] | None = None) -> WriteResult:
        """An image (its file's bytes) and its captions; a live item with the same id is replaced, captions too."""
        self._writable()  # before the encoder's work
        reader = self.reader
        return self.apply(prepare_image(reader.encoder, reader.manifest.pruning, reader.sides, data, item_id=item_id,
                                        captions=captions, metadata=metadata, payload=reader.manifest.payload))

    def add_text(self, text: str, *, item_id: str | None = None,
                 metadata: Mapping[str, Any] | None = None) -> WriteResult:
        """A text item of its own on the texts side; a live text with the same id is replaced."""
        self._writable()
        reader = self.reader
        return self.apply(prepare_text(reader.encoder, reader.manifest.pruning, reader.sides, text, item_id=item_id,
                                       metadata=metadata, payload=reader.manifest.payload))

    def apply(self, write: PreparedWrite) -> WriteResult:
        """A prepared write (indexer/writes.py): its upload stored first, then logged and applied."""
        self._writable()
        if write.upload is not None:
            self._store_upload(write.upload)
        return self.write_entries(write.op, write.side, write.item_id, write.entries)

    def delete(self, item_id: str) -> WriteResult:
        """Remove a live item (an image with its captions)."""
        self._writable()
        with self._lock:
            side = self._side_of(self._generation, item_id)
            if side is None:
                raise ItemNotFoundError(item_id)
            return self.write_entries("delete", side, item_id, [])

    def write_entries(self, op: Literal["upsert", "delete"], side: str, item_id: str,
                      entries: list[dict[str, Any]]) -> WriteResult:
        """Log and apply one write of items already checked and encoded (``log_entry``): what every add and delete
        ends in, also for callers that have their vectors."""
        wal = self._writable()
        with self._lock:
            generation = self._generation
            other = self._side_of(generation, item_id)
            if op == "upsert" and other not in (None, side):
                raise IdConflictError(f"id {item_id!r} belongs to an item on the {other} side; ids are unique "
                                      "across the collection")
            deletes = self._displaced(generation, side, item_id)
            seq = self.last_seq + 1
            record: dict[str, Any] = {"seq": seq, "op": op, "side": side, "id": item_id, "deletes": deletes,
                                      "entries": entries, "at": time.time()}
            wal.append(record)  # durable from here on: the write is acknowledged after this returns
            self.last_seq = seq
            if self._since_snapshot is not None:
                self._since_snapshot.append(record)
            self._apply(generation, record)
            self._publish_segments(generation)
        written: dict[str, list[str]] = {}
        for entry in entries:
            written.setdefault(entry["side"], []).append(entry["item"]["id"])
        deleted: dict[str, list[str]] = {}
        for gone_side, gone_id in deletes:
            deleted.setdefault(gone_side, []).append(gone_id)
        replaced = op == "upsert" and [side, item_id] in deletes
        return WriteResult(seq, op, item_id, side, replaced, written, deleted)

    def _writable(self) -> WriteAheadLog:
        """The log to write to: a follower has none (its writes would fork the collection)."""
        if self.wal is None:
            raise ReadOnlyCollectionError(f"{self.index_dir} is followed read-only (LiveCollection.follow): writes go "
                                          "to its writer, the process that opened it with LiveCollection.open")
        return self.wal

    def _side_of(self, generation: _Generation, item_id: str) -> str | None:
        for side, buffer in generation.buffers.items():
            if buffer.live_row(item_id) is not None:
                return side
        return None

    @staticmethod
    def _displaced(generation: _Generation, side: str, item_id: str) -> list[list[str]]:
        """What a write of ``item_id`` on ``side`` removes: the live item of that id and, for an image, its
        captions (the caption items ``<id>#<n>``)."""
        buffers = generation.buffers
        if buffers[side].live_row(item_id) is None:
            return []
        gone = [[side, item_id]]
        if side == "images" and "texts" in buffers:
            item = buffers["images"].item(int(buffers["images"].live_row(item_id)))  # type: ignore[arg-type]
            gone += [["texts", f"{item_id}#{n}"] for n in range(len(item.get("captions", [])))
                     if buffers["texts"].live_row(f"{item_id}#{n}") is not None]
        return gone

    @staticmethod
    def _apply(generation: _Generation, record: Mapping[str, Any]) -> None:
        """A logged write onto the buffers (the same on replay as when it was written)."""
        buffers = generation.buffers
        for side, item_id in record["deletes"]:
            buffers[side].delete(item_id)
        for entry in record["entries"]:
            buffers[entry["side"]].append(entry["item"], _array(entry["dense"], np.float32),
                                          _array(entry["terms"], np.int32), _array(entry["weights"], np.float32))

    @staticmethod
    def _publish_segments(generation: _Generation) -> None:
        for side, buffer in generation.buffers.items():
            generation.reader.set_segment(side, buffer.snapshot())

    def _new_generation(self, engine: IndexReader) -> _Generation:
        return _Generation(engine, {side: DeltaBuffer(engine.view(side)) for side in SIDES if side in engine.stores})

    def _store_upload(self, upload: Upload) -> None:
        path, data = self.index_dir / LIVE / UPLOADS / upload.name, upload.data
        if path.is_file():
            return  # content-addressed: the same bytes are already stored
        with atomic_file(path) as handle:
            handle.write(data)  # type: ignore[attr-defined]
        fd = os.open(path.parent, os.O_RDONLY)  # the rename itself must survive a crash before the log record
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ----- compaction -----
    def compact(self, cancel: Cancellation | None = None) -> CompactionResult:
        """Publish base + delta - deletes as a new version and switch to it; searches and writes go on meanwhile
        (writes wait only for the final switch). Cancelled (``Cancelled``) before it publishes, it leaves the
        collection as it was: the live version, the log and the writes since."""
        wal = self._writable()
        with self._compacting:
            started = time.perf_counter()
            with self._lock:
                generation, seq = self._generation, self.last_seq
                sides = {side: EncodedSide(*buffer.live_rows()) for side, buffer in generation.buffers.items()}
                self._since_snapshot = []
            try:
                fresh = self._publish(generation.reader, sides, seq, cancel)
            except BaseException:
                with self._lock:
                    self._since_snapshot = None
                raise
            with self._lock:
                replacement = self._new_generation(fresh)
                tail, self._since_snapshot = self._since_snapshot, None
                for record in tail:
                    self._apply(replacement, record)
                self._publish_segments(replacement)
                self._generation = replacement
                wal.rewrite(tail)
                self._retire(generation)
            result = CompactionResult(fresh.directory.name, {s: len(sides[s].items) for s in sides},
                                      time.perf_counter() - started, seq)
            _logger.info("compacted %s into %s: %s in %.1fs (%d writes since carried over)", self.index_dir,
                         result.generation, result.counts, result.seconds, len(tail))
            return result

    def _publish(self, engine: IndexReader, sides: dict[str, EncodedSide], seq: int,
                 cancel: Cancellation | None) -> IndexReader:
        """The live rows as the index's new version (including the log up to ``seq``), opened."""
        collection = {**engine.manifest.collection, "root": str(engine.collection_root)}
        publish_index(self._build_config(engine), engine.encoder, sides, collection, wal_seq=seq,
                      keep_at_top=(LIVE,), cancel=cancel)
        return IndexReader(self.index_dir, encoder=engine.encoder)

    @staticmethod
    def _build_config(engine: IndexReader) -> IndexBuildConfig:
        """The new version is built like the old one: its FAISS factory, impact scale and pruning."""
        manifest = engine.manifest
        recorded = manifest.build.get("config", {})
        # a build's own choice (auto) is made again for the new counts; a side's explicit factory is kept
        factories = ({AUTO_FACTORY} if recorded.get("faiss_factory") == AUTO_FACTORY
                     else {s.faiss_factory for s in manifest.sides.values()})
        stores = {s.dense_store for s in manifest.sides.values()}
        # the checkpoint is copied from the live version's own copy (the encoder may have been loaded from a
        # version a previous compaction removed, or from another collection)
        return IndexBuildConfig(checkpoint=engine.checkpoint_dir, output=engine.index_dir,
                                faiss_factory=factories.pop() if len(factories) == 1 else "Flat",
                                dense_store=stores.pop() if len(stores) == 1 else "float32",
                                sparse_scale=float(manifest.quantization["scale"]),
                                prune_image_terms=manifest.pruning.get("images"),
                                prune_text_terms=manifest.pruning.get("texts"), payload=manifest.payload,
                                threads=int(recorded.get("threads", 2)), dataset=None)

    @staticmethod
    def _retire(generation: _Generation) -> None:
        """A generation swapped out: closed now, or by its last reader (``reading``)."""
        generation.retired = True
        if generation.readers == 0:
            generation.reader.close()

    # ----- following -----
    def refresh(self) -> bool:
        """A follower catches up with its writer (the log written since, a compaction's new version); whether
        anything changed. Cheap when nothing did (a readlink and a stat): done before every read. A writer is
        always current."""
        if self._tail is None:
            return False
        with self._lock:
            if self._live_version() == self._generation.reader.directory and self._tail.unchanged():
                return False
            changed = False
            for _ in range(_FOLLOW_ATTEMPTS):
                behind, step = self._follow_step(self._tail)
                changed |= step
                if not behind:
                    return changed
            raise RuntimeError(f"{self.index_dir}: the log does not continue the live version's sequence "
                               f"(at seq {self.last_seq}); its writer must reopen the collection")

    def _live_version(self) -> Path:
        """The version ``current`` names now (as IndexReader resolves it, so the two compare)."""
        try:
            return self.index_dir / os.readlink(self.index_dir / CURRENT)
        except OSError:
            return current_version(self.index_dir)  # not a link: a plain index or a copy that followed it

    def _follow_step(self, tail: LogTail) -> tuple[bool, bool]:
        """One pass: open the live version if it changed, apply the new records; (still behind, changed). Behind:
        the log skipped a sequence number or the version moved meanwhile (a compaction since: the next pass)."""
        generation, last = self._generation, self.last_seq
        if self._live_version() != generation.reader.directory:
            generation = self._new_generation(IndexReader(self.index_dir, encoder=generation.reader.encoder))
            last = generation.reader.manifest.wal_seq
            tail.restart()
        last, continuous = self._apply_following(generation, tail.read(), last)
        changed = generation is not self._generation or last != self.last_seq
        if changed:
            self._publish_segments(generation)
        if generation is not self._generation:
            old, self._generation = self._generation, generation
            self._retire(old)
        self.last_seq = last
        if not continuous:
            tail.restart()  # the rest of this log is read again, after the version it belongs to
        return not continuous or self._live_version() != generation.reader.directory, changed

    @classmethod
    def _apply_following(cls, generation: _Generation, records: Sequence[Mapping[str, Any]],
                         last: int) -> tuple[int, bool]:
        """The records after ``last`` onto the buffers while their sequence numbers run on; (the last applied,
        whether they all did). A gap means the log is a later compaction's, whose version is not open yet."""
        for record in records:
            seq = int(record["seq"])
            if seq <= last:
                continue  # in the version already, or applied before
            if seq != last + 1:
                return last, False
            cls._apply(generation, record)
            last = seq
        return last, True

    def close(self) -> None:
        with self._lock:
            if self.wal is not None:
                self.wal.close()
            self._generation.reader.close()
            if self._lock_handle is not None:
                self._lock_handle.close()

    # ----- snapshots (indexer/snapshots.py) -----
    @contextlib.contextmanager
    def snapshot_point(self) -> Iterator[tuple[Path, bytes, int, dict[str, int]]]:
        """A consistent point of the collection to copy while writes go on: (the live version's directory, the
        log's lines after that version up to the point, the point's sequence number (``last_seq``), each side's
        live item count). Writes wait only while the point is taken; a compaction in flight is waited for first.
        The version stays on disk until the block ends: held as a reader holds it (a publication meanwhile leaves it
        to the next one), or, for an index from before versions, by keeping compactions off for the block."""
        from core.atomic import reading_version

        wal = self.wal
        if wal is None:
            raise ReadOnlyCollectionError(f"{self.index_dir} is followed read-only: its writer (the process that "
                                          "opened it with LiveCollection.open) takes its snapshots")
        self._compacting.acquire()
        compacting = True
        try:
            with self._lock:
                generation, seq = self._generation, self.last_seq
                version, base_seq = generation.reader.directory, generation.reader.manifest.wal_seq
                counts = {side: b.base_count + b.count - int(b.deleted.size) for side, b in generation.buffers.items()}
                log = wal.path.open("rb")  # this file to the end, even after a compaction rewrites the log
                size = os.fstat(log.fileno()).st_size  # every append before the point is complete: it held the lock
            with log, contextlib.ExitStack() as pinned:
                if (self.index_dir / CURRENT).is_symlink():
                    if pinned.enter_context(reading_version(self.index_dir)) != version:
                        raise RuntimeError(f"{self.index_dir}: the live version is not its writer's ({version})")
                    self._compacting.release()
                    compacting = False
                lines = []
                for raw in io.BytesIO(log.read(size)):
                    record = _record(raw)
                    if record is None:
                        raise RuntimeError(f"{wal.path}: a damaged record before seq {seq}")
                    if base_seq < int(record["seq"]) <= seq:
                        lines.append(raw)
                yield version, b"".join(lines), seq, counts
        finally:
            if compacting:
                self._compacting.release()
