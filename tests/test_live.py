"""Live collections: writes are searchable at once in every mode with exact scores, deletes are gone everywhere,
the log survives restarts and kill -9, and compaction publishes the same results while searches go on."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer import live as live_module
from indexer.live import (
    CollectionLockedError,
    ItemNotFoundError,
    LiveCollection,
    read_log,
)
from indexer.params import MODES, SearchParams
from indexer.query import Query
from indexer.search import SearchEngine
from indexer.writes import WriteRejectedError
from tests.conftest import noise_png as png

pytestmark = pytest.mark.java  # every test opens a Lucene index




@pytest.fixture()
def live(index_copy: Path):  # type: ignore[no-untyped-def]
    collection = LiveCollection.open(index_copy, auto_compact_ratio=None)
    yield collection
    collection.close()


def every_hit(engine: SearchEngine, query: Query, side: str, mode: str) -> dict[str, tuple[float, float, float]]:
    params = SearchParams(side=side, mode=mode, top_k=10_000, candidate_k=10_000, explain=True)
    result = engine.search(query, params)
    assert len({h.id for h in result.hits}) == len(result.hits)  # a replaced or deleted row never shows up
    return {h.id: (h.dense, h.sparse, h.fused) for h in result.hits}


def image_query(engine: SearchEngine, data: bytes) -> Query:
    return engine.encode_image(Image.open(io.BytesIO(data)))


def test_texts_with_unicode_line_separators_survive_compaction_and_reopening(index_copy: Path) -> None:
    # U+2028, U+2029 and U+0085 are written into items.jsonl as they are; a reader splitting at them would find
    # broken lines, and the compacted version could not be opened again
    texts = {"sep-1": "a red\u2028square", "sep-2": "a blue\u2029dot", "sep-3": "next\x85line"}
    live = LiveCollection.open(index_copy, auto_compact_ratio=None)
    try:
        for item_id, text in texts.items():
            live.add_text(text, item_id=item_id)
        live.compact()
    finally:
        live.close()
    reopened = LiveCollection.open(index_copy, auto_compact_ratio=None)
    try:
        assert {i: reopened.engine.item(i)[1]["text"] for i in texts} == texts
    finally:
        reopened.close()


def test_an_added_image_is_found_in_every_mode_with_exact_scores(live: LiveCollection) -> None:
    data = png(1)
    result = live.add_image(data, item_id="new.png", captions=["a red square on blue", "a green dot"],
                            metadata={"source": "upload"})
    assert result.written == {"images": ["new.png"], "texts": ["new.png#0", "new.png#1"]} and not result.replaced
    engine = live.engine
    query = image_query(engine, data)
    own = engine.encoder.encode_images([Image.open(io.BytesIO(data))])
    ids, weights = own.sparse.row(0)
    exact_sparse = float(np.dot(weights, weights))
    w_dense, w_sparse = engine.default_weights()
    for mode in MODES:
        hits = every_hit(engine, query, "images", mode)
        assert "new.png" in hits, mode
        dense, sparse, fused = hits["new.png"]
        assert dense == pytest.approx(float(own.dense[0] @ query.dense), abs=1e-5)
        assert sparse == pytest.approx(exact_sparse, rel=1e-4)
        assert fused == pytest.approx(w_dense * dense / engine.manifest.temperature + w_sparse * sparse, rel=1e-4)
    # the image itself is its own best dense match, and its captions are found from it (image -> text)
    dense_top = engine.search(query, SearchParams(side="images", mode="dense", top_k=1)).hits[0]
    assert dense_top.id == "new.png" and dense_top.item["metadata"] == {"source": "upload"}
    assert {"new.png#0", "new.png#1"} <= set(every_hit(engine, query, "texts", "hybrid"))
    text_query = engine.encode_text("a red square on blue")
    assert "new.png" in every_hit(engine, text_query, "images", "sparse")
    assert engine.item("new.png#1") == ("texts", {"id": "new.png#1", "text": "a green dot", "image_id": "new.png",
                                                  "metadata": {"source": "upload"}})  # its image's, as a built one
    path = live.image_path("images", engine.item("new.png")[1])
    assert path is not None and path.read_bytes() == data


def test_a_deleted_item_is_never_returned(live: LiveCollection) -> None:
    engine = live.engine
    victim = engine.reader.stores["images"].ids[3]
    captions = [i for i in engine.reader.stores["texts"].ids if i.startswith(f"{victim}#")]
    query = Query.from_encoded(engine.encoder.encode_texts([engine.reader.stores["texts"].items[0]["text"]]))
    assert victim in every_hit(engine, query, "images", "dense")
    result = live.delete(victim)
    assert result.deleted == {"images": [victim], "texts": captions}
    for mode in MODES:
        for side, gone in (("images", victim), ("texts", captions[0])):
            params = SearchParams(side=side, mode=mode, top_k=10_000, candidate_k=10_000, explain=True)
            hits = live.engine.search(query, params).hits
            assert gone not in {h.id for h in hits}, (mode, side)
            assert len(hits) == len({h.id for h in hits})
    with pytest.raises(KeyError):
        live.engine.item(victim)
    with pytest.raises(ItemNotFoundError):
        live.delete(victim)
    # the top k stays full: a deleted row makes room for the next live one
    params = SearchParams(side="images", mode="dense", top_k=5)
    assert len(live.engine.search(query, params).hits) == 5


def test_replacing_an_item_changes_what_is_found(live: LiveCollection) -> None:
    live.add_image(png(2), item_id="swap.png", captions=["one", "two", "three"])
    second = live.add_image(png(3), item_id="swap.png", captions=["a blue circle"])
    assert second.replaced and second.deleted == {"images": ["swap.png"], "texts": ["swap.png#0", "swap.png#1",
                                                                                      "swap.png#2"]}
    engine = live.engine
    top = engine.search(image_query(engine, png(3)), SearchParams(side="images", mode="dense", top_k=1)).hits[0]
    assert top.id == "swap.png" and top.dense == pytest.approx(1.0, abs=1e-5)
    old_query, new_vector = image_query(engine, png(2)), image_query(engine, png(3)).dense
    # the old vectors are gone: from the old image's query the id now scores as the new image
    assert every_hit(engine, old_query, "images", "dense")["swap.png"][0] == pytest.approx(
        float(new_vector @ old_query.dense), abs=1e-5)
    assert engine.item("swap.png")[1]["captions"] == ["a blue circle"]
    with pytest.raises(KeyError):
        engine.item("swap.png#1")
    with pytest.raises(WriteRejectedError, match="unique across the collection"):
        live.add_text("an image's id for a text", item_id="swap.png")
    text = live.add_text("a small red square", item_id="note")
    assert text.written == {"texts": ["note"]}
    assert live.add_text("a big green dot", item_id="note").replaced
    assert live.engine.item("note")[1]["text"] == "a big green dot"


def test_bad_writes_are_refused_and_change_nothing(live: LiveCollection) -> None:
    before = live.stats()
    for call in (lambda: live.add_image(b"not an image"), lambda: live.add_image(png(4), item_id="a#b"),
                 lambda: live.add_image(png(4), item_id=""), lambda: live.add_text("   "),
                 lambda: live.add_image(png(4), captions=[""]),
                 lambda: live.add_text("x", metadata={"f": object()})):
        with pytest.raises(WriteRejectedError):
            call()
    assert live.stats() == before


def test_the_log_is_replayed_on_restart_and_a_torn_tail_is_cut(index_copy: Path) -> None:
    live = LiveCollection.open(index_copy, auto_compact_ratio=None)
    live.add_image(png(5), item_id="kept.png", captions=["a red square"])
    live.delete(live.reader.stores["images"].ids[0])
    expected = every_hit(live.engine, image_query(live.engine, png(5)), "images", "hybrid")
    live.close()
    with (index_copy / "live" / "wal.jsonl").open("ab") as log:
        log.write(b'0badc0de {"seq": 3, "op": "delete"')  # a write that crashed before its fsync returned
    reopened = LiveCollection.open(index_copy, auto_compact_ratio=None)
    try:
        assert every_hit(reopened.engine, image_query(reopened.engine, png(5)), "images", "hybrid") == expected
        assert reopened.last_seq == 2 and len(read_log(index_copy / "live" / "wal.jsonl")[0]) == 2
        reopened.add_text("after the cut", item_id="later")
        assert reopened.last_seq == 3
    finally:
        reopened.close()


def test_one_writer_at_a_time(live: LiveCollection, index_copy: Path) -> None:
    with pytest.raises(CollectionLockedError):
        LiveCollection.open(index_copy)


_WRITER = """
import sys
from indexer.live import LiveCollection
live = LiveCollection.open(sys.argv[1], auto_compact_ratio=None)
result = live.add_text(sys.argv[2], item_id="durable")
print(result.seq, flush=True)
sys.stdin.read()  # wait to be killed
"""


def test_an_acknowledged_write_survives_kill_9(index_copy: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(index_copy), "a red square written then killed"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        acknowledged = child.stdout.readline().strip()  # type: ignore[union-attr]
        assert acknowledged == "1"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    reopened = LiveCollection.open(index_copy, auto_compact_ratio=None)
    try:
        assert reopened.engine.item("durable")[1]["text"] == "a red square written then killed"
    finally:
        reopened.close()


def test_compaction_publishes_the_same_results_and_carries_writes_made_meanwhile(
        live: LiveCollection, index_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live.add_image(png(6), item_id="c1.png", captions=["a green dot on red"])
    live.delete(live.reader.stores["images"].ids[1])
    live.add_text("a blue square", item_id="t1")
    queries = [image_query(live.engine, png(6)), live.engine.encode_text("a green dot")]
    before = {(n, side, mode): every_hit(live.engine, q, side, mode)
              for n, q in enumerate(queries) for side in ("images", "texts") for mode in MODES}
    generation = live.stats()["generation"]
    publish = live_module.publish_index

    def publish_while_writing(*args, **kwargs):  # type: ignore[no-untyped-def]
        live.add_text("written during the compaction", item_id="t2")  # lands after the compaction's snapshot
        return publish(*args, **kwargs)

    monkeypatch.setattr(live_module, "publish_index", publish_while_writing)
    result = live.compact()
    assert result.wal_seq == 3 and result.generation != generation
    monkeypatch.setattr(live_module, "publish_index", publish)
    stats = live.stats()
    assert stats["base_wal_seq"] == 3 and stats["sides"]["texts"]["delta"] == 1  # t2, carried over
    assert live.engine.item("t2")[1]["text"] == "written during the compaction"
    for (n, side, mode), hits in before.items():
        after = every_hit(live.engine, queries[n], side, mode)
        after.pop("t2", None)
        assert after.keys() == hits.keys(), (n, side, mode)
        for item_id, scores in hits.items():
            assert after[item_id] == pytest.approx(scores, abs=1e-4)
    assert [r["seq"] for r in read_log(index_copy / "live" / "wal.jsonl")[0]] == [4]
    versions = [p for p in (index_copy / "versions").iterdir() if not p.name.startswith(".")]
    assert [p.name for p in versions] == [result.generation]
    second = live.compact()  # from the version the first one published (the one it was loaded from is gone)
    assert second.wal_seq == 4 and live.stats()["sides"]["texts"]["delta"] == 0
    live.close()
    reopened = LiveCollection.open(index_copy, auto_compact_ratio=None)
    try:
        assert reopened.engine.item("t2")[1]["text"] == "written during the compaction"
        assert reopened.engine.item("c1.png#0")[1]["text"] == "a green dot on red"
        assert reopened.image_path("images", reopened.engine.item("c1.png")[1]) is not None
    finally:
        live._lock_handle = reopened._lock_handle  # the fixture closes ``live`` again: make that harmless
        reopened.close()


def test_searches_never_fail_during_writes_and_compaction(live: LiveCollection) -> None:
    query = live.engine.encode_text("a red square on blue")
    failures: list[BaseException] = []
    searches = [0]
    stop = threading.Event()

    def search_loop() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                with live.searching() as engine:
                    for mode in MODES:
                        hits = engine.search(query, SearchParams(side="images", mode=mode, top_k=5)).hits
                        assert len(hits) == 5 and len({h.id for h in hits}) == 5
                searches[0] += 1
            except BaseException as e:  # noqa: BLE001 - any failure is what this test counts
                failures.append(e)

    reader = threading.Thread(target=search_loop)
    reader.start()
    try:
        for n in range(6):
            live.add_image(png(100 + n), item_id=f"w{n}.png", captions=[f"caption {n}"])
        live.delete("w0.png")
        live.compact()
        live.add_text("after", item_id="after")
    finally:
        stop.set()
        reader.join(timeout=60)
    assert not failures, failures[:3]
    assert searches[0] > 0
    assert json.dumps(live.stats())  # JSON-able


@pytest.mark.parametrize("factory", ["HNSW16", "IVF2,Flat", "PCA8,Flat"])
def test_deletes_hold_for_every_faiss_index_kind(factory: str, tiny_checkpoint: Path, synthetic_dataset: Path,
                                                 tmp_path: Path) -> None:
    """Flat, IVF and HNSW skip deleted rows inside FAISS (a selector); other kinds over-fetch and filter."""
    from indexer.build import IndexBuildConfig, build_index

    out = tmp_path / "index"
    build_index(IndexBuildConfig(checkpoint=tiny_checkpoint, output=out, dataset=synthetic_dataset, splits=("test",),
                                 cache_root=tmp_path / "cache", faiss_factory=factory))
    live = LiveCollection.open(out, auto_compact_ratio=None)
    try:
        store = live.reader.stores["images"]
        query = Query(np.asarray(store.dense[0]), *store.sparse.row(0))
        for item_id in store.ids[:5]:
            live.delete(item_id)
        hits = live.engine.search(query, SearchParams(side="images", mode="dense", top_k=5)).hits
        assert len(hits) == 5 and not {h.id for h in hits} & set(store.ids[:5])
    finally:
        live.close()


def test_a_text_without_sparse_terms_is_kept_through_compaction(tiny_grounded_index: Path, tmp_path: Path) -> None:
    """A text no sparse weight survives for (no content word, under a model whose texts are their own words) still
    gets its Lucene document, so the compacted version opens and serves it."""
    shutil.copytree(tiny_grounded_index, tmp_path / "index", symlinks=True)
    live = LiveCollection.open(tmp_path / "index", auto_compact_ratio=None)
    try:
        _compact_a_termless_text(live)
    finally:
        live.close()


def _compact_a_termless_text(live: LiveCollection) -> None:
    result = live.add_text(".", item_id="no-terms")
    engine = live.engine
    row = engine.reader.view("texts").row_of("no-terms")
    assert row is not None and engine.reader.view("texts").sparse_row(row)[0].size == 0
    live.compact()
    assert live.engine.item("no-terms")[1]["text"] == "."
    assert live.reader.lucene["texts"].num_docs() == len(live.reader.stores["texts"].ids)
    query = live.engine.encode_text(".")
    assert "no-terms" in every_hit(live.engine, query, "texts", "dense")
    assert result.seq == 1


def test_a_missing_index_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    from indexer.store import IndexUnavailableError

    with pytest.raises(IndexUnavailableError, match="not found"):
        LiveCollection.open(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def test_collections_sharing_an_encoder_compact_independently(tiny_index: Path, tmp_path: Path) -> None:
    """Each compaction copies the checkpoint from its own live version, wherever the shared encoder came from."""
    first, second = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_index, first, symlinks=True)
    shutil.copytree(tiny_index, second, symlinks=True)
    a = LiveCollection.open(first, auto_compact_ratio=None)
    b = LiveCollection.open(second, encoder=a.engine.encoder, auto_compact_ratio=None)
    try:
        a.add_text("a red square", item_id="in-a")
        a.compact()
        a.close()
        shutil.rmtree(first)
        b.add_text("a blue dot", item_id="in-b")
        b.compact()
        b.compact()
        assert b.engine.item("in-b")[1]["text"] == "a blue dot"
    finally:
        b.close()
