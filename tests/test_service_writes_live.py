"""The write API through a real uvicorn server on 127.0.0.1 over a real live collection (a copy of the tiny Lucene
+ FAISS index, since writes change it): what is written is found at once in every mode with exact scores, what
is deleted never appears, the log is replayed after a restart and after kill -9, searches never fail while writes
and compactions run, and the CLI writes while no server holds the index."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.encoder import DuetEncoder
from indexer.params import EXPLAINED_HITS, MODES
from indexer.query import Query
from tests.conftest import noise_png as png
from tests.server import ROOT, Reply, Server

pytestmark = pytest.mark.java  # every test serves a Lucene index

KEY = "live-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# every item of the tiny index, the first EXPLAINED_HITS hits explained
ALL = {"top_k": 1000, "candidate_k": 1000, "explain": True}
TEXT_QUERIES = ("a red square on blue", "green dot", "the stripe is yellow")




@pytest.fixture()
def index_copy(tiny_index: Path, synthetic_dataset: Path, tmp_path: Path) -> Path:
    """The tiny index with its images, copied so that their relative layout (and the ``current`` link) holds."""
    common = Path(os.path.commonpath([tiny_index, synthetic_dataset]))
    target = tmp_path / "copy" / tiny_index.relative_to(common)
    # without ``live``: the session's index as built, not the (empty) log a server over it may have left
    shutil.copytree(tiny_index, target, symlinks=True, ignore=shutil.ignore_patterns("live"))
    shutil.copytree(synthetic_dataset / "images", tmp_path / "copy" / synthetic_dataset.relative_to(common) / "images")
    return target


@pytest.fixture(scope="module")
def encoder(tiny_index: Path) -> DuetEncoder:
    """The index's own model, in this process: the oracle of every score."""
    return DuetEncoder.from_checkpoint(tiny_index / "current" / "checkpoint")


def start(index: Path, log: Path, **env: str) -> Server:
    server = Server(["--index", str(index)], log, {"DUET_API_KEY": KEY, "DUET_AUTO_COMPACT_RATIO": "0", **env})
    server.wait_started()
    assert server.request("GET", "/readyz").status == 200, server.log_path.read_text()[-2000:]
    return server


@contextmanager
def serving(index: Path, log: Path, **env: str) -> Iterator[Server]:
    server = start(index, log, **env)
    try:
        yield server
    finally:
        server.stop()


def ok(reply: Reply, *statuses: int) -> Any:
    assert reply.status in (statuses or (200,)), reply.body[:1000]
    return reply.json()


def add_image(server: Server, data: bytes, captions: list[str], *, item_id: str | None = None,
              metadata: dict[str, Any] | None = None, method: str = "POST") -> dict[str, Any]:
    fields: dict[str, str | list[str]] = {"captions": captions,  # a part each
                                          **({"metadata": json.dumps(metadata)} if metadata else {})}
    path = "/v1/items" if method == "POST" else f"/v1/items/{item_id}"
    if method == "POST" and item_id is not None:
        fields["id"] = item_id
    return ok(server.post_multipart(path, fields, {"image": ("upload.png", data, "image/png")}, AUTH, method),
              200, 201)


def search(server: Server, **payload: Any) -> list[dict[str, Any]]:
    return ok(server.post_json("/v1/search", {**ALL, **payload}))["hits"]


def search_image(server: Server, data: bytes, **fields: Any) -> dict[str, Any]:
    form = {k: json.dumps(v) if isinstance(v, bool) else str(v) for k, v in {**ALL, **fields}.items()}
    return ok(server.post_multipart("/v1/search", form, {"image": ("q.png", data, "image/png")}))


def by_id(hits: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {h["id"]: h for h in hits}
    assert len(found) == len(hits)  # a replaced or deleted row never shows up beside the live one
    return found


def encoded_image(encoder: DuetEncoder, data: bytes) -> Query:
    return Query.from_encoded(encoder.encode_images([Image.open(io.BytesIO(data))]))


def encoded_text(encoder: DuetEncoder, text: str) -> Query:
    return Query.from_encoded(encoder.encode_texts([text]))


def exact(query: Query, item: Query, weights: dict[str, float]) -> tuple[float, float, float]:
    """The scores the search path must give: the dense dot product, the sparse one over shared terms, and the
    integrated score."""
    dense = float(query.dense @ item.dense)
    _, q, i = np.intersect1d(query.term_ids, item.term_ids, assume_unique=True, return_indices=True)
    sparse = float(query.term_weights[q] @ item.term_weights[i])
    return dense, sparse, weights["w_dense"] * dense / weights["temperature"] + weights["w_sparse"] * sparse


def assert_scores(hit: dict[str, Any], expected: tuple[float, float, float]) -> None:
    dense, sparse, fused = expected
    assert hit["scores"]["dense"] == pytest.approx(dense, abs=1e-5), hit["id"]
    assert hit["scores"]["sparse"] == pytest.approx(sparse, rel=1e-4, abs=1e-6), hit["id"]
    assert hit["scores"]["fused"] == pytest.approx(fused, rel=1e-4, abs=1e-5), hit["id"]
    if hit["rank"] > EXPLAINED_HITS:  # the page's first hits only are explained
        assert hit["explanation"] is None, hit["id"]
        return
    contributions = sum(m["contribution"] for m in hit["explanation"]["matched_terms"])
    assert contributions == pytest.approx(sparse, rel=1e-4, abs=1e-6), hit["id"]


def snapshot(server: Server, images: list[bytes]) -> dict[tuple[str, str, str], list[tuple[str, int, Any]]]:
    """Every hit (id, rank, scores) of a fixed set of text and image queries, in every mode, on both sides."""
    found = {}
    for side in ("images", "texts"):
        for mode in MODES:
            for text in TEXT_QUERIES:
                found[(text, side, mode)] = [(h["id"], h["rank"], h["scores"]) for h in search(
                    server, text=text, side=side, mode=mode, explain=False)]
            for n, data in enumerate(images):
                found[(f"image {n}", side, mode)] = [(h["id"], h["rank"], h["scores"]) for h in search_image(
                    server, data, side=side, mode=mode, explain=False)["hits"]]
    return found


def _scores(hit: tuple[str, int, Any]) -> list[float]:
    return [hit[2][leg] for leg in ("dense", "sparse", "fused")]


def assert_same(after: dict[Any, list[tuple[str, int, Any]]], before: dict[Any, list[tuple[str, int, Any]]]) -> None:
    """The same hits with the same scores, ranked the same up to ties (identical captions score alike, and their
    order among themselves is not the ranking's)."""
    assert after.keys() == before.keys()
    for key, hits in before.items():
        now = {hit[0]: hit for hit in after[key]}
        assert now.keys() == {hit[0] for hit in hits}, key
        for hit, ranked in zip(hits, after[key], strict=True):
            assert _scores(now[hit[0]]) == pytest.approx(_scores(hit), rel=1e-5, abs=1e-6), (key, hit[0])
            assert _scores(ranked) == pytest.approx(_scores(hit), rel=1e-5, abs=1e-6), (key, hit[1])


def wait_compacted(server: Server, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = ok(server.request("GET", "/v1/collection", headers=AUTH))
        if not state["compaction"]["running"]:
            assert state["compaction"]["last_error"] is None, state
            return state
        time.sleep(0.2)
    raise TimeoutError("the compaction did not finish")


def test_an_added_image_is_found_in_every_mode_with_exact_scores(index_copy: Path, tmp_path: Path,
                                                                 encoder: DuetEncoder) -> None:
    data, captions = png(1), ["a red square on blue", "a green dot"]
    own, own_captions = encoded_image(encoder, data), [encoded_text(encoder, c) for c in captions]
    with serving(index_copy, tmp_path / "server.log") as server:
        before = ok(server.request("GET", "/readyz"))["sides"]
        written = add_image(server, data, captions, item_id="new.png", metadata={"source": "upload"})
        assert written["written"] == {"images": ["new.png"], "texts": ["new.png#0", "new.png#1"]}
        assert ok(server.request("GET", "/readyz"))["sides"] == {"images": before["images"] + 1,
                                                                  "texts": before["texts"] + 2}
        for mode in MODES:
            # image -> image: the image itself, exactly scored; image -> text: its captions, exactly scored
            reply = search_image(server, data, side="images", mode=mode)
            weights, hits = reply["weights"], by_id(reply["hits"])
            assert_scores(hits["new.png"], exact(own, own, weights))
            if mode == "dense":
                assert reply["hits"][0]["id"] == "new.png"
            # (in sparse mode, only what shares a term with the query can be found)
            captions_found = by_id(search_image(server, data, side="texts", mode=mode)["hits"])
            for n, caption in enumerate(own_captions):
                expected = exact(own, caption, weights)
                if mode != "sparse" or expected[1] > 0:
                    assert_scores(captions_found[f"new.png#{n}"], expected)
            # text -> image: found from a text, exactly scored
            for text in TEXT_QUERIES:
                expected = exact(encoded_text(encoder, text), own, weights)
                if mode != "sparse" or expected[1] > 0:
                    assert_scores(by_id(search(server, text=text, side="images", mode=mode))["new.png"], expected)
        item = ok(server.request("GET", "/v1/items/new.png"))
        assert item["metadata"] == {"source": "upload"} and item["captions"] == captions
        image = server.request("GET", item["image_url"])
        assert image.status == 200 and image.body == data and image.headers["content-type"] == "image/png"
        caption = ok(server.request("GET", "/v1/items/new.png%231"))
        assert caption["text"] == "a green dot" and caption["image_url"] == item["image_url"]
        assert server.request("GET", "/v1/items/new.png%231/image").body == data


def test_a_deleted_item_never_appears(index_copy: Path, tmp_path: Path) -> None:
    with serving(index_copy, tmp_path / "server.log") as server:
        add_image(server, png(2), ["a red square on blue"], item_id="short-lived.png")
        indexed = search(server, text="a red square on blue", mode="dense")[0]["id"]  # one from the build
        indexed_captions = [h["id"] for h in search(server, text="red", side="texts", mode="dense")
                            if h["id"].startswith(f"{indexed}#")]
        assert indexed_captions
        before = ok(server.request("GET", "/readyz"))["sides"]
        for item_id, captions in (("short-lived.png", ["short-lived.png#0"]), (indexed, indexed_captions)):
            deleted = ok(server.request("DELETE", f"/v1/items/{item_id}", headers=AUTH))
            assert deleted["deleted"]["images"] == [item_id] and set(captions) <= set(deleted["deleted"]["texts"])
        gone = {"short-lived.png", indexed, "short-lived.png#0", *indexed_captions}
        for side in ("images", "texts"):
            for mode in MODES:
                for text in TEXT_QUERIES:
                    hits = search(server, text=text, side=side, mode=mode)
                    assert not gone & set(by_id(hits)), (text, side, mode)
                    assert all(h["metadata"]["image_url"] not in {f"/v1/items/{i}/image" for i in gone}
                               for h in hits)
                for data in (png(2), png(9)):
                    hits = search_image(server, data, side=side, mode=mode)["hits"]
                    assert not gone & set(by_id(hits)), (side, mode)
        # the top k stays full: a deleted row makes room for the next live one
        assert len(search(server, text="red", mode="dense", top_k=5)) == 5
        for item_id in gone:
            quoted = item_id.replace("#", "%23")
            assert ok(server.request("GET", f"/v1/items/{quoted}"), 404)["error"]["code"] == "item_not_found"
            assert server.request("GET", f"/v1/items/{quoted}/image").status == 404
        assert ok(server.request("DELETE", f"/v1/items/{indexed}", headers=AUTH), 404)["error"]["code"] == \
            "item_not_found"
        after = ok(server.request("GET", "/readyz"))["sides"]
        assert after == {"images": before["images"] - 2, "texts": before["texts"] - 1 - len(indexed_captions)}


def test_replacing_an_item_changes_what_is_found(index_copy: Path, tmp_path: Path, encoder: DuetEncoder) -> None:
    old, new = png(3), png(4)
    with serving(index_copy, tmp_path / "server.log") as server:
        created = add_image(server, old, ["one", "two", "three"], item_id="swap.png", method="PUT")
        assert created["replaced"] is False
        replaced = add_image(server, new, ["a blue circle"], item_id="swap.png", method="PUT")
        assert replaced["replaced"] is True
        assert replaced["deleted"] == {"images": ["swap.png"], "texts": ["swap.png#0", "swap.png#1", "swap.png#2"]}
        top = search_image(server, new, mode="dense", top_k=1)["hits"][0]
        assert top["id"] == "swap.png" and top["scores"]["dense"] == pytest.approx(1.0, abs=1e-5)
        # from the old image, the id now scores as the new image: the old vectors are gone
        reply = search_image(server, old, mode="hybrid")
        assert_scores(by_id(reply["hits"])["swap.png"],
                      exact(encoded_image(encoder, old), encoded_image(encoder, new), reply["weights"]))
        assert ok(server.request("GET", "/v1/items/swap.png"))["captions"] == ["a blue circle"]
        assert ok(server.request("GET", "/v1/items/swap.png%232"), 404)["error"]["code"] == "item_not_found"
        assert server.request("GET", "/v1/items/swap.png/image").body == new
        texts = by_id(search_image(server, new, side="texts", mode="dense")["hits"])
        assert "swap.png#0" in texts and "swap.png#1" not in texts
        assert texts["swap.png#0"]["metadata"]["text"] == "a blue circle"


def test_a_restart_replays_the_log(index_copy: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with serving(index_copy, log) as server:
        add_image(server, png(5), ["a yellow stripe"], item_id="kept.png")
        ok(server.post_json("/v1/items", {"text": "a green dot on red", "id": "note"}, AUTH), 201)
        add_image(server, png(6), ["first"], item_id="twice.png")
        add_image(server, png(7), ["second"], item_id="twice.png", method="PUT")
        indexed = search(server, text="green dot", mode="dense")[0]["id"]
        ok(server.request("DELETE", f"/v1/items/{indexed}", headers=AUTH))
        expected = snapshot(server, [png(5), png(7)])
        state = ok(server.request("GET", "/v1/collection", headers=AUTH))
        assert state["last_seq"] == 5 and state["wal_bytes"] > 0
    with serving(index_copy, log) as server:  # stopped and started again: the log is replayed on open
        assert_same(snapshot(server, [png(5), png(7)]), expected)
        replayed = ok(server.request("GET", "/v1/collection", headers=AUTH))
        assert replayed["last_seq"] == 5 and replayed["generation"] == state["generation"]
        assert ok(server.request("GET", "/v1/items/note"))["text"] == "a green dot on red"
        assert server.request("GET", "/v1/items/twice.png/image").body == png(7)
        assert server.request("GET", f"/v1/items/{indexed}").status == 404


def test_an_acknowledged_write_survives_kill_9(index_copy: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = start(index_copy, log)
    try:
        add_image(server, png(8), ["written then killed"], item_id="durable.png")
        ok(server.post_json("/v1/items", {"text": "the last word", "id": "last"}, AUTH), 201)
    finally:
        server.kill()  # right after the acknowledgement: no shutdown, no flush but what the write did itself
    with serving(index_copy, log) as restarted:
        assert ok(restarted.request("GET", "/v1/items/last"))["text"] == "the last word"
        assert ok(restarted.request("GET", "/v1/items/durable.png%230"))["text"] == "written then killed"
        assert restarted.request("GET", "/v1/items/durable.png/image").body == png(8)
        top = search_image(restarted, png(8), mode="dense", top_k=1)["hits"][0]
        assert top["id"] == "durable.png"


class SearchLoad:
    """Searches in a loop on threads (bounded in count and time, paced so that the test's own requests get their
    turn on the server's one engine thread) and every answer's status."""

    def __init__(self, server: Server, threads: int = 2, most: int = 400, seconds: float = 240,
                 pause: float = 0.05) -> None:
        self.pause = pause
        self.server, self.most, self.deadline = server, most, time.monotonic() + seconds
        self.statuses: list[tuple[float, int]] = []  # (when it was answered, status)
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(n,)) for n in range(threads)]

    def _loop(self, n: int) -> None:
        queries = [{"text": t, "mode": m, "side": s, "top_k": 5} for t in TEXT_QUERIES for m in MODES
                   for s in ("images", "texts")]
        done = 0
        while not self._stop.is_set() and done < self.most and time.monotonic() < self.deadline:
            try:
                reply = self.server.post_json("/v1/search", queries[(done + n) % len(queries)])
                if reply.status == 200:
                    assert len(reply.json()["hits"]) == 5
                self.statuses.append((time.monotonic(), reply.status))
            except BaseException as e:  # noqa: BLE001 - a failed search is what this test counts
                self.errors.append(e)
            done += 1
            time.sleep(self.pause)

    def __enter__(self) -> SearchLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def answered_between(self, start: float, end: float) -> int:
        return sum(start <= t <= end for t, _ in self.statuses)


def without(found: dict[Any, list[tuple[str, int, Any]]], ids: set[str]) -> dict[Any, list[tuple[str, int, Any]]]:
    return {key: [hit for hit in hits if hit[0] not in ids] for key, hits in found.items()}


def test_searches_never_fail_while_writes_and_a_compaction_run(index_copy: Path, tmp_path: Path) -> None:
    images = [png(20 + n) for n in range(6)]
    with serving(index_copy, tmp_path / "server.log") as server, SearchLoad(server) as load:
        for n, data in enumerate(images[:3]):
            add_image(server, data, [f"a red square number {n}"], item_id=f"w{n}.png")
        ok(server.post_json("/v1/items", {"text": "a blue dot", "id": "note"}, AUTH), 201)
        ok(server.request("DELETE", "/v1/items/w0.png", headers=AUTH))
        generation = ok(server.request("GET", "/v1/collection", headers=AUTH))["generation"]
        before = snapshot(server, images[1:3])
        started = time.monotonic()
        assert ok(server.request("POST", "/v1/compact", headers=AUTH), 202)["compaction"]["running"] is True
        assert ok(server.request("POST", "/v1/compact", headers=AUTH), 409)["error"]["code"] == "compaction_running"
        # writes go on meanwhile (new items only, so that everything found before is found alike after)
        for n, data in enumerate(images[3:], start=3):
            add_image(server, data, [f"a green stripe number {n}"], item_id=f"w{n}.png")
        state = wait_compacted(server)
        assert load.answered_between(started, time.monotonic()) > 0  # searches were answered meanwhile
        result = state["compaction"]["last_result"]
        assert state["generation"] == result["generation"] != generation
        assert state["last_seq"] == 8 and result["wal_seq"] >= 5  # at least every write before the request
        # the same results after it as before, the items written meanwhile aside; and those are all there
        written = {f"w{n}.png" for n in range(3, 6)} | {f"w{n}.png#0" for n in range(3, 6)}
        after = snapshot(server, images[1:3])
        assert_same(without(after, written), without(before, written))
        for n in range(1, 6):
            assert search_image(server, images[n], mode="dense", top_k=1)["hits"][0]["id"] == f"w{n}.png"
            assert server.request("GET", f"/v1/items/w{n}.png/image").body == images[n]  # uploads outlive it
        assert server.request("GET", "/v1/items/w0.png").status == 404
        assert ok(server.request("GET", "/v1/items/note"))["text"] == "a blue dot"
    assert not load.errors, load.errors[:3]
    assert load.statuses and {status for _, status in load.statuses} == {200}


def test_the_threshold_compacts_in_the_background_and_a_request_again(index_copy: Path, tmp_path: Path) -> None:
    # 192 published items (32 images, 160 captions), counted as the floor of 10,000: 0.0002 of them is two changes,
    # one image with a caption
    with serving(index_copy, tmp_path / "server.log", DUET_AUTO_COMPACT_RATIO="0.0002") as server:
        generation = ok(server.request("GET", "/v1/collection", headers=AUTH))["generation"]
        add_image(server, png(30), ["a white dot"], item_id="auto.png")
        deadline = time.monotonic() + 180
        while (state := ok(server.request("GET", "/v1/collection", headers=AUTH)))["generation"] == generation:
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        state = wait_compacted(server)
        assert state["compaction"]["reason"] == "threshold" and state["sides"]["images"]["delta"] == 0
        assert search_image(server, png(30), mode="dense", top_k=1)["hits"][0]["id"] == "auto.png"
        # a second compaction in the same process, on request, over the first one's version
        ok(server.post_json("/v1/items", {"text": "after the first", "id": "later"}, AUTH), 201)
        assert ok(server.request("POST", "/v1/compact", headers=AUTH), 202)["compaction"]["reason"] == "request"
        second = wait_compacted(server)
        assert second["generation"] not in (generation, state["generation"])
        assert second["sides"]["texts"]["delta"] == 0
        assert ok(server.request("GET", "/v1/items/later"))["text"] == "after the first"
        metrics = server.request("GET", "/metrics").body.decode()
        assert 'duet_compactions_total{outcome="ok"} 2.0' in metrics
        assert 'duet_writes_total{op="upsert",outcome="ok"} 2.0' in metrics


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "indexer", "--log-level", "WARNING", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})


def test_the_cli_writes_while_no_server_holds_the_index(index_copy: Path, tmp_path: Path) -> None:
    image = tmp_path / "cli.png"
    image.write_bytes(png(40))
    added = _cli("add", "--index", str(index_copy), "--image", str(image), "--caption", "a red dot",
                 "--caption", "a dot", "--id", "cli.png", "--metadata", '{"by": "cli"}')
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["written"] == {"images": ["cli.png"], "texts": ["cli.png#0", "cli.png#1"]}
    compacted = _cli("compact", "--index", str(index_copy))
    assert compacted.returncode == 0, compacted.stderr
    generation = json.loads(compacted.stdout)["generation"]
    with serving(index_copy, tmp_path / "server.log") as server:
        state = ok(server.request("GET", "/v1/collection", headers=AUTH))
        assert state["generation"] == generation and state["sides"]["images"]["delta"] == 0
        item = ok(server.request("GET", "/v1/items/cli.png"))
        assert item["metadata"] == {"by": "cli"} and server.request("GET", item["image_url"]).body == png(40)
        assert ok(server.request("GET", "/v1/items/cli.png%231"))["text"] == "a dot"
        assert search_image(server, png(40), mode="dense", top_k=1)["hits"][0]["id"] == "cli.png"
        # the server holds the collection: the CLI refuses, and says to use the HTTP API
        locked = _cli("delete", "--index", str(index_copy), "--id", "cli.png")
        assert locked.returncode == 2 and "HTTP API" in locked.stderr, locked.stderr
        assert server.request("GET", "/v1/items/cli.png").status == 200
