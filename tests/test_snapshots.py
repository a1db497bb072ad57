"""Snapshots: taken while writes go on, restored to the same rankings as the source at the snapshot's point; a
tampered, newer, foreign or unsafe archive is refused; a kill -9 mid-take leaves no archive and loses nothing."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from indexer import snapshots
from indexer.build import verify_index
from indexer.live import LiveCollection, read_log
from indexer.params import SearchParams
from indexer.query import Query
from indexer.snapshots import (
    RestoreTargetExistsError,
    SnapshotCorruptError,
    SnapshotError,
    SnapshotFormatError,
    SnapshotMismatchError,
    SnapshotNotFoundError,
    SnapshotStore,
    UnsupportedCollectionError,
    read_snapshot_manifest,
    restore_snapshot,
)
from tests.conftest import noise_png as png

pytestmark = pytest.mark.java  # every test opens a Lucene index
MODES = ("dense", "sparse", "hybrid")
ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def searching(live: LiveCollection) -> Iterator[Any]:
    """The collection's search engine (``searching()`` where the collection has one, else its engine)."""
    if hasattr(live, "searching"):
        with live.searching() as engine:
            yield engine
    else:
        yield live.engine


def _queries(live: LiveCollection) -> list[Query]:
    with searching(live) as engine:
        return [engine.encode_text("a red square on blue"), engine.encode_text("green dot"),
                engine.encode_image(Image.open(io.BytesIO(png(1))))]


def rankings(live: LiveCollection, queries: list[Query]) -> dict[tuple[int, str, str], list[tuple[Any, ...]]]:
    """Every query's ranking (ids and scores) per side and mode."""
    out = {}
    with searching(live) as engine:
        for n, query in enumerate(queries):
            for side in ("images", "texts"):
                for mode in MODES:
                    hits = engine.search(query, SearchParams(side=side, mode=mode, top_k=25, candidate_k=200)).hits
                    out[n, side, mode] = [(h.id, round(h.dense, 5), round(h.sparse, 4), round(h.fused, 4))
                                          for h in hits]
    assert all(out.values())
    return out


def _prefill(live: LiveCollection) -> None:
    """Writes of every kind before the snapshot: an image upload with captions, a text, a replacement, a delete."""
    live.add_image(png(1), item_id="up1.png", captions=["a red square on blue", "a green dot"])
    live.add_text("a blue stripe on white", item_id="t-pre")
    live.add_text("a yellow dot on black", item_id="t-pre")  # replaced
    live.delete(live.reader.stores["images"].ids[2])


def _at_point(source: Path, seq: int, target: Path) -> LiveCollection:
    """The source collection as it was at ``seq``: a copy whose log holds only the records up to it."""
    shutil.copytree(source, target, symlinks=True)
    wal = target / "live" / "wal.jsonl"
    kept = [line for line in wal.read_bytes().splitlines(keepends=True) if json.loads(line[9:])["seq"] <= seq]
    wal.write_bytes(b"".join(kept))
    return LiveCollection.open(target, auto_compact_ratio=None)


def test_a_snapshot_taken_while_writes_go_on_restores_the_point(index_copy: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    live = LiveCollection.open(index_copy, auto_compact_ratio=None)
    acked: list[tuple[int, float]] = []  # (seq, when acknowledged)
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            result = live.add_text(f"a red square written {n}", item_id=f"w{n}")
            acked.append((result.seq, time.monotonic()))
            n += 1

    slow_add = snapshots._add

    def add(*args: Any) -> Any:  # a slow disk: the copy takes long enough for writes to land meanwhile
        time.sleep(0.02)
        return slow_add(*args)

    monkeypatch.setattr(snapshots, "_add", add)
    try:
        _prefill(live)
        thread = threading.Thread(target=writer)
        thread.start()
        while len(acked) < 3:
            time.sleep(0.01)
        before_take = max(seq for seq, _ in acked)
        started = time.monotonic()
        info = SnapshotStore(tmp_path / "snaps").take(live, "during-writes")
        ended = time.monotonic()
        while len(acked) < before_take + 3:
            time.sleep(0.01)
        stop.set()
        thread.join()
    finally:
        stop.set()
        live.close()
    # every write acknowledged before the take is in it; the writes went on during the copy (not blocked by it)
    assert info.wal_seq >= before_take
    assert any(started < when < ended for _, when in acked), "no write was acknowledged while the copy ran"
    assert info.wal_seq < max(seq for seq, _ in acked)

    restored = tmp_path / "restored"
    result = restore_snapshot(tmp_path / "snaps" / "during-writes.tar", restored)
    assert result.wal_seq == info.wal_seq and result.counts == info.counts
    assert verify_index(restored)["ok"]
    copy = LiveCollection.open(restored, auto_compact_ratio=None)
    reference = _at_point(index_copy, info.wal_seq, tmp_path / "reference")
    try:
        assert copy.last_seq == info.wal_seq
        stats = copy.stats()["sides"]
        assert {side: s["live"] for side, s in stats.items()} == info.counts == read_snapshot_manifest(
            tmp_path / "snaps" / "during-writes.tar").counts
        for seq, _ in acked:  # writes up to the point are in, none after it
            assert _has(copy, f"w{seq - 5}") == (seq <= info.wal_seq), seq  # the thread's first write is seq 5
        image = copy.image_path("images", _item(copy, "up1.png"))
        assert image is not None and image.read_bytes() == png(1)
        queries = _queries(copy)
        assert rankings(copy, queries) == rankings(reference, queries)
        copy.add_text("written after the restore", item_id="after")  # the restored collection is writable
        assert copy.last_seq == info.wal_seq + 1
    finally:
        copy.close()
        reference.close()


def _item(live: LiveCollection, item_id: str) -> dict[str, Any]:
    with searching(live) as engine:
        item: dict[str, Any] = engine.item(item_id)[1]
        return item


def _has(live: LiveCollection, item_id: str) -> bool:
    try:
        _item(live, item_id)
    except KeyError:
        return False
    return True


def test_a_compaction_during_the_copy_leaves_the_version_being_copied(index_copy: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    live = LiveCollection.open(index_copy, auto_compact_ratio=None)
    try:
        _prefill(live)
        queries = _queries(live)
        expected = rankings(live, queries)
        original = snapshots._version_files
        compacted = []

        def compact_first(version: Path) -> Any:  # the version is pinned: the compaction must leave it on disk
            compacted.append(live.compact())
            assert version.is_dir() and (index_copy / "current").resolve() != version.resolve()
            return original(version)

        monkeypatch.setattr(snapshots, "_version_files", compact_first)
        info = SnapshotStore(tmp_path / "snaps").take(live)
        assert compacted and info.wal_seq == 4
    finally:
        live.close()
    restored = tmp_path / "restored"
    restore_snapshot(SnapshotStore(tmp_path / "snaps").path(info.name), restored)
    copy = LiveCollection.open(restored, auto_compact_ratio=None)
    try:
        assert rankings(copy, queries) == expected
    finally:
        copy.close()


@pytest.fixture(scope="module")
def archive(tiny_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One snapshot of a copy of the tiny index with writes in its log (read only: tests copy it to change it)."""
    root = tmp_path_factory.mktemp("snapshot")
    shutil.copytree(tiny_index, root / "index", symlinks=True)
    live = LiveCollection.open(root / "index", auto_compact_ratio=None)
    try:
        _prefill(live)
        info = SnapshotStore(root / "snaps").take(live, "base")
    finally:
        live.close()
    return SnapshotStore(root / "snaps").path(info.name)


def _rewritten(source: Path, target: Path, change: dict[str, bytes | None], add: dict[str, bytes] | None = None,
               links: dict[str, str] | None = None) -> Path:
    """A copy of an archive with members replaced (None: left out), added, or links added."""
    with tarfile.open(source) as old, tarfile.open(target, "w") as new:
        for member in old.getmembers():
            data = old.extractfile(member).read()  # type: ignore[union-attr]
            if member.name in change:
                if change[member.name] is None:
                    continue
                data = change[member.name]  # type: ignore[assignment]
                member.size = len(data)
            new.addfile(member, io.BytesIO(data))
        for name, data in (add or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            new.addfile(info, io.BytesIO(data))
        for name, to in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, to
            new.addfile(info)
    return target


def test_a_tampered_archive_is_refused_naming_the_file(archive: Path, tmp_path: Path) -> None:
    with tarfile.open(archive) as tar:
        member = tar.getmember("version/images/dense.npy")
    tampered = tmp_path / "tampered.tar"
    shutil.copyfile(archive, tampered)
    with tampered.open("r+b") as handle:  # one flipped byte, the size unchanged
        handle.seek(member.offset_data + member.size - 1)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(SnapshotCorruptError, match="version/images/dense.npy does not match its checksum"):
        restore_snapshot(tampered, tmp_path / "restored")
    assert not (tmp_path / "restored").exists() and not list(tmp_path.glob(".restored*"))

    missing = _rewritten(archive, tmp_path / "missing.tar", {"live/wal.jsonl": None})
    with pytest.raises(SnapshotCorruptError, match=r"missing \['live/wal.jsonl'\]"):
        restore_snapshot(missing, tmp_path / "restored")
    extra = _rewritten(archive, tmp_path / "extra.tar", {}, add={"version/images/extra.bin": b"x"})
    with pytest.raises(SnapshotCorruptError, match=r"unexpected \['version/images/extra.bin'\]"):
        restore_snapshot(extra, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


def test_a_newer_or_unknown_format_is_refused_by_name(archive: Path, tmp_path: Path) -> None:
    manifest = json.loads(read_snapshot_manifest(archive).model_dump_json())
    newer = _rewritten(archive, tmp_path / "newer.tar",
                       {"snapshot.json": json.dumps({**manifest, "format": "duet-snapshot/2", "new": 1}).encode()})
    with pytest.raises(SnapshotFormatError, match=r"duet-snapshot/2 is newer than this version reads "
                                                  r"\(duet-snapshot/1\)"):
        restore_snapshot(newer, tmp_path / "restored")
    other = _rewritten(archive, tmp_path / "other.tar",
                       {"snapshot.json": json.dumps({**manifest, "format": "something/1"}).encode()})
    with pytest.raises(SnapshotFormatError, match="unknown snapshot format 'something/1'"):
        restore_snapshot(other, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


def test_a_snapshot_of_another_checkpoint_and_an_existing_target_are_refused(archive: Path, tmp_path: Path) -> None:
    bound = read_snapshot_manifest(archive).checkpoint["content_hash"]
    with pytest.raises(SnapshotMismatchError, match=f"bound to checkpoint {bound[:16]}, not to {'ab' * 8}"):
        restore_snapshot(archive, tmp_path / "restored", checkpoint_hash="ab" * 32)
    (tmp_path / "exists").mkdir()
    with pytest.raises(RestoreTargetExistsError):
        restore_snapshot(archive, tmp_path / "exists")
    result = restore_snapshot(archive, tmp_path / "restored", checkpoint_hash=bound)
    assert result.checkpoint_hash == bound and verify_index(tmp_path / "restored")["ok"]


@pytest.mark.parametrize("unsafe", ["../evil", "/tmp/evil", "version/../../evil", "link"])
def test_members_outside_the_root_or_links_are_refused(archive: Path, tmp_path: Path, unsafe: str) -> None:
    if unsafe == "link":
        bad = _rewritten(archive, tmp_path / "bad.tar", {}, links={"version/images/evil": "/etc/passwd"})
    else:
        bad = _rewritten(archive, tmp_path / "bad.tar", {}, add={unsafe: b"evil"})
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(SnapshotCorruptError, match="unsafe member path|not a plain file"):
        restore_snapshot(bad, work / "restored")
    assert not (work / "restored").exists() and not (tmp_path / "evil").exists()


def test_the_store_lists_gets_and_deletes(archive: Path, tmp_path: Path, tiny_index: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    assert store.list() == []
    (tmp_path / "snaps").mkdir()
    shutil.copyfile(archive, tmp_path / "snaps" / "base.tar")
    (tmp_path / "snaps" / ".half.tar.0000.tmp").write_bytes(b"partial")  # a dead take's
    (tmp_path / "snaps" / "junk.tar").write_bytes(b"not a tar")
    [info] = store.list()
    assert info == store.get("base") and info.name == "base" and info.wal_seq == 4 and info.bytes > 0
    assert info.counts["images"] == 32 and info.counts["texts"] == 32 * 5 - 5 + 2 + 1
    for bad in ("../x", ".hidden", "a/b", "", "x" * 200):
        with pytest.raises(SnapshotError, match="invalid snapshot name"):
            store.get(bad)
    with pytest.raises(SnapshotNotFoundError):
        store.path("nope")
    store.delete("base")
    with pytest.raises(SnapshotNotFoundError):
        store.delete("base")
    with pytest.raises(UnsupportedCollectionError, match="sharded collections are not supported yet"):
        store.take(object(), "x")  # type: ignore[arg-type]


_TAKER = """
import sys, time
from indexer import snapshots
from indexer.live import LiveCollection
live = LiveCollection.open(sys.argv[1], auto_compact_ratio=None)
print(live.add_text("acknowledged before the snapshot", item_id="durable").seq, flush=True)
add = snapshots._add
def slow(*args):
    print("copying", flush=True)
    time.sleep(60)
    return add(*args)
snapshots._add = slow
snapshots.SnapshotStore(sys.argv[2]).take(live, "killed")
"""


def test_kill_9_during_a_take_leaves_no_archive_and_loses_nothing(index_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "snaps"
    child = subprocess.Popen([sys.executable, "-c", _TAKER, str(index_copy), str(out)], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout.readline().strip() == "1"  # type: ignore[union-attr]
        assert child.stdout.readline().strip() == "copying"  # type: ignore[union-attr]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert not (out / "killed.tar").exists() and list(out.glob(".killed.tar.*.tmp"))
    store = SnapshotStore(out)
    assert store.list() == []
    assert verify_index(index_copy)["ok"]
    live = LiveCollection.open(index_copy, auto_compact_ratio=None)
    try:
        assert _item(live, "durable")["text"] == "acknowledged before the snapshot"
        info = store.take(live, "killed")  # the name is free, the dead take's temporary file removed
    finally:
        live.close()
    assert info.wal_seq == 1 and [i.name for i in store.list()] == ["killed"]
    assert not list(out.glob(".*.tmp"))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "indexer", "--log-level", "WARNING", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cli_snapshot_and_restore_round_trip(index_copy: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    live = LiveCollection.open(index_copy, auto_compact_ratio=None)
    try:
        _prefill(live)
        queries = _queries(live)
        expected = rankings(live, queries)
    finally:
        live.close()
    taken = _cli("snapshot", "--index", str(index_copy), "--name", "cli-1")
    assert taken.returncode == 0, taken.stderr
    summary = json.loads(taken.stdout)
    archive = Path(summary["path"])
    assert archive == tmp_path / "index.snapshots" / "cli-1.tar" and summary["wal_seq"] == 4
    again = _cli("snapshot", "--index", str(index_copy), "--name", "cli-1")
    assert again.returncode == 2 and "exists already" in again.stderr
    other = _cli("restore", "--snapshot", str(archive), "--index", str(tmp_path / "r"), "--checkpoint", "ab" * 32)
    assert other.returncode == 2 and "bound to checkpoint" in other.stderr and not (tmp_path / "r").exists()
    restored = _cli("restore", "--snapshot", str(archive), "--index", str(tmp_path / "r"),
                    "--checkpoint", str(tiny_checkpoint))
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["wal_seq"] == 4
    copy = LiveCollection.open(tmp_path / "r", auto_compact_ratio=None)
    try:
        assert rankings(copy, queries) == expected
    finally:
        copy.close()
    assert [r["seq"] for r in read_log(tmp_path / "r" / "live" / "wal.jsonl")[0]] == [1, 2, 3, 4]


def test_cli_refuses_a_sharded_collection(tmp_path: Path) -> None:
    from indexer.cli import main

    (tmp_path / "sharded").mkdir()
    (tmp_path / "sharded" / "collection.json").write_text("{}")
    assert main(["snapshot", "--index", str(tmp_path / "sharded")]) == 2
