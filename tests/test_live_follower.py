"""Followers: read replicas of a live collection beside its one writer. They see the writer's writes and deletes after
a refresh (and before every read), follow its compactions to the new version, wait for a torn last line to be
completed without cutting it, refuse writes, and need neither the writer's lock nor ``live/``."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer import live as live_module
from indexer import lucene as lucene_module
from indexer.live import LiveCollection, ReadOnlyCollectionError, read_log
from indexer.lucene import JAVA_CALLS
from indexer.params import SearchParams
from indexer.search import SearchEngine
from indexer.store import IndexUnavailableError
from tests.conftest import noise_png as png

pytestmark = pytest.mark.java  # every test opens a Lucene index


@pytest.fixture()
def writer(index_copy: Path) -> Iterator[LiveCollection]:
    collection = LiveCollection.open(index_copy, auto_compact_ratio=None)
    yield collection
    collection.close()


@pytest.fixture()
def follower(writer: LiveCollection, index_copy: Path) -> Iterator[LiveCollection]:
    collection = LiveCollection.follow(index_copy, encoder=writer.engine.encoder)
    yield collection
    collection.close()


def found(engine: SearchEngine, text: str, side: str = "texts") -> set[str]:
    """Every id a dense search for ``text`` returns on ``side`` (each once)."""
    params = SearchParams(side=side, mode="dense", top_k=10_000, candidate_k=10_000)
    hits = engine.search(engine.encode_text(text), params).hits
    assert len({h.id for h in hits}) == len(hits)
    return {h.id for h in hits}


def wal(index: Path) -> Path:
    return index / "live" / "wal.jsonl"


def test_a_write_is_searchable_on_the_follower(writer: LiveCollection, follower: LiveCollection) -> None:
    assert not follower.refresh()  # nothing written yet: nothing changes
    writer.add_text("a red square on a blue field", item_id="w1")
    assert follower.refresh()
    assert "w1" in found(follower.engine, "a red square on a blue field")
    assert not follower.refresh()
    writer.add_image(png(1), item_id="i1.png", captions=["a green dot"])
    with follower.searching() as engine:  # no explicit refresh: reading does it
        assert "i1.png#0" in found(engine, "a green dot")
        assert "i1.png" in found(engine, "a green dot", side="images")
        assert engine.item("i1.png")[1]["captions"] == ["a green dot"]
    path = follower.image_path("images", follower.engine.item("i1.png")[1])
    assert path is not None and path.read_bytes() == png(1)
    assert follower.last_seq == writer.last_seq == 2
    assert follower.stats()["sides"] == writer.stats()["sides"]


def test_a_delete_is_gone_on_the_follower(writer: LiveCollection, follower: LiveCollection) -> None:
    victim = writer.reader.stores["images"].ids[2]
    caption = next(i for i in writer.reader.stores["texts"].ids if i.startswith(f"{victim}#"))
    text = writer.engine.item(caption)[1]["text"]
    assert victim in found(follower.engine, text, side="images")
    writer.delete(victim)
    with follower.searching() as engine:
        assert victim not in found(engine, text, side="images") and caption not in found(engine, text)
        with pytest.raises(KeyError):
            engine.item(victim)
    writer.add_text("written then deleted", item_id="gone")
    writer.delete("gone")
    assert follower.refresh()
    assert "gone" not in found(follower.engine, "written then deleted")


def test_the_follower_switches_to_a_compacted_version(writer: LiveCollection, follower: LiveCollection,
                                                      index_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = writer.reader.stores["images"].ids[0]
    writer.add_text("before the compaction", item_id="before")
    writer.delete(victim)
    follower.refresh()
    rewrite = live_module.WriteAheadLog.rewrite
    fresh_saw: list[tuple[str, set[str]]] = []
    refreshed_to: list[tuple[bool, str]] = []

    def publish_while_writing(*args, **kwargs):  # type: ignore[no-untyped-def]
        writer.add_text("written during the compaction", item_id="during")  # after the compaction's snapshot
        return publish(*args, **kwargs)

    def rewrite_after_a_look(self, records):  # type: ignore[no-untyped-def]
        # the new version is live, the log not yet rewritten (it still holds the records the version includes):
        # a follower opened now, and one refreshed now, skip those by sequence number
        fresh = LiveCollection.follow(index_copy, encoder=writer.engine.encoder)
        try:
            fresh_saw.append((fresh.reader.directory.name, found(fresh.engine, "written during the compaction")))
        finally:
            fresh.close()
        refreshed_to.append((follower.refresh(), follower.reader.directory.name))
        return rewrite(self, records)

    publish = live_module.publish_index
    monkeypatch.setattr(live_module, "publish_index", publish_while_writing)
    monkeypatch.setattr(live_module.WriteAheadLog, "rewrite", rewrite_after_a_look)
    with follower.searching() as old_engine:
        old_version = old_engine.reader.directory
        result = writer.compact()
        assert follower.refresh() is False  # the rewritten log (a new file) holds only records applied already
        new_engine = follower.engine
        assert new_engine.reader.directory.name == result.generation != old_version.name
        assert "before" in found(old_engine, "before the compaction")  # a reader of the old version goes on
    monkeypatch.undo()
    assert refreshed_to == [(True, result.generation)]
    [(name, ids)] = fresh_saw
    assert name == result.generation and {"during", "before"} <= ids
    assert result.wal_seq == 2 and [r["seq"] for r in read_log(wal(index_copy))[0]] == [3]
    writer.add_text("after the compaction", item_id="after")
    with follower.searching() as engine:
        assert engine.reader is new_engine.reader and engine.manifest.wal_seq == 2
        ids = found(engine, "written during the compaction")
        assert {"before", "during", "after"} <= ids
        assert victim not in found(engine, "anything", side="images")
        assert engine.item("after")[1]["text"] == "after the compaction"
    assert follower.stats()["sides"] == writer.stats()["sides"] and follower.last_seq == 4
    writer.compact()  # a second compaction, refreshed on the next read
    assert follower.reader.directory == writer.reader.directory
    assert {"before", "during", "after"} <= found(follower.engine, "after the compaction")


def test_a_torn_last_line_waits_and_is_not_cut(writer: LiveCollection, follower: LiveCollection,
                                               index_copy: Path) -> None:
    writer.add_text("the first write", item_id="first")
    writer.add_text("the second write", item_id="second")
    log = wal(index_copy)
    whole = log.read_bytes()
    line = whole[whole.rindex(b"\n", 0, len(whole) - 1) + 1:]
    with log.open("r+b") as handle:  # as if the second write were still being written
        handle.truncate(len(whole) - len(line))
    with log.open("ab") as handle:
        handle.write(line[:len(line) // 2])
    torn = log.read_bytes()
    assert follower.refresh()
    assert "first" in found(follower.engine, "the first write")
    assert "second" not in found(follower.engine, "the second write") and follower.last_seq == 1
    assert not follower.refresh() and log.read_bytes() == torn  # left as it is
    with log.open("ab") as handle:
        handle.write(line[len(line) // 2:])
    assert follower.refresh()
    assert "second" in found(follower.engine, "the second write") and follower.last_seq == 2
    writer.add_text("the third write", item_id="third")  # the writer goes on appending after the completed line
    assert "third" in found(follower.engine, "the third write")


def test_a_follower_refuses_writes(writer: LiveCollection, follower: LiveCollection, index_copy: Path) -> None:
    before = wal(index_copy).read_bytes()
    victim = follower.reader.stores["images"].ids[0]
    for call in (lambda: follower.add_text("a text", item_id="t"), lambda: follower.add_image(png(2)),
                 lambda: follower.delete(victim), lambda: follower.write_entries("delete", "images", victim, []),
                 follower.compact):
        with pytest.raises(ReadOnlyCollectionError, match="read-only.*writer"):
            call()
    assert wal(index_copy).read_bytes() == before
    assert follower.engine.item(victim)[0] == "images" and not follower.needs_compaction()
    assert follower.follower and not writer.follower


def test_followers_need_no_lock_and_coexist(writer: LiveCollection, index_copy: Path) -> None:
    writer.add_text("written before the followers opened", item_id="early")  # replayed when they open
    first = LiveCollection.follow(index_copy, encoder=writer.engine.encoder)  # the writer holds its lock
    second = LiveCollection.follow(index_copy, encoder=writer.engine.encoder)
    try:
        for follower in (first, second):
            assert "early" in found(follower.engine, "written before the followers opened")
        writer.add_text("written while two follow", item_id="both")
        for follower in (first, second):
            assert "both" in found(follower.engine, "written while two follow")
    finally:
        first.close()
        second.close()


def test_a_follower_started_before_the_writer_created_live(index_copy: Path) -> None:
    shutil.rmtree(index_copy / "live", ignore_errors=True)
    follower = LiveCollection.follow(index_copy)
    try:
        assert not (index_copy / "live").exists()  # a follower creates nothing
        assert not follower.refresh() and follower.stats()["wal_bytes"] == 0
        writer = LiveCollection.open(index_copy, encoder=follower.engine.encoder, auto_compact_ratio=None)
        try:
            writer.add_text("the writer came later", item_id="late")
            with follower.searching() as engine:
                assert "late" in found(engine, "the writer came later")
        finally:
            writer.close()
    finally:
        follower.close()


def test_nothing_changed_costs_no_read(writer: LiveCollection, follower: LiveCollection,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    writer.add_text("one write", item_id="one")
    assert follower.refresh()

    def no_read(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the log was read though nothing changed")

    monkeypatch.setattr(live_module.LogTail, "read", no_read)
    for _ in range(3):
        assert not follower.refresh()
        with follower.searching() as engine:
            assert engine.item("one")[0] == "texts"


def test_a_compaction_landing_while_the_follower_opens_the_previous_one(
        writer: LiveCollection, follower: LiveCollection, monkeypatch: pytest.MonkeyPatch) -> None:
    """The follower opens version 2, the writer meanwhile publishes version 3 and rewrites the log to its tail: the
    log skips the sequence numbers version 2 lacks, so the follower goes on to version 3 within the same refresh."""
    writer.add_text("before both", item_id="a")
    writer.compact()  # version 2 (wal_seq 1)
    writer.add_text("between the compactions", item_id="b")  # seq 2: in version 3 only
    opened = live_module.IndexReader
    landed: list[str] = []

    def open_then_compact(*args, **kwargs):  # type: ignore[no-untyped-def]
        reader = opened(*args, **kwargs)
        if not landed:
            landed.append(reader.directory.name)
            monkeypatch.setattr(live_module, "IndexReader", opened)  # the writer's own compaction opens plainly
            writer.compact()  # version 3 (wal_seq 2)
            writer.add_text("after both", item_id="c")  # seq 3: the rewritten log's first record
        return reader

    monkeypatch.setattr(live_module, "IndexReader", open_then_compact)
    assert follower.refresh()
    assert landed and landed[0] != writer.reader.directory.name  # it had opened version 2
    assert follower.reader.directory == writer.reader.directory and follower.last_seq == 3
    ids = found(follower.engine, "between the compactions")
    assert {"a", "b", "c"} <= ids


def test_threads_read_the_follower_while_the_writer_writes_and_compacts(writer: LiveCollection,
                                                                        follower: LiveCollection) -> None:
    query = follower.engine.encode_text("a red square on blue")
    failures: list[BaseException] = []
    searches = [0]
    stop = threading.Event()

    def search_loop() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                with follower.searching() as engine:
                    for mode in ("dense", "sparse", "hybrid"):
                        hits = engine.search(query, SearchParams(side="images", mode=mode, top_k=5)).hits
                        assert len(hits) == 5 and len({h.id for h in hits}) == 5
                searches[0] += 1
            except BaseException as e:  # noqa: BLE001 - any failure is what this test counts
                failures.append(e)

    readers = [threading.Thread(target=search_loop) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        for n in range(4):
            writer.add_image(png(200 + n), item_id=f"w{n}.png", captions=[f"caption {n}"])
        writer.delete("w0.png")
        writer.compact()
        writer.add_text("after", item_id="after")
        time.sleep(0.2)
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=60)
    assert not failures, failures[:3]
    assert searches[0] > 0
    assert follower.stats()["sides"] == writer.stats()["sides"]
    assert follower.reader.directory == writer.reader.directory


def test_lucene_runs_under_the_java_lock_and_a_closed_engine_lets_go_of_it(
        follower: LiveCollection, index_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyjnius binds a Java method to its receiver on an object every instance of the class shares (see
    indexer/lucene.py JAVA_CALLS): a search's Lucene calls hold the process's lock, so reader threads never run
    them on each other's searchers or query maps; a closed engine has released its searchers."""
    def held_by_another_thread() -> bool:
        taken: list[bool] = []

        def probe() -> None:
            taken.append(JAVA_CALLS.acquire(blocking=False))
            if taken[0]:
                JAVA_CALLS.release()

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        return not taken[0]

    held: list[bool] = []
    query_map = lucene_module.ImpactSearcher._query  # where a search makes its Java query map

    def checked(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        held.append(held_by_another_thread())
        return query_map(self, *args, **kwargs)

    monkeypatch.setattr(lucene_module.ImpactSearcher, "_query", checked)
    query = follower.engine.encode_text("a red square on blue")
    with follower.searching() as engine:
        for mode in ("sparse", "hybrid"):
            assert len(engine.search(query, SearchParams(side="images", mode=mode, top_k=5, plan="index")).hits) == 5
    assert held and all(held)
    engine = SearchEngine.open(index_copy, encoder=follower.engine.encoder)
    engine.close()
    assert engine.reader.lucene == {}
    with pytest.raises(IndexUnavailableError, match="closed"):
        engine.search(query, SearchParams(side="images", mode="sparse", plan="index"))
