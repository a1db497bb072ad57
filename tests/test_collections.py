"""Named collections in one service (a real uvicorn server on 127.0.0.1 over a data directory): two checkpoints side
by side, create -> fill -> alias -> snapshot -> delete -> restore with identical rankings, an alias swapped under
concurrent searches, and kill -9 in the middle of alias swaps."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from indexer.build import verify_index
from indexer.catalog import Catalog
from indexer.params import MODES, SearchParams
from indexer.search import SearchEngine
from tests.server import ROOT, Server

pytestmark = pytest.mark.java
KEY = "collections-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUERIES = ["a red square on blue", "green dot", "the stripe is yellow"]


@pytest.fixture(scope="module")
def data_dir(tiny_index: Path, tiny_grounded_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two collections bound to different checkpoints (the latent and the grounded tiny models)."""
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(tiny_index, root / "latent", symlinks=True)
    shutil.copytree(tiny_grounded_index, root / "grounded", symlinks=True)
    return root


@pytest.fixture(scope="module")
def server(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(["--data-dir", str(data_dir)], tmp_path_factory.mktemp("logs") / "collections.log",
                     {"DUET_API_KEY": KEY})
    try:
        running.wait_started()
        running.wait_ready()
        yield running
    finally:
        running.stop()


def _json(reply: Any, status: int = 200) -> Any:
    assert reply.status == status, reply.body[:2000]
    return reply.json()


def _ranking(server: Server, collection: str, text: str, **params: Any) -> list[tuple[str, float, float, float]]:
    body = _json(server.post_json(f"/v1/collections/{collection}/search", {"text": text, "top_k": 8, **params}))
    return [(h["id"], h["scores"]["dense"], h["scores"]["sparse"], h["scores"]["fused"]) for h in body["hits"]]


def _rankings(server: Server, collection: str) -> dict[str, Any]:
    return {f"{text}|{side}|{mode}": _ranking(server, collection, text, side=side, mode=mode)
            for text in QUERIES for side in ("images", "texts") for mode in MODES}


def test_two_checkpoints_in_one_process_each_rank_as_its_own_index(server: Server, data_dir: Path) -> None:
    listed = _json(server.request("GET", "/v1/collections"))
    by_name = {c["name"]: c for c in listed["collections"]}
    assert set(by_name) == {"latent", "grounded"} and all(c["ready"] for c in by_name.values())
    assert by_name["latent"]["checkpoint"] != by_name["grounded"]["checkpoint"]
    assert listed["default"] is None  # two collections, none named default: the unnamed routes say so
    assert _json(server.post_json("/v1/search", {"text": "green dot"}), 404)["error"]["code"] == \
        "no_default_collection"
    for name in ("latent", "grounded"):
        engine = SearchEngine.open(data_dir / name)
        try:
            for text in QUERIES:
                expected = [h.id for h in engine.search(engine.encode_text(text),
                                                        SearchParams(side="images", top_k=8)).hits]
                assert [hit[0] for hit in _ranking(server, name, text, side="images")] == expected
        finally:
            engine.close()
    hit = _json(server.post_json("/v1/collections/grounded/search", {"text": "green dot"}))["hits"][0]
    assert hit["metadata"]["image_url"].startswith("/v1/collections/grounded/items/")
    image = server.request("GET", hit["metadata"]["image_url"])
    assert image.status == 200 and image.headers["content-type"].startswith("image/")
    assert _json(server.request("GET", "/v1/collections/grounded"))["state"]["sides"]["images"]["live"] > 0
    _json(server.post_json("/v1/collections/nope/search", {"text": "x"}), 404)
    assert _json(server.post_json("/v1/collections/bad%20name%21/search", {"text": "x"}), 404)["error"]


FRESH_PAYLOAD = {"colour": "keyword", "n": "integer"}


def test_create_fill_alias_snapshot_delete_restore_keeps_the_rankings(server: Server) -> None:
    # writes, creation and aliases need the write key
    assert server.post_json("/v1/collections/fresh", {"like": "latent"}, method="PUT").status == 401
    assert _json(server.post_json("/v1/collections/fresh", {"like": "latent", "payload": {"text": "keyword"}}, AUTH,
                                  method="PUT"), 422)["error"]["code"] == "invalid_request"  # an item's own field
    created = _json(server.post_json("/v1/collections/fresh", {"like": "latent", "payload": FRESH_PAYLOAD}, AUTH,
                                     method="PUT"), 201)
    assert created["payload"] == FRESH_PAYLOAD
    listed = {c["name"]: c for c in _json(server.request("GET", "/v1/collections"))["collections"]}
    assert created["counts"] == {"images": 0, "texts": 0} and created["checkpoint"] == listed["latent"]["checkpoint"]
    _json(server.post_json("/v1/collections/fresh", {"like": "latent"}, AUTH, method="PUT"), 409)
    for n, text in enumerate(["a red square on blue", "a green dot on white", "a yellow stripe", "two dots"]):
        metadata = {"colour": text.split()[1], "n": n}
        _json(server.post_json(f"/v1/collections/fresh/items/t{n}", {"text": text, "metadata": metadata}, AUTH,
                               method="PUT"), 201)
    _json(server.post_json("/v1/collections/fresh/items/t9", {"text": "x", "metadata": {"n": "nine"}}, AUTH,
                           method="PUT"), 422)  # a declared field of another type: refused, nothing written
    red = {"must": [{"key": "n", "range": {"lt": 3}}], "must_not": [{"key": "colour", "match": {"value": "green"}}]}
    filtered = _json(server.post_json("/v1/collections/fresh/search", {"text": "red", "side": "texts", "top_k": 10,
                                                                       "filter": red}))
    assert {h["id"] for h in filtered["hits"]} == {"t0", "t2"} and filtered["rows"] == 2
    _json(server.post_json("/v1/aliases/live", {"collection": "fresh"}, AUTH, method="PUT"))
    assert _json(server.request("GET", "/v1/aliases"))["aliases"] == {"live": "fresh"}
    before = {f"{t}|{m}": _ranking(server, "live", t, side="texts", mode=m) for t in QUERIES for m in MODES}
    assert before == {f"{t}|{m}": _ranking(server, "fresh", t, side="texts", mode=m) for t in QUERIES for m in MODES}
    assert len(before["green dot|dense"]) == 4

    snapshot = _json(server.post_json("/v1/collections/live/snapshots", {"snapshot": "first"}, AUTH), 201)
    assert snapshot["name"] == "first" and snapshot["counts"]["texts"] == 4
    listed = _json(server.request("GET", "/v1/collections/fresh/snapshots", headers=AUTH))
    assert [s["name"] for s in listed["snapshots"]] == ["first"]
    archive = server.request("GET", "/v1/collections/fresh/snapshots/first", headers=AUTH)
    assert archive.status == 200 and archive.headers["content-type"] == "application/x-tar" and len(archive.body) > 0

    assert _json(server.request("DELETE", "/v1/collections/fresh", headers=AUTH), 409)["error"]["code"] == \
        "alias_in_use"
    _json(server.request("DELETE", "/v1/aliases/live", headers=AUTH))
    _json(server.request("DELETE", "/v1/collections/fresh", headers=AUTH))
    _json(server.post_json("/v1/collections/fresh/search", {"text": "x"}), 404)

    _json(server.post_json("/v1/collections/restored", {"snapshot": {"collection": "fresh", "name": "first"}},
                           AUTH, method="PUT"), 201)
    after = {f"{t}|{m}": _ranking(server, "restored", t, side="texts", mode=m) for t in QUERIES for m in MODES}
    assert after == before
    again = _json(server.post_json("/v1/collections/restored/search", {"text": "red", "side": "texts", "top_k": 10,
                                                                       "filter": red}))
    assert [h["id"] for h in again["hits"]] == [h["id"] for h in filtered["hits"]]  # the payload came back too
    _json(server.request("DELETE", "/v1/collections/fresh/snapshots/first", headers=AUTH))
    _json(server.request("DELETE", "/v1/collections/restored", headers=AUTH))


def test_an_alias_swapped_under_concurrent_searches_never_shows_a_half_state(server: Server) -> None:
    rankings = {name: _ranking(server, name, "green dot", side="images", mode="hybrid")
                for name in ("latent", "grounded")}
    assert rankings["latent"] != rankings["grounded"]
    _json(server.post_json("/v1/aliases/swapped", {"collection": "latent"}, AUTH, method="PUT"))
    seen: list[list[tuple[str, float, float, float]]] = []
    failures: list[str] = []
    stop = threading.Event()

    def search() -> None:
        while not stop.is_set():
            reply = server.post_json("/v1/collections/swapped/search", {"text": "green dot", "top_k": 8})
            if reply.status != 200:
                failures.append(reply.body.decode()[:300])
                continue
            seen.append([(h["id"], h["scores"]["dense"], h["scores"]["sparse"], h["scores"]["fused"])
                         for h in reply.json()["hits"]])

    searchers = [threading.Thread(target=search) for _ in range(3)]
    for thread in searchers:
        thread.start()
    try:
        for n in range(20):
            target = "grounded" if n % 2 == 0 else "latent"
            _json(server.post_json("/v1/aliases/swapped", {"collection": target}, AUTH, method="PUT"))
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in searchers:
            thread.join(60)
    assert not failures and len(seen) >= 10
    assert all(ranking in (rankings["latent"], rankings["grounded"]) for ranking in seen)
    assert {tuple(r) for r in seen} == {tuple(rankings["latent"]), tuple(rankings["grounded"])}
    _json(server.request("DELETE", "/v1/aliases/swapped", headers=AUTH))


def test_an_id_that_spells_a_percent_escape_is_kept_as_written(server: Server) -> None:
    """An id "%C3%89" is those six characters: written through a JSON body, read back at its Location (the "%"
    escaped as %25), and not found as the character it would decode to."""
    created = server.post_json("/v1/collections/latent/items", {"text": "a percent id", "id": "%C3%89"}, AUTH)
    assert created.status == 201 and created.headers["location"] == "/v1/collections/latent/items/%25C3%2589"
    assert _json(server.request("GET", created.headers["location"]))["id"] == "%C3%89"
    assert _json(server.request("GET", "/v1/collections/latent/items/%C3%89"), 404)["error"]["code"] == \
        "item_not_found"  # "É": another id
    _json(server.request("DELETE", created.headers["location"], headers=AUTH))


SWAPPER = """
import sys
from indexer.catalog import Catalog
catalog = Catalog(sys.argv[1])
n = 0
while True:
    catalog.set_alias("spinning", ("latent", "grounded")[n % 2])
    n += 1
    if n == 5:
        print("swapping", flush=True)
"""


def test_kill_9_during_alias_swaps_leaves_every_collection_opening(data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name in ("latent", "grounded"):
        shutil.copytree(data_dir / name, root / name, symlinks=True)
    for attempt in range(3):
        swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(root)], cwd=ROOT, stdout=subprocess.PIPE,
                                   text=True)
        assert swapper.stdout is not None and swapper.stdout.readline().strip() == "swapping"
        time.sleep(0.05 * (attempt + 1))
        swapper.kill()
        swapper.wait(30)
        catalog = Catalog(root)
        assert catalog.aliases()["spinning"] in ("latent", "grounded")  # one whole target, never a torn file
        assert json.loads((root / "aliases.json").read_text())["aliases"]["spinning"] in ("latent", "grounded")
    catalog = Catalog(root)
    assert catalog.names() == ["grounded", "latent"]
    for name in catalog.names():
        verify_index(root / name)


def test_the_alias_command_sets_swaps_lists_and_deletes(data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name in ("latent", "grounded"):
        shutil.copytree(data_dir / name, root / name, symlinks=True)

    def alias(*args: str) -> tuple[int, Any]:
        done = subprocess.run([sys.executable, "-m", "indexer", "alias", "--data-dir", str(root), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        return done.returncode, json.loads(done.stdout) if done.returncode == 0 else done.stderr

    assert alias("prod", "latent") == (0, {"alias": "prod", "collection": "latent", "previous": None})
    assert alias("prod", "grounded") == (0, {"alias": "prod", "collection": "grounded", "previous": "latent"})
    assert alias() == (0, {"aliases": {"prod": "grounded"}, "collections": ["grounded", "latent"]})
    code, error = alias("latent", "grounded")  # a collection's name cannot be an alias
    assert code == 2 and "collection's name" in error
    code, error = alias("other", "missing")
    assert code == 2 and "no collection named 'missing'" in error
    assert alias("prod", "--delete") == (0, {"alias": "prod", "collection": "grounded", "deleted": True})
    assert alias()[1]["aliases"] == {}


@pytest.mark.browser
def test_the_page_picks_a_collection(browser: Any, server: Server) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(server.base + "/")
    wait.until(lambda d: d.find_element(By.ID, "collection-label").is_displayed())
    picker = Select(browser.find_element(By.ID, "collection"))
    assert {o.get_attribute("value") for o in picker.options} >= {"latent", "grounded"}
    picker.select_by_value("latent")  # the first option ("grounded") is the page's default when none is served
    wait.until(lambda d: "images" in d.find_element(By.ID, "index-info").text)
    browser.find_element(By.ID, "text").send_keys("green dot")
    browser.find_element(By.ID, "search").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .hit img"))
    sources = [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, "#results .hit img")]
    assert sources and all("/v1/collections/latent/items/" in src for src in sources)
    assert "collection=latent" in browser.current_url


def test_collections_sharing_a_checkpoint_share_one_encoder(tiny_index: Path, tmp_path: Path) -> None:
    from service.lifespan import load_collection
    from service.metrics import Metrics
    from service.registry import Registry
    from service.settings import ServiceSettings

    root = tmp_path / "data"
    for name in ("first", "second"):
        shutil.copytree(tiny_index, root / name, symlinks=True)
    registry = Registry(ServiceSettings(data_dir=root), Metrics(), loader=load_collection)
    slots = registry.load_new()
    try:
        engines = [slot.engine for slot in slots]
        assert all(engine is not None for engine in engines)
        assert engines[0].encoder is engines[1].encoder and len(registry.encoders) == 1  # type: ignore[union-attr]
    finally:
        for slot in slots:
            if slot.live is not None:
                slot.live.close()
