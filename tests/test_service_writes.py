"""The write API in process (starlette's TestClient) over a fake live collection that keeps the LiveCollection
contract: the API key, every validation rule and error body of every write route, where writes and compactions
run, and the metrics. The real collection behind a real uvicorn is tests/test_service_writes_live.py."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi import FastAPI
from PIL import Image
from starlette.testclient import TestClient

from core.cancel import Cancellation
from indexer.live import (
    CollectionLockedError,
    CompactionResult,
    ItemNotFoundError,
    WriteResult,
)
from indexer.served import ServedCollection
from indexer.writes import WriteRejectedError
from service.app import create_app
from service.settings import ServiceSettings
from tests.test_service_api import BODY_LIMIT, PIXEL_LIMIT, FakeEngine, _error, _noise_png, _png, _tiff

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_CAPTIONS = 3


class FakeLive:
    """A live collection over the API tests' fake engine: a write changes the engine's stores at once (so search
    and the item routes see it), uploads are files in a folder, and a compaction can be held at a gate."""

    def __init__(self, engine: FakeEngine, uploads: Path) -> None:
        self.engine = engine
        self.uploads = uploads
        self.seq = 0
        self.calls: list[tuple[str, str]] = []  # (what, on which thread)
        self.reject: str | None = None  # the next write is refused with this
        self.due = False  # needs_compaction()
        self.gate: threading.Event | None = None  # a compaction waits for it
        self.compact_error: Exception | None = None
        self.compacting = 0
        self.most_at_once = 0
        self.compactions = 0
        self.closed = False

    def _called(self, what: str) -> None:
        self.calls.append((what, threading.current_thread().name))

    def threads(self, what: str) -> set[str]:
        return {thread for name, thread in self.calls if name == what}

    @contextmanager
    def reading(self) -> Iterator[FakeEngine]:
        self._called("reading")
        yield self.engine

    def _drop(self, side: str, item_id: str) -> bool:
        store = self.engine.stores[side]
        if item_id not in store.ids:
            return False
        row = store.ids.index(item_id)
        del store.ids[row], store.items[row]
        return True

    def _put(self, side: str, item: dict[str, Any]) -> None:
        self.engine.stores[side].ids.append(item["id"])
        self.engine.stores[side].items.append(item)

    def _result(self, op: str, side: str, item_id: str, written: dict[str, list[str]],
                deleted: dict[str, list[str]]) -> WriteResult:
        self.seq += 1
        replaced = op == "upsert" and item_id in deleted.get(side, [])
        return WriteResult(self.seq, op, item_id, side, replaced, written, deleted)  # type: ignore[arg-type]

    def _displace(self, side: str, item_id: str) -> dict[str, list[str]]:
        deleted: dict[str, list[str]] = {}
        if self._drop(side, item_id):
            deleted[side] = [item_id]
            if side == "images":
                gone = [i for i in list(self.engine.stores["texts"].ids) if i.startswith(f"{item_id}#")]
                deleted["texts"] = [i for i in gone if self._drop("texts", i)]
        return deleted

    def _checked(self, item_id: str) -> str:
        if self.reject is not None:
            raise WriteRejectedError(self.reject)
        if "#" in item_id:
            raise WriteRejectedError("an item id has no '#'")
        return item_id

    def add_image(self, data: bytes, *, item_id: str | None = None, captions: Any = (),
                  metadata: Any = None) -> WriteResult:
        self._called("add_image")
        digest = hashlib.sha256(data).hexdigest()
        item_id = self._checked(item_id if item_id is not None else f"{digest[:24]}.png")
        try:
            Image.open(io.BytesIO(data)).load()
        except OSError as e:
            raise WriteRejectedError(f"not a readable image: {e}") from e
        deleted = self._displace("images", item_id)
        (self.uploads / f"{digest}.png").write_bytes(data)
        self._put("images", {"id": item_id, "upload": f"{digest}.png", "captions": list(captions),
                             **({"metadata": dict(metadata)} if metadata else {})})
        for n, caption in enumerate(captions):
            self._put("texts", {"id": f"{item_id}#{n}", "text": caption, "image_id": item_id})
        written = {"images": [item_id], **({"texts": [f"{item_id}#{n}" for n in range(len(captions))]}
                                          if captions else {})}
        return self._result("upsert", "images", item_id, written, deleted)

    def add_text(self, text: str, *, item_id: str | None = None, metadata: Any = None) -> WriteResult:
        self._called("add_text")
        digest = hashlib.sha256(text.encode()).hexdigest()
        item_id = self._checked(item_id if item_id is not None else f"text-{digest[:24]}")
        deleted = self._displace("texts", item_id)
        self._put("texts", {"id": item_id, "text": text, **({"metadata": dict(metadata)} if metadata else {})})
        return self._result("upsert", "texts", item_id, {"texts": [item_id]}, deleted)

    def delete(self, item_id: str) -> WriteResult:
        self._called("delete")
        side = next((s for s, store in self.engine.stores.items() if item_id in store.ids), None)
        if side is None:
            raise ItemNotFoundError(item_id)
        return self._result("delete", side, item_id, {}, self._displace(side, item_id))

    def needs_compaction(self) -> bool:
        self._called("needs_compaction")
        return self.due

    def compact(self, cancel: Cancellation | None = None) -> CompactionResult:
        if cancel is not None:
            cancel.check()
        self._called("compact")
        self.compacting += 1
        self.most_at_once = max(self.most_at_once, self.compacting)
        try:
            if self.gate is not None:
                assert self.gate.wait(timeout=20), "the test never opened the compaction gate"
            if self.compact_error is not None:
                raise self.compact_error
            self.compactions += 1
            self.due = False
            counts = {side: len(store.ids) for side, store in self.engine.stores.items()}
            return CompactionResult(f"v{self.compactions + 1}", counts, 0.25, self.seq)
        finally:
            self.compacting -= 1

    def stats(self) -> dict[str, Any]:
        self._called("stats")
        return {"generation": f"v{self.compactions + 1}", "last_seq": self.seq, "wal_bytes": 100 * self.seq,
                "sides": {s: {"base": 0, "delta": len(st.ids), "deleted": 0, "live": len(st.ids)}
                          for s, st in self.engine.stores.items()}}

    def image_path(self, side: str, item: dict[str, Any], *, root: Path | None = None) -> Path | None:
        self._called("image_path")
        if side == "images" and item.get("upload"):
            path = self.uploads / str(item["upload"])
            return path if path.is_file() else None
        return self.engine.image_path(item, root=root) if side == "images" else None

    def close(self) -> None:
        self._called("close")
        self.closed = True


@pytest.fixture()
def collection(tmp_path: Path) -> Path:
    root = tmp_path / "collection"
    root.mkdir()
    (root / "red.png").write_bytes(_png(color="red"))
    (root / "blue.png").write_bytes(_png(color="blue"))
    return root


@pytest.fixture()
def live(collection: Path, tmp_path: Path) -> FakeLive:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    return FakeLive(FakeEngine(collection), uploads)


def _settings(tmp_path: Path, **changes: Any) -> ServiceSettings:
    values: dict[str, Any] = {"index_dir": tmp_path / "index", "max_body_bytes": BODY_LIMIT,
                              "max_image_pixels": PIXEL_LIMIT, "max_text_chars": 50, "max_captions": MAX_CAPTIONS,
                              "api_key": KEY, **changes}
    return ServiceSettings(**values)


def _app(settings: ServiceSettings, live: FakeLive) -> FastAPI:
    return create_app(settings, engine_loader=lambda *_: cast(ServedCollection, live))


@pytest.fixture()
def client(tmp_path: Path, live: FakeLive) -> Iterator[TestClient]:
    with TestClient(_app(_settings(tmp_path), live), raise_server_exceptions=False) as running:
        yield running


def _image(color: str = "green", size: tuple[int, int] = (20, 10)) -> tuple[str, bytes, str]:
    return "photo.png", _png(*size, color=color), "image/png"


def _writes(live: FakeLive) -> list[str]:
    return [what for what, _ in live.calls if what in ("add_image", "add_text", "delete", "compact")]


def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ----- the API key -----

WRITE_ROUTES = [
    ("POST", "/v1/items", {"files": {"image": _image()}}),
    ("POST", "/v1/items", {"json": {"text": "a note"}}),
    ("PUT", "/v1/items/new.png", {"files": {"image": _image()}}),
    ("DELETE", "/v1/items/red.png", {}),
    ("POST", "/v1/compact", {}),
    ("GET", "/v1/collection", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITE_ROUTES)
def test_every_write_route_needs_the_key(tmp_path: Path, live: FakeLive, method: str, path: str,
                                         body: dict[str, Any]) -> None:
    with TestClient(_app(_settings(tmp_path), live)) as client:
        opened = list(live.calls)  # the startup's own (it logs the collection's stats)
        for headers, status, code in (({}, 401, "unauthorized"),
                                      ({"Authorization": f"Basic {KEY}"}, 401, "unauthorized"),
                                      ({"Authorization": "Bearer"}, 401, "unauthorized"),
                                      ({"Authorization": "Bearer "}, 401, "unauthorized"),
                                      ({"Authorization": "Bearer wrong"}, 403, "invalid_api_key"),
                                      ({"Authorization": f"Bearer {KEY}x"}, 403, "invalid_api_key"),
                                      ({"Authorization": f"Bearer {KEY[:-1]}"}, 403, "invalid_api_key")):
            reply = client.request(method, path, headers=headers, **body)
            _error(reply, status, code)
            assert (reply.headers.get("www-authenticate") == 'Bearer realm="duet-writes"') == (status == 401)
        assert live.calls == opened  # nothing reached the collection
        reply = client.request(method, path, headers=AUTH, **body)
        assert 200 <= reply.status_code < 300, reply.text


@pytest.mark.parametrize(("method", "path", "body"), WRITE_ROUTES)
@pytest.mark.parametrize("key", [None, ""])
def test_without_a_configured_key_writes_are_disabled(tmp_path: Path, live: FakeLive, method: str, path: str,
                                                      body: dict[str, Any], key: str | None) -> None:
    with TestClient(_app(_settings(tmp_path, api_key=key), live)) as client:
        for headers in ({}, AUTH, {"Authorization": "Bearer "}):
            message = _error(client.request(method, path, headers=headers, **body), 403, "writes_disabled")
            assert "DUET_API_KEY" in message["error"]["message"] and "--api-key" in message["error"]["message"]
        # reads still work without any key
        assert client.post("/v1/search", json={"text": "red"}).status_code == 200
        assert client.get("/v1/items/red.png").status_code == 200
    assert _writes(live) == []


def test_the_key_is_compared_in_constant_time(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    _error(client.get("/v1/collection", headers={"Authorization": "Bearer nope"}), 403, "invalid_api_key")
    assert client.get("/v1/collection", headers=AUTH).status_code == 200
    assert compared == [(b"nope", KEY.encode()), (KEY.encode(), KEY.encode())]


def test_a_non_ascii_key_matches_its_utf8_bytes(tmp_path: Path, live: FakeLive) -> None:
    key = "clé-secrète"
    with TestClient(_app(_settings(tmp_path, api_key=key), live)) as client:
        # HTTP headers travel as bytes: the key's UTF-8 bytes are the key
        raw = {"Authorization": b"Bearer " + key.encode()}
        assert client.get("/v1/collection", headers=raw).status_code == 200  # type: ignore[arg-type]
        _error(client.get("/v1/collection", headers={"Authorization": "Bearer cle-secrete"}), 403, "invalid_api_key")


def test_the_key_never_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.cli import build_parser, settings_from

    monkeypatch.setenv("DUET_API_KEY", "from-env")
    settings = ServiceSettings()
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings) and "from-env" not in str(settings.model_dump())
    flagged = settings_from(build_parser().parse_args(["--api-key", "from-flag"]))
    assert flagged.api_key is not None and flagged.api_key.get_secret_value() == "from-flag"
    monkeypatch.delenv("DUET_API_KEY")
    assert ServiceSettings().api_key is None


# ----- adding, replacing and deleting -----

def test_an_image_with_captions_is_added_and_served(client: TestClient, live: FakeLive) -> None:
    data = _png(30, 20, color="purple")
    reply = client.post("/v1/items", headers=AUTH, files={"image": ("p.png", data, "image/png")},
                        data={"captions": ["a purple square", "purple"], "metadata": '{"source": "camera"}',
                              "id": "cams/one.png"})
    assert reply.status_code == 201, reply.text
    assert reply.headers["location"] == "/v1/items/cams%2Fone.png"
    assert reply.json() == {"seq": 1, "op": "upsert", "id": "cams/one.png", "side": "images", "replaced": False,
                            "written": {"images": ["cams/one.png"], "texts": ["cams/one.png#0", "cams/one.png#1"]},
                            "deleted": {}}
    item = client.get(reply.headers["location"]).json()
    assert item["metadata"] == {"source": "camera"} and item["image_url"] == "/v1/items/cams%2Fone.png/image"
    image = client.get(item["image_url"])
    assert image.status_code == 200 and image.content == data and image.headers["content-type"] == "image/png"
    assert int(image.headers["content-length"]) == len(data)
    caption = client.get("/v1/items/cams%2Fone.png%231").json()
    assert caption["text"] == "purple" and caption["image_url"] == item["image_url"]
    assert client.get("/v1/items/cams%2Fone.png%231/image").content == data
    hits = client.post("/v1/search", json={"text": "purple", "top_k": 20}).json()["hits"]
    assert "cams/one.png" in [h["id"] for h in hits]
    # the indexed images are still served from the collection root
    assert client.get("/v1/items/red.png/image").status_code == 200


@pytest.mark.parametrize("captions", [
    {"data": {"captions": ["one", "two"]}},
    {"files": [("captions", (None, '["one", "two"]', "application/json"))]},  # a part sent as JSON: a list
    {"files": [("captions", (None, ' ["one"] ', "application/json")), ("captions", (None, "two", "text/plain"))]},
])
def test_captions_as_repeated_fields_or_json_parts(client: TestClient, live: FakeLive,
                                                   captions: dict[str, Any]) -> None:
    files = [("image", _image()), *captions.get("files", [])]
    reply = client.post("/v1/items", headers=AUTH, files=files, data=captions.get("data"))
    assert reply.status_code == 201, reply.text
    image_id = reply.json()["id"]
    assert live.engine.stores["images"].items[-1]["captions"] == ["one", "two"]
    assert reply.json()["written"]["texts"] == [f"{image_id}#0", f"{image_id}#1"]


def test_a_caption_that_only_looks_like_a_list_stays_text(client: TestClient, live: FakeLive) -> None:
    for caption in ("[draft] a dog", "[", "  strip me  ", '["one", "two"]', "[1]"):  # a text part: as it is
        reply = client.post("/v1/items", headers=AUTH, files={"image": _image()}, data={"captions": caption})
        assert reply.status_code in (200, 201), reply.text
        assert live.engine.stores["images"].items[-1]["captions"] == [caption.strip()]


def test_a_default_id_is_the_collections_and_the_same_image_again_replaces(client: TestClient) -> None:
    first = client.post("/v1/items", headers=AUTH, files={"image": _image("olive")})
    assert first.status_code == 201 and first.json()["id"].endswith(".png")
    again = client.post("/v1/items", headers=AUTH, files={"image": _image("olive")})
    assert again.status_code == 200 and again.json()["replaced"] is True and again.json()["id"] == first.json()["id"]


def test_an_image_as_base64_json(client: TestClient, live: FakeLive) -> None:
    data = _png(12, 12, color="navy")
    reply = client.post("/v1/items", headers=AUTH, json={"image_base64": base64.b64encode(data).decode(),
                                                         "captions": ["navy"], "id": "navy.png",
                                                         "metadata": {"tags": ["a", "b"]}})
    assert reply.status_code == 201, reply.text
    assert (live.uploads / f"{hashlib.sha256(data).hexdigest()}.png").read_bytes() == data
    assert client.get("/v1/items/navy.png").json()["metadata"] == {"tags": ["a", "b"]}


def test_a_text_item_as_json(client: TestClient, live: FakeLive) -> None:
    reply = client.post("/v1/items", headers=AUTH, json={"text": "  a note about dogs ", "id": "note-1",
                                                         "metadata": {"lang": "en"}})
    assert reply.status_code == 201, reply.text
    assert reply.json()["side"] == "texts" and reply.headers["location"] == "/v1/items/note-1"
    assert client.get("/v1/items/note-1").json() == {"id": "note-1", "text": "a note about dogs", "side": "texts",
                                                     "metadata": {"lang": "en"}, "image_url": None}
    hits = client.post("/v1/search", json={"text": "dogs", "side": "texts", "top_k": 20}).json()["hits"]
    assert "note-1" in [h["id"] for h in hits]
    _error(client.get("/v1/items/note-1/image"), 404, "image_not_found")
    # multipart form fields alone make a text item too
    form = client.post("/v1/items", headers=AUTH, files={"text": (None, "another note"), "id": (None, "note-2")})
    assert form.status_code == 201, form.text


def test_put_creates_then_replaces(client: TestClient, live: FakeLive) -> None:
    created = client.put("/v1/items/dir/new.png", headers=AUTH, files={"image": _image("red")},
                         data={"captions": ["one", "two"]})
    assert created.status_code == 201 and created.json()["id"] == "dir/new.png"
    assert created.headers["location"] == "/v1/items/dir%2Fnew.png"
    replaced = client.put("/v1/items/dir%2Fnew.png", headers=AUTH, files={"image": _image("blue")},
                          data={"captions": "only"})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["replaced"] is True
    assert replaced.json()["deleted"] == {"images": ["dir/new.png"], "texts": ["dir/new.png#0", "dir/new.png#1"]}
    assert client.get("/v1/items/dir/new.png%230").json()["text"] == "only"
    _error(client.get("/v1/items/dir/new.png%231"), 404, "item_not_found")
    # the same id in the body is fine, another is not
    same = client.put("/v1/items/note", headers=AUTH, json={"text": "a", "id": "note"})
    assert same.status_code == 201
    _error(client.put("/v1/items/note", headers=AUTH, json={"text": "b", "id": "other"}), 422, "id_mismatch")
    for bad in ("a%23b", "%20lead", "tab%09here"):
        _error(client.put(f"/v1/items/{bad}", headers=AUTH, json={"text": "t"}), 422, "invalid_id")
    _error(client.put("/v1/items/x/image", headers=AUTH, json={"text": "t"}), 405, "method_not_allowed")
    assert client.get("/v1/items/note").json()["text"] == "a"


def test_delete_removes_an_image_with_its_captions_everywhere(client: TestClient, live: FakeLive) -> None:
    client.put("/v1/items/gone.png", headers=AUTH, files={"image": _image()}, data={"captions": ["bye"]})
    reply = client.delete("/v1/items/gone.png", headers=AUTH)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"seq": 2, "op": "delete", "id": "gone.png", "side": "images", "replaced": False,
                            "written": {}, "deleted": {"images": ["gone.png"], "texts": ["gone.png#0"]}}
    for path in ("/v1/items/gone.png", "/v1/items/gone.png/image", "/v1/items/gone.png%230"):
        _error(client.get(path), 404, "item_not_found")
    hits = client.post("/v1/search", json={"text": "bye", "side": "texts", "top_k": 20}).json()["hits"]
    assert "gone.png#0" not in [h["id"] for h in hits]
    body = _error(client.delete("/v1/items/gone.png", headers=AUTH), 404, "item_not_found")
    assert "gone.png" in body["error"]["message"]
    # one caption of an indexed image alone
    assert client.delete("/v1/items/red.png%230", headers=AUTH).json()["deleted"] == {"texts": ["red.png#0"]}
    assert client.get("/v1/items/red.png").status_code == 200


# ----- the validation matrix: each bad write, its status and code; none reaches the collection -----

@pytest.mark.parametrize(("fields", "files", "status", "code"), [
    ({}, {"image": ("e.png", b"", "image/png")}, 422, "empty_image"),
    ({}, {"image": ("t.png", _noise_png(90, 90)[:4000], "image/png")}, 422, "corrupt_image"),
    ({}, {"image": ("x.txt", b"hello", "text/plain")}, 415, "not_an_image"),
    ({}, {"image": ("t.tif", _tiff(), "image/tiff")}, 415, "unsupported_image_format"),
    ({}, {"image": ("big.png", _png(100, 101), "image/png")}, 413, "image_too_large"),
    ({}, {"photo": ("p.png", _png(), "image/png")}, 422, "invalid_request"),
    ({"image": "not a file"}, {}, 422, "invalid_request"),
    ({"captions": "no image"}, {}, 422, "invalid_request"),
    ({"text": "both"}, {"image": _image()}, 422, "invalid_request"),
    ({"text": "a text", "captions": "not for texts"}, {}, 422, "invalid_request"),
    ({"captions": ""}, {"image": _image()}, 422, "empty_text"),
    ({"captions": ["fine", "  "]}, {"image": _image()}, 422, "empty_text"),
    ({"captions": "x" * 51}, {"image": _image()}, 422, "text_too_long"),
    ({}, {"image": _image(), "captions": (None, '["fine", 1]', "application/json")}, 422, "invalid_request"),
    ({"captions": ["a", "b", "c", "d"]}, {"image": _image()}, 422, "too_many_captions"),
    ({}, {"image": _image(), "captions": (None, '["a", "b", "c", "d"]', "application/json")}, 422,
     "too_many_captions"),
    ({"metadata": "{broken"}, {"image": _image()}, 422, "invalid_metadata"),
    ({"metadata": "[1, 2]"}, {"image": _image()}, 422, "invalid_request"),
    ({"metadata": '"a string"'}, {"image": _image()}, 422, "invalid_request"),
    # read as strictly as a JSON body (each was a 500 or a value no log line could encode)
    ({"metadata": '{"n": ' + "1" * 5000 + "}"}, {"image": _image()}, 422, "invalid_metadata"),
    ({"metadata": '{"s": "\\ud800"}'}, {"image": _image()}, 422, "invalid_metadata"),
    ({"metadata": '{"x": NaN}'}, {"image": _image()}, 422, "invalid_metadata"),
    ({"captions": "[" + "1" * 5000 + "]"}, {"image": _image()}, 422, "text_too_long"),
    ({"id": "a#1"}, {"image": _image()}, 422, "invalid_id"),
    ({"id": ""}, {"image": _image()}, 422, "invalid_id"),
    ({"id": " padded"}, {"image": _image()}, 422, "invalid_id"),
    ({"id": "tab\there"}, {"image": _image()}, 422, "invalid_id"),
    ({"id": "dir/image"}, {"image": _image()}, 422, "invalid_id"),
    ({"id": "x" * 513}, {"image": _image()}, 422, "invalid_id"),
    ({"id": ["one", "two"]}, {"image": _image()}, 422, "invalid_request"),
    ({"colour": "red"}, {"image": _image()}, 422, "invalid_request"),
    ({"text": ""}, {}, 422, "empty_text"),
    ({"text": "x" * 51}, {}, 422, "text_too_long"),
])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_bad_multipart_writes(client: TestClient, live: FakeLive, method: str, fields: dict[str, Any],
                              files: dict[str, Any], status: int, code: str) -> None:
    # Fields as parts without a file name, so that a request without a file is still multipart.
    parts: list[tuple[str, Any]] = [(name, (None, v)) for name, value in fields.items()
                                    for v in (value if isinstance(value, list) else [value])]
    parts += list(files.items())
    path = "/v1/items" if method == "POST" else "/v1/items/target.png"
    _error(client.request(method, path, headers=AUTH, files=parts), status, code)
    assert _writes(live) == []


@pytest.mark.parametrize(("payload", "status", "code"), [
    ({"text": ""}, 422, "empty_text"),
    ({"text": " \t\n "}, 422, "empty_text"),
    ({"text": "x" * 51}, 422, "text_too_long"),
    ({"text": 5}, 422, "invalid_request"),
    ({"text": None}, 422, "invalid_request"),
    ({}, 422, "invalid_request"),
    ({"text": "ok", "image_base64": "AAAA"}, 422, "invalid_request"),
    ({"text": "ok", "captions": ["no"]}, 422, "invalid_request"),
    ({"text": "ok", "metadata": [1]}, 422, "invalid_request"),
    ({"text": "ok", "metadata": "{}"}, 422, "invalid_request"),
    ({"text": "ok", "id": "a#b"}, 422, "invalid_id"),
    ({"text": "ok", "id": 7}, 422, "invalid_request"),
    ({"text": "ok", "extra": 1}, 422, "invalid_request"),
    ({"image_base64": "not base64!"}, 422, "invalid_base64"),
    ({"image_base64": ""}, 422, "empty_image"),
    ({"image_base64": base64.b64encode(b"plain text, not an image").decode()}, 415, "not_an_image"),
    ({"image_base64": base64.b64encode(_png(101, 100)).decode()}, 413, "image_too_large"),
    ({"image_base64": base64.b64encode(_png()).decode(), "captions": "one"}, 422, "invalid_request"),
    ({"image_base64": base64.b64encode(_png()).decode(), "captions": [""]}, 422, "empty_text"),
    ({"image_base64": base64.b64encode(_png()).decode(), "captions": ["a"] * 4}, 422, "too_many_captions"),
    ([1, 2], 422, "invalid_request"),
    ("text", 422, "invalid_request"),
    (None, 422, "invalid_request"),
])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_bad_json_writes(client: TestClient, live: FakeLive, method: str, payload: object, status: int,
                         code: str) -> None:
    path = "/v1/items" if method == "POST" else "/v1/items/target"
    _error(client.request(method, path, headers={**AUTH, "Content-Type": "application/json"},
                          content=json.dumps(payload)), status, code)
    assert _writes(live) == []


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_bad_bodies_content_types_and_sizes(client: TestClient, live: FakeLive, method: str) -> None:
    path = "/v1/items" if method == "POST" else "/v1/items/target"

    def send(content: bytes, content_type: str) -> Any:
        return client.request(method, path, headers={**AUTH, "Content-Type": content_type}, content=content)

    _error(send(b"\xff\xfe{", "application/json"), 400, "invalid_encoding")
    _error(send(b"{broken", "application/json"), 400, "malformed_json")
    _error(send(b"", "application/json"), 400, "malformed_json")
    _error(send(b"text=hi", "text/plain"), 415, "unsupported_media_type")
    _error(send(b"text=hi", "application/x-www-form-urlencoded"), 415, "unsupported_media_type")
    _error(send(b"{}", ""), 415, "unsupported_media_type")
    big = b'{"text": "' + b"x" * BODY_LIMIT + b'"}'
    _error(send(big, "application/json"), 413, "body_too_large")
    upload = {"image": ("big.png", b"\x89PNG" + bytes(BODY_LIMIT), "image/png")}
    _error(client.request(method, path, headers=AUTH, files=upload), 413, "body_too_large")
    two = [("image", ("a.png", _png(), "image/png")), ("image", ("b.png", _png(), "image/png"))]
    _error(client.request(method, path, headers=AUTH, files=two), 400, "malformed_multipart")
    assert _writes(live) == []


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_deep_json_is_a_4xx(client: TestClient, live: FakeLive) -> None:
    deep = b"[" * 20_000
    for path in ("/v1/items", "/v1/search"):
        _error(client.post(path, headers={**AUTH, "Content-Type": "application/json"}, content=deep),
               400, "malformed_json")
    _error(client.post("/v1/items", headers=AUTH, files={"image": _image()}, data={"metadata": "[" * 20_000}),
           422, "invalid_metadata")
    _error(client.post("/v1/items", headers=AUTH, json={"text": "ok", "metadata": _nested(33)}), 422,
           "invalid_metadata")
    _error(client.post("/v1/items", headers=AUTH, files={"image": _image()},
                       data={"metadata": json.dumps(_nested(500))}), 422, "invalid_metadata")
    assert _writes(live) == []
    accepted = client.post("/v1/items", headers=AUTH, json={"text": "ok", "metadata": _nested(32)})
    assert accepted.status_code == 201, accepted.text


def test_limits_at_their_bounds_are_accepted(client: TestClient) -> None:
    reply = client.post("/v1/items", headers=AUTH, files={"image": ("ok.png", _png(100, 100), "image/png")},
                        data={"captions": ["x" * 50] * MAX_CAPTIONS, "id": "i" * 512})
    assert reply.status_code == 201, reply.text
    assert client.post("/v1/items", headers=AUTH, json={"text": "y" * 50}).status_code == 201


def test_a_write_the_collection_refuses_is_a_422(client: TestClient, live: FakeLive) -> None:
    live.reject = "metadata nests too deep"
    body = _error(client.post("/v1/items", headers=AUTH, json={"text": "ok"}), 422, "write_rejected")
    assert body["error"]["message"] == "metadata nests too deep"
    _error(client.post("/v1/items", headers=AUTH, files={"image": _image()}), 422, "write_rejected")


def test_an_unexpected_failure_is_a_json_500(client: TestClient, live: FakeLive,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> WriteResult:
        raise OSError("disk on fire")

    monkeypatch.setattr(live, "add_text", broken)
    reply = client.post("/v1/items", headers=AUTH, json={"text": "ok"})
    assert reply.status_code == 500 and reply.json()["error"]["code"] == "internal_error"
    assert 'duet_writes_total{op="upsert",outcome="error"} 1.0' in client.get("/metrics").text


def test_without_a_collection_writes_get_503(tmp_path: Path) -> None:
    def locked(settings: ServiceSettings, encoder: object) -> ServedCollection:
        raise CollectionLockedError("index is being written by another process")

    with TestClient(create_app(_settings(tmp_path), engine_loader=locked)) as client:
        assert "CollectionLockedError" in client.get("/readyz").json()["reason"]
        for method, path, body in WRITE_ROUTES:
            _error(client.request(method, path, headers=AUTH, **body), 503, "index_unavailable")
        _error(client.request("POST", "/v1/items", **WRITE_ROUTES[0][2]), 401, "unauthorized")  # the key first


# ----- where the work runs: writes on the engine worker, compaction on its own thread -----

def test_writes_and_reads_run_on_the_engine_worker(client: TestClient, live: FakeLive) -> None:
    client.post("/v1/items", headers=AUTH, files={"image": _image()}, data={"id": "w.png"})
    client.post("/v1/items", headers=AUTH, json={"text": "note"})
    client.delete("/v1/items/w.png", headers=AUTH)
    client.get("/v1/collection", headers=AUTH)
    client.post("/v1/search", json={"text": "red"})
    client.get("/v1/items/red.png")
    client.get("/v1/items/red.png/image")
    threads = {thread for what, thread in live.calls if what != "compact"}
    assert len(threads) == 1 and next(iter(threads)).startswith("duet-engine")
    assert {"add_image", "add_text", "delete", "needs_compaction", "stats", "reading", "image_path"} <= {
        what for what, _ in live.calls}


def test_a_requested_compaction_runs_beside_searches_and_writes(client: TestClient, live: FakeLive) -> None:
    live.gate = threading.Event()
    started = client.post("/v1/compact", headers=AUTH)
    assert started.status_code == 202, started.text
    assert started.headers["location"] == "/v1/collection"
    assert started.json()["compaction"]["running"] is True and started.json()["compaction"]["reason"] == "request"
    _wait_for(lambda: live.compacting == 1)
    # while it runs: searches, item reads and writes are answered, and a second compaction is refused
    assert client.post("/v1/search", json={"text": "red"}).status_code == 200
    assert client.post("/v1/items", headers=AUTH, json={"text": "during"}).status_code == 201
    assert client.get("/v1/items/red.png").status_code == 200
    _error(client.post("/v1/compact", headers=AUTH), 409, "compaction_running")
    state = client.get("/v1/collection", headers=AUTH).json()
    assert state["compaction"]["running"] is True and state["last_seq"] == 1
    live.gate.set()
    _wait_for(lambda: not client.get("/v1/collection", headers=AUTH).json()["compaction"]["running"])
    done = client.get("/v1/collection", headers=AUTH).json()
    assert done["generation"] == "v2"
    assert done["compaction"]["last_result"] == {"generation": "v2", "counts": {"images": 5, "texts": 3},
                                                 "seconds": 0.25, "wal_seq": 1}
    assert done["compaction"]["last_error"] is None and done["compaction"]["last_finished_at"]
    compact_threads = live.threads("compact")
    assert len(compact_threads) == 1 and next(iter(compact_threads)).startswith("duet-compaction")
    metrics = client.get("/metrics").text
    assert 'duet_compactions_total{outcome="ok"} 1.0' in metrics and "duet_compaction_seconds_count 1.0" in metrics


def test_the_threshold_starts_one_compaction_in_the_background(client: TestClient, live: FakeLive) -> None:
    live.gate, live.due = threading.Event(), True
    for n in range(4):  # each write finds the changes over the threshold; only the first starts a compaction
        assert client.post("/v1/items", headers=AUTH, json={"text": f"note {n}"}).status_code == 201
    _wait_for(lambda: live.compacting == 1)
    assert client.get("/v1/collection", headers=AUTH).json()["compaction"]["reason"] == "threshold"
    live.gate.set()
    _wait_for(lambda: live.compactions == 1 and live.compacting == 0)
    assert live.most_at_once == 1 and live.threads("compact") and live.threads("compact") != live.threads("add_text")


def test_a_failed_compaction_is_reported_and_not_retried_by_every_write(client: TestClient, live: FakeLive) -> None:
    live.compact_error, live.due = OSError("no space left on device"), True
    assert client.post("/v1/items", headers=AUTH, json={"text": "first"}).status_code == 201
    _wait_for(lambda: client.get("/v1/collection", headers=AUTH).json()["compaction"]["last_error"] is not None)
    state = client.get("/v1/collection", headers=AUTH).json()["compaction"]
    assert state["last_error"] == "OSError: no space left on device" and state["running"] is False
    for n in range(3):  # acknowledged as ever; the threshold does not start the failing compaction again at once
        assert client.post("/v1/items", headers=AUTH, json={"text": f"more {n}"}).status_code == 201
    assert _writes(live).count("compact") == 1
    live.compact_error = None
    assert client.post("/v1/compact", headers=AUTH).status_code == 202  # a request still starts one
    _wait_for(lambda: live.compactions == 1)
    _wait_for(lambda: client.get("/v1/collection", headers=AUTH).json()["compaction"]["last_error"] is None)
    assert 'duet_compactions_total{outcome="error"} 1.0' in client.get("/metrics").text


def test_shutdown_waits_for_a_running_compaction_then_closes(tmp_path: Path, live: FakeLive) -> None:
    live.gate = threading.Event()
    with TestClient(_app(_settings(tmp_path), live)) as client:
        assert client.post("/v1/compact", headers=AUTH).status_code == 202
        _wait_for(lambda: live.compacting == 1)
        threading.Timer(0.3, live.gate.set).start()
    assert live.compactions == 1 and live.closed
    assert [what for what, _ in live.calls][-2:] == ["compact", "close"]


# ----- metrics and documentation -----

def test_metrics_count_writes_by_operation_and_outcome(client: TestClient) -> None:
    client.post("/v1/items", headers=AUTH, json={"text": "one"})
    client.put("/v1/items/one", headers=AUTH, json={"text": "one again"})
    client.post("/v1/items", headers=AUTH, json={"text": ""})
    client.delete("/v1/items/red.png", headers=AUTH)
    client.delete("/v1/items/red.png", headers=AUTH)
    client.delete("/v1/items/red.png")  # no key: not a write
    text = client.get("/metrics").text
    assert 'duet_writes_total{op="upsert",outcome="ok"} 2.0' in text
    assert 'duet_writes_total{op="upsert",outcome="rejected"} 1.0' in text
    assert 'duet_writes_total{op="delete",outcome="ok"} 1.0' in text
    assert 'duet_writes_total{op="delete",outcome="not_found"} 1.0' in text
    assert 'duet_http_requests_total{method="DELETE",route="/v1/items/{item_id:item_id}",status="401"} 1.0' in text


def test_the_write_routes_are_documented_with_the_bearer_key(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    add = schema["paths"]["/v1/items"]["post"]
    assert set(add["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert {"201", "200"} <= set(add["responses"])
    for path, method in (("/v1/items", "post"), ("/v1/items/{item_id}", "put"), ("/v1/items/{item_id}", "delete"),
                         ("/v1/compact", "post"), ("/v1/collection", "get")):
        assert schema["paths"][path][method]["security"] == [{"HTTPBearer": []}], (path, method)
    # reads: open (no key) unless the read key is set
    assert sorted(map(str, schema["paths"]["/v1/search"]["post"]["security"])) == ["{'HTTPBearer': []}", "{}"]
