"""The HTTP API in process (starlette's TestClient) over a fake engine: every route's shape, every validation
rule and error body, without Java, Lucene or a model. The real engine behind a real uvicorn is tests/test_service.py.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image
from starlette.testclient import TestClient

from indexer.params import SearchParams
from indexer.query import Query
from indexer.search import Explanation, Hit, SearchEngine, SearchResult, TermMatch, sparse_leg_warnings
from indexer.served import ServedCollection
from indexer.store import CheckpointBinding, IndexManifest, SideManifest
from service.app import create_app
from service.dependencies import get_engine
from service.settings import ServiceSettings
from service.state import state_of

STOPWORDS = {"a", "an", "the", "of", "on"}
BODY_LIMIT = 64 * 1024
PIXEL_LIMIT = 100 * 100


def _png(width: int = 16, height: int = 12, color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _noise_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()  # noise does not compress: truncating the file cuts into its pixels
    Image.frombytes("RGB", (width, height), np.random.default_rng(0).bytes(width * height * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def _tiff() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="TIFF")
    return buffer.getvalue()


@dataclass
class FakeStore:
    ids: list[str]
    items: list[dict[str, Any]]


@dataclass
class FakeEngine:
    """What the routes use of a SearchEngine: content words are the sparse terms, every item matches, in order.
    The sparse-leg rules (refusal, warning) are the real engine's."""

    root: Path
    stores: dict[str, FakeStore] = field(default_factory=dict)
    searches: list[SearchParams] = field(default_factory=list)
    fail_with: Exception | None = None
    closed: bool = False

    @property
    def sides(self) -> tuple[str, ...]:
        return tuple(self.stores)

    def __post_init__(self) -> None:
        images = [{"id": "red.png", "path": "red.png"}, {"id": "blue.png", "path": "blue.png"},
                  {"id": "gone.png", "path": "gone.png"}, {"id": "escape.png", "path": "../outside.png"},
                  {"id": "dir/with space.png", "path": "red.png"}]
        texts = [{"id": "red.png#0", "image_id": "red.png", "text": "a red square"},
                 {"id": "blue.png#0", "image_id": "blue.png", "text": "a blue dot"}]
        self.stores = self.stores or {"images": FakeStore([i["id"] for i in images], images),
                                      "texts": FakeStore([t["id"] for t in texts], texts)}
        self.vocabulary: list[str] = []
        self.encoder = SimpleNamespace(checkpoint=SimpleNamespace(content_hash="c" * 8))  # what a registry shares
        self.manifest = IndexManifest(
            created_at="2025-01-01T00:00:00Z",
            checkpoint=CheckpointBinding(path="ckpt", content_hash="c" * 8, backbone_fingerprint="b" * 8,
                                         vocabulary_digest="v" * 8, method="test"),
            temperature=0.05, fusion_dense_weight=0.1, fusion_sparse_weight=0.2,
            quantization={"scale": 100.0, "rule": "round"}, pruning={"images": None, "texts": None},
            collection={"name": "fake", "root": str(self.root), "splits": ["test"]},
            sides={side: SideManifest(count=len(store.ids), dense_dim=4, faiss_factory="Flat", lucene_docs=len(
                store.ids), mean_terms=3.0, bytes={"dense_store": 1}, files={}) for side, store in self.stores.items()})

    @property
    def collection_root(self) -> Path:
        return self.root

    @property
    def shard_dirs(self) -> list[Path]:  # one shard: uploads would be under the root's live/uploads
        return [self.root]

    def owner(self, item_id: str) -> int:  # noqa: ARG002 (one shard owns every id)
        return 0

    image_path = SearchEngine.image_path  # the real rule: a file under the root, never outside it

    def _term(self, word: str) -> int:
        if word not in self.vocabulary:
            self.vocabulary.append(word)
        return self.vocabulary.index(word)

    def _query(self, words: list[str]) -> Query:
        ids = np.array(sorted({self._term(w) for w in words}), np.int32)
        return Query(np.full(4, 0.5, np.float32), ids, np.linspace(1.0, 0.5, ids.size, dtype=np.float32))

    def encode_text(self, text: str) -> Query:
        words = ["".join(c for c in w if c.isalnum()) for w in text.lower().split()]
        return self._query([w for w in words if w and w not in STOPWORDS])

    def encode_image(self, image: Image.Image) -> Query:
        return self._query(["pixels", f"w{image.width}"])

    def query_terms(self, query: Query, limit: int = 32) -> list[tuple[str, float]]:
        return [(self.vocabulary[int(t)], float(w)) for t, w in zip(query.term_ids, query.term_weights,
                                                                    strict=True)][:limit]

    def unmatched_words(self, text: str) -> list[str]:  # noqa: ARG002 - the signature the routes call
        return []  # every word has a term here: the vocabulary grows with the words it meets

    def search(self, query: Query, params: SearchParams) -> SearchResult:
        if self.fail_with is not None:
            raise self.fail_with
        self.searches.append(params)
        warnings = sparse_leg_warnings(query, params)
        store = self.stores[params.side]
        explanation = Explanation([TermMatch("red", 0, 1.0, 0.5, 0.5)], [("red", 0.5)]) if params.explain else None
        rows = range(len(store.ids))[params.offset:params.offset + params.top_k]
        hits = [Hit(store.ids[row], rank, 0.9 - row / 10, 0.5, 1.0 - row / 10, store.items[row], explanation)
                for rank, row in enumerate(rows, start=params.offset + 1)]
        weights = {"w_dense": 0.1 if params.w_dense is None else params.w_dense,
                   "w_sparse": 0.2 if params.w_sparse is None else params.w_sparse, "temperature": 0.05}
        return SearchResult(hits, len(store.ids), weights, {"dense_ms": 0.1, "sparse_ms": 0.2, "rescore_ms": 0.3},
                            warnings)

    def item(self, item_id: str) -> tuple[str, dict[str, Any]]:
        for side, store in self.stores.items():
            if item_id in store.ids:
                return side, store.items[store.ids.index(item_id)]
        raise KeyError(item_id)

    def close(self) -> None:
        self.closed = True


@dataclass
class ReadOnlyLive:
    """What the lifespan and the read routes use of a live collection, over a fake engine (the write API's own
    tests are tests/test_service_writes.py)."""

    engine: FakeEngine

    def reading(self) -> AbstractContextManager[FakeEngine]:
        return nullcontext(self.engine)

    def stats(self) -> dict[str, Any]:
        return {"sides": {side: {"live": len(store.ids)} for side, store in self.engine.stores.items()}}

    def close(self) -> None:
        self.engine.close()


@pytest.fixture()
def collection(tmp_path: Path) -> Path:
    root = tmp_path / "collection"
    root.mkdir()
    (root / "red.png").write_bytes(_png(color="red"))
    (root / "blue.png").write_bytes(_png(color="blue"))
    (tmp_path / "outside.png").write_bytes(_png(color="black"))  # beside the root: never served
    return root


@pytest.fixture()
def settings(tmp_path: Path) -> ServiceSettings:
    return ServiceSettings(index_dir=tmp_path / "no-index", max_body_bytes=BODY_LIMIT, max_image_pixels=PIXEL_LIMIT,
                           max_text_chars=50, max_top_k=20, max_offset=30, max_candidate_k=200)


@pytest.fixture()
def engine(collection: Path) -> FakeEngine:
    return FakeEngine(collection)


def _unavailable(settings: ServiceSettings, encoder: object) -> SearchEngine:
    raise RuntimeError("no engine in these tests")


@pytest.fixture()
def app(settings: ServiceSettings, engine: FakeEngine) -> FastAPI:
    app = create_app(settings, engine_loader=_unavailable)
    app.dependency_overrides[get_engine] = lambda: cast(SearchEngine, engine)
    return app


@pytest.fixture()
def client(app: FastAPI) -> Iterator[TestClient]:
    # The lifespan's loader finds no engine: the engine comes from the override alone. Server errors come back as
    # 500 responses, as from a server, instead of being raised here.
    with TestClient(app, raise_server_exceptions=False) as running:
        yield running


def _error(reply: Any, status: int, code: str) -> dict[str, Any]:
    """The one error shape; its request_id is the response's X-Request-ID (null where the body limit refuses a
    request from its headers, before the request is routed)."""
    assert reply.status_code == status, reply.text[:500]
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert body["error"]["request_id"] == reply.headers["x-request-id"]  # refusals from headers alone too
    return body


# ----- good requests -----

def test_text_search_has_the_documented_shape(client: TestClient, engine: FakeEngine) -> None:
    reply = client.post("/v1/search", json={"text": "  a Red square ", "top_k": 2, "offset": 1, "explain": True,
                                            "w_dense": 0.5, "mode": "hybrid", "fusion": "rrf"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"request_id", "query", "side", "mode", "fusion", "weights", "top_k", "offset",
                         "candidates", "hits", "timings_ms", "warnings", "plan", "plans", "rows"}
    assert body["request_id"] == reply.headers["x-request-id"]
    assert body["query"] == {"kind": "text", "text": "a Red square",
                             "terms": [{"term": "red", "weight": 1.0}, {"term": "square", "weight": 0.5}],
                             "unmatched_terms": []}
    assert (body["side"], body["mode"], body["fusion"], body["top_k"], body["offset"]) == (
        "images", "hybrid", "rrf", 2, 1)
    assert body["weights"] == {"w_dense": 0.5, "w_sparse": 0.2, "temperature": 0.05}
    assert body["candidates"] == 5 and body["warnings"] == []
    assert [(h["id"], h["rank"]) for h in body["hits"]] == [("blue.png", 2), ("gone.png", 3)]
    hit = body["hits"][0]
    assert hit["scores"] == {"dense": pytest.approx(0.8), "sparse": 0.5, "fused": pytest.approx(0.9)}
    assert hit["metadata"] == {"id": "blue.png", "path": "blue.png", "side": "images",
                               "image_url": "/v1/items/blue.png/image"}
    assert hit["explanation"] == {"matched_terms": [{"term": "red", "query_weight": 1.0, "item_weight": 0.5,
                                                     "contribution": 0.5}],
                                  "item_terms": [{"term": "red", "weight": 0.5}]}
    assert set(body["timings_ms"]) == {"decode", "encode", "dense_ms", "sparse_ms", "rescore_ms", "total"}
    # The engine gets the search options alone, with the request's values over the one set of defaults.
    assert engine.searches == [SearchParams(top_k=2, offset=1, explain=True, w_dense=0.5, fusion="rrf")]


def test_caption_hits_link_their_image_and_ids_are_quoted(client: TestClient) -> None:
    body = client.post("/v1/search", json={"text": "blue", "side": "texts", "mode": "dense"}).json()
    assert [h["metadata"]["image_url"] for h in body["hits"]] == ["/v1/items/red.png/image",
                                                                  "/v1/items/blue.png/image"]
    assert body["hits"][0]["explanation"] is None
    images = client.post("/v1/search", json={"text": "blue", "top_k": 5}).json()
    assert images["hits"][4]["metadata"]["image_url"] == "/v1/items/dir%2Fwith%20space.png/image"


def test_image_queries_as_multipart_and_base64_agree(client: TestClient, engine: FakeEngine) -> None:
    multipart = client.post("/v1/search", data={"side": "texts", "top_k": "1", "mode": "sparse"},
                            files={"image": ("q.png", _png(30, 20), "image/png")})
    assert multipart.status_code == 200, multipart.text
    assert multipart.json()["query"] == {"kind": "image", "text": None, "terms": [
        {"term": "pixels", "weight": 1.0}, {"term": "w30", "weight": 0.5}], "unmatched_terms": []}
    encoded = client.post("/v1/search", json={"image_base64": base64.b64encode(_png(30, 20)).decode(),
                                              "side": "texts", "top_k": 1, "mode": "sparse"})
    assert encoded.status_code == 200, encoded.text
    assert encoded.json()["hits"] == multipart.json()["hits"]
    assert engine.searches[0] == engine.searches[1] == SearchParams(side="texts", top_k=1, mode="sparse")
    assert multipart.json()["timings_ms"]["decode"] > 0


def test_a_hybrid_query_without_sparse_terms_warns(client: TestClient) -> None:
    reply = client.post("/v1/search", json={"text": "the of a"})
    assert reply.status_code == 200
    assert reply.json()["query"]["terms"] == [] and "sparse leg is empty" in reply.json()["warnings"][0]


def test_limits_at_their_bounds_are_accepted(client: TestClient) -> None:
    reply = client.post("/v1/search", json={"text": "x" * 50, "top_k": 20, "offset": 30, "candidate_k": 200,
                                            "w_dense": 0, "w_sparse": 1000, "sparse_query_terms": 0})
    assert reply.status_code == 200, reply.text
    assert client.post("/v1/search", json={"text": "ok", "sparse_query_terms": 100_000}).status_code == 200


def test_items_and_their_images(client: TestClient, collection: Path) -> None:
    assert client.get("/v1/items/red.png").json() == {"id": "red.png", "path": "red.png", "side": "images",
                                                      "image_url": "/v1/items/red.png/image"}
    assert client.get("/v1/items/red.png%230").json() == {"id": "red.png#0", "image_id": "red.png",
                                                          "text": "a red square", "side": "texts",
                                                          "image_url": "/v1/items/red.png/image"}
    assert client.get("/v1/items/dir/with space.png").json()["id"] == "dir/with space.png"
    image = client.get("/v1/items/blue.png/image")
    assert image.status_code == 200 and image.content == (collection / "blue.png").read_bytes()
    assert image.headers["content-type"] == "image/png"
    caption_image = client.get("/v1/items/red.png%230/image")
    assert caption_image.status_code == 200 and caption_image.content == (collection / "red.png").read_bytes()


def test_the_collection_root_setting_wins_over_the_index(app: FastAPI, settings: ServiceSettings,
                                                         engine: FakeEngine, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "red.png").write_bytes(b"another red")
    moved = create_app(settings.model_copy(update={"collection_root": elsewhere}), engine_loader=_unavailable)
    moved.dependency_overrides[get_engine] = lambda: cast(SearchEngine, engine)
    with TestClient(moved) as client:
        assert client.get("/v1/items/red.png/image").content == b"another red"
        _error(client.get("/v1/items/blue.png/image"), 404, "image_not_found")


def test_meta_endpoints(client: TestClient, app: FastAPI, engine: FakeEngine, settings: ServiceSettings) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    summary = client.get("/v1/indexes").json()
    assert summary["index"] == settings.index_dir.name
    assert str(engine.root) not in json.dumps(summary) and "ckpt" not in json.dumps(summary)  # no server paths
    assert summary["default_weights"] == {"w_dense": 0.1, "w_sparse": 0.2}
    assert summary["sides"]["images"] == {"count": 5, "dense_dim": 4, "faiss_factory": "Flat", "mean_terms": 3.0,
                                          "bytes": {"dense_store": 1}}
    assert summary["checkpoint"]["method"] == "test" and summary["collection"]["name"] == "fake"
    slot = state_of(app).registry.resolve(None)
    slot.live, slot.not_ready = cast(ServedCollection, ReadOnlyLive(engine)), None
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "sides": {"images": 5, "texts": 2}}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/search" in page.text and "/v1/collections" in page.text
    schema = client.get("/openapi.json").json()
    collection_routes = {"/v1/search", "/v1/facets/{field}", "/v1/items/{item_id}/image", "/v1/items/{item_id}",
                         "/v1/items", "/v1/compact"}
    assert set(schema["paths"]) == {
        *collection_routes, *(path.replace("/v1", "/v1/collections/{collection}", 1) for path in collection_routes),
        "/v1/indexes", "/healthz", "/readyz", "/metrics", "/v1/collection", "/v1/collections",
        "/v1/collections/{collection}", "/v1/aliases", "/v1/aliases/{alias}", "/v1/collections/{collection}/snapshots",
        "/v1/collections/{collection}/snapshots/{snapshot}"}
    assert set(schema["paths"]["/v1/search"]["post"]["requestBody"]["content"]) == {
        "application/json", "multipart/form-data"}
    # the body's own definitions (the recursive filter) are shared components, and every reference resolves
    assert {"Filter", "FieldCondition", "HasId", "MatchSpec", "RangeSpec"} <= set(schema["components"]["schemas"])
    references = re.findall(r'"\$ref": "([^"]+)"', json.dumps(schema))
    assert references and all(r.removeprefix("#/components/schemas/") in schema["components"]["schemas"]
                              for r in references)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert client.get("/redoc").status_code == 200
    assert len(client.get("/docs-assets/swagger-ui-bundle.js").content) > 100_000


def test_metrics_count_requests_by_route_and_searches(client: TestClient) -> None:
    client.post("/v1/search", json={"text": "red", "mode": "sparse", "side": "texts"})
    client.post("/v1/search", json={"text": ""})
    client.get("/v1/items/nothing")
    client.get("/no/such/route")
    reply = client.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    text = reply.text
    assert 'duet_http_requests_total{method="POST",route="/v1/search",status="200"} 1.0' in text
    assert 'duet_http_requests_total{method="POST",route="/v1/search",status="422"} 1.0' in text
    assert 'duet_http_requests_total{method="GET",route="/v1/items/{item_id:path}",status="404"} 1.0' in text
    assert 'duet_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'duet_search_seconds_count{mode="sparse",side="texts"} 1.0' in text
    assert "process_cpu_seconds_total" in text


def test_request_ids_are_echoed_or_made(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    for bad in ("x" * 65, ""):
        made = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert made != bad and len(made) == 32
    body = _error(client.post("/v1/search", json={}, headers={"X-Request-ID": "req-7"}), 422, "invalid_request")
    assert body["error"]["request_id"] == "req-7"


# ----- the validation matrix: each bad input, its status and code -----

@pytest.mark.parametrize(("payload", "status", "code"), [
    ({"text": ""}, 422, "empty_text"),
    ({"text": " \t\n "}, 422, "empty_text"),
    ({"text": "x" * 51}, 422, "text_too_long"),
    ({"text": 5}, 422, "invalid_request"),
    ({"text": None}, 422, "invalid_request"),
    ({}, 422, "invalid_request"),
    ({"text": "ok", "image_base64": "AAAA"}, 422, "invalid_request"),
    ({"text": "ok", "mode": "fuzzy"}, 422, "invalid_request"),
    ({"text": "ok", "side": "videos"}, 422, "invalid_request"),
    ({"text": "ok", "fusion": "max"}, 422, "invalid_request"),
    ({"text": "ok", "top_k": 0}, 422, "invalid_request"),
    ({"text": "ok", "top_k": -3}, 422, "invalid_request"),
    ({"text": "ok", "top_k": 21}, 422, "invalid_request"),
    ({"text": "ok", "top_k": "many"}, 422, "invalid_request"),
    ({"text": "ok", "top_k": 2.5}, 422, "invalid_request"),
    ({"text": "ok", "offset": -1}, 422, "invalid_request"),
    ({"text": "ok", "offset": 31}, 422, "invalid_request"),
    ({"text": "ok", "candidate_k": 0}, 422, "invalid_request"),
    ({"text": "ok", "candidate_k": 201}, 422, "invalid_request"),
    ({"text": "ok", "w_dense": -0.1}, 422, "invalid_request"),
    ({"text": "ok", "w_dense": 1000.5}, 422, "invalid_request"),
    ({"text": "ok", "w_sparse": -1}, 422, "invalid_request"),
    ({"text": "ok", "w_sparse": "heavy"}, 422, "invalid_request"),
    ({"text": "ok", "sparse_query_terms": -1}, 422, "invalid_request"),
    ({"text": "ok", "sparse_query_terms": 100_001}, 422, "invalid_request"),
    ({"text": "ok", "explain": "perhaps"}, 422, "invalid_request"),
    ({"text": "ok", "unknown": 1}, 422, "invalid_request"),
    ({"text": "ok", "image": "AAAA"}, 422, "invalid_request"),
    ({"image_base64": "not base64!"}, 422, "invalid_base64"),
    ({"image_base64": "AAA"}, 422, "invalid_base64"),
    ({"image_base64": ""}, 422, "empty_image"),
    ({"image_base64": base64.b64encode(b"plain text, not an image").decode()}, 415, "not_an_image"),
    ({"image_base64": base64.b64encode(_tiff()).decode()}, 415, "unsupported_image_format"),
    ({"image_base64": base64.b64encode(_png(101, 100)).decode()}, 413, "image_too_large"),
    ({"image_base64": base64.b64encode(_noise_png(90, 90)[:4000]).decode()}, 422, "corrupt_image"),
    ({"text": "!!! the", "mode": "sparse"}, 422, "empty_sparse_query"),
    ([1, 2], 422, "invalid_request"),
    ("text", 422, "invalid_request"),
    (None, 422, "invalid_request"),
])
def test_bad_json_searches(client: TestClient, engine: FakeEngine, payload: object, status: int, code: str) -> None:
    _error(client.post("/v1/search", content=json.dumps(payload), headers={"Content-Type": "application/json"}),
           status, code)
    assert all(p.mode == "sparse" for p in engine.searches)  # nothing but the empty sparse query reached a search


def test_validation_messages_name_the_field(client: TestClient) -> None:
    message = _error(client.post("/v1/search", json={"text": "ok", "top_k": 0}), 422, "invalid_request")
    assert message["error"]["message"].startswith("top_k: ")
    limit = _error(client.post("/v1/search", json={"text": "ok", "offset": 31}), 422, "invalid_request")
    assert limit["error"]["message"] == "offset must be at most 30 (got 31)"
    extra = _error(client.post("/v1/search", json={"text": "ok", "unknown": 1}), 422, "invalid_request")
    assert "unknown" in extra["error"]["message"]


def test_a_side_the_index_lacks_is_refused(settings: ServiceSettings, collection: Path) -> None:
    images_only = FakeEngine(collection)
    images_only.stores.pop("texts")
    app = create_app(settings, engine_loader=_unavailable)
    app.dependency_overrides[get_engine] = lambda: cast(SearchEngine, images_only)
    with TestClient(app) as client:
        body = _error(client.post("/v1/search", json={"text": "ok", "side": "texts"}), 422, "invalid_request")
        assert "no 'texts' side" in body["error"]["message"]


@pytest.mark.parametrize(("fields", "files", "status", "code"), [
    ({}, {"image": ("t.png", _noise_png(90, 90)[:4000], "image/png")}, 422, "corrupt_image"),
    ({}, {"image": ("x.txt", b"hello", "text/plain")}, 415, "not_an_image"),
    ({}, {"image": ("big.png", _png(100, 101), "image/png")}, 413, "image_too_large"),
    ({}, {"image": ("e.png", b"", "image/png")}, 422, "empty_image"),
    ({}, {"image": ("t.tif", _tiff(), "image/tiff")}, 415, "unsupported_image_format"),
    ({}, {"file": ("e.png", _png(), "image/png")}, 422, "invalid_request"),
    ({"text": "red"}, {"image": ("q.png", _png(), "image/png")}, 422, "invalid_request"),
    ({"top_k": "0"}, {"image": ("q.png", _png(), "image/png")}, 422, "invalid_request"),
    ({"top_k": "lots"}, {"image": ("q.png", _png(), "image/png")}, 422, "invalid_request"),
    ({"mode": "fuzzy"}, {"image": ("q.png", _png(), "image/png")}, 422, "invalid_request"),
    ({"extra": "1"}, {"image": ("q.png", _png(), "image/png")}, 422, "invalid_request"),
    ({"text": ""}, {}, 422, "empty_text"),
    ({"side": "images"}, {}, 422, "invalid_request"),
])
def test_bad_multipart_searches(client: TestClient, fields: dict[str, str], files: dict[str, Any], status: int,
                                code: str) -> None:
    # Fields as parts without a file name, so that a request without a file is still multipart.
    parts = {**{name: (None, value) for name, value in fields.items()}, **files}
    _error(client.post("/v1/search", files=parts), status, code)


def test_multipart_text_fields_alone_are_a_text_search(client: TestClient) -> None:
    reply = client.post("/v1/search", files={"text": (None, "red dot"), "top_k": (None, "2")})
    assert reply.status_code == 200, reply.text
    assert reply.json()["query"]["text"] == "red dot" and len(reply.json()["hits"]) == 2


def test_bad_bodies_and_content_types(client: TestClient) -> None:
    _error(client.post("/v1/search", content=b"\xff\xfe{", headers={"Content-Type": "application/json"}),
           400, "invalid_encoding")
    _error(client.post("/v1/search", content=b"{broken", headers={"Content-Type": "application/json"}),
           400, "malformed_json")
    _error(client.post("/v1/search", content=b"", headers={"Content-Type": "application/json"}),
           400, "malformed_json")
    _error(client.post("/v1/search", content=b"text=hello", headers={"Content-Type": "text/plain"}),
           415, "unsupported_media_type")
    _error(client.post("/v1/search", content=b"text=hello",
                       headers={"Content-Type": "application/x-www-form-urlencoded"}), 415, "unsupported_media_type")
    none = _error(client.post("/v1/search", content=b"{}", headers={"Content-Type": ""}), 415,
                  "unsupported_media_type")
    assert "(none)" in none["error"]["message"]
    # The media type's parameters and case do not matter.
    assert client.post("/v1/search", content=b'{"text": "red"}',
                       headers={"Content-Type": "Application/JSON; charset=utf-8"}).status_code == 200
    two_files = {"image": ("a.png", _png(), "image/png"), "other": ("b.png", _png(), "image/png")}
    _error(client.post("/v1/search", files=two_files), 400, "malformed_multipart")


def test_oversized_bodies_get_413(client: TestClient) -> None:
    big = b'{"text": "' + b"x" * BODY_LIMIT + b'"}'
    _error(client.post("/v1/search", content=big, headers={"Content-Type": "application/json"}),
           413, "body_too_large")
    upload = {"image": ("big.png", b"\x89PNG" + bytes(BODY_LIMIT), "image/png")}
    _error(client.post("/v1/search", files=upload), 413, "body_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"text": "'
        for _ in range(BODY_LIMIT // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    _error(client.post("/v1/search", content=chunks(), headers={"Content-Type": "application/json"}),
           413, "body_too_large")
    # Just under the limit goes through (and fails later for its own reason).
    _error(client.post("/v1/search", json={"text": "x" * (BODY_LIMIT - 100)}), 422, "text_too_long")


@pytest.mark.parametrize("length", ["abc", "-5"])
def test_a_bad_content_length_gets_400(app: FastAPI, length: str) -> None:
    import asyncio

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/search", "raw_path": b"/v1/search", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", length.encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}
    asyncio.run(app(scope, receive, send))  # a raw ASGI call: HTTP clients refuse to send such a header
    assert sent[0]["status"] == 400
    assert b'"bad_content_length"' in sent[1]["body"]


def test_unknown_items_and_unavailable_images(client: TestClient) -> None:
    _error(client.get("/v1/items/no-such-item"), 404, "item_not_found")
    _error(client.get("/v1/items/no-such-item/image"), 404, "item_not_found")
    _error(client.get("/v1/items/..%2F..%2Fetc%2Fpasswd/image"), 404, "item_not_found")
    _error(client.get("/v1/items/gone.png/image"), 404, "image_not_found")
    _error(client.get("/v1/items/escape.png/image"), 404, "image_not_found")  # outside the collection root


def test_unknown_routes_and_methods(client: TestClient) -> None:
    _error(client.get("/v2/search"), 404, "not_found")
    _error(client.get("/v1/search"), 405, "method_not_allowed")
    _error(client.patch("/v1/items/red.png"), 405, "method_not_allowed")  # PUT and DELETE: the write API


def test_an_engine_failure_is_a_json_500(client: TestClient, engine: FakeEngine) -> None:
    engine.fail_with = RuntimeError("disk on fire")
    reply = client.post("/v1/search", json={"text": "red"}, headers={"X-Request-ID": "req-500"})
    # Answered by the outermost error handler, past the middleware that sets the X-Request-ID header.
    assert reply.status_code == 500 and reply.headers["content-type"] == "application/json"
    assert reply.json() == {"error": {"code": "internal_error", "message": "internal error; see the server log",
                                      "request_id": "req-500"}}  # the detail goes to the log, not the client


# ----- the engine's lifecycle: loaded at startup by the loader, its absence reported -----

def test_without_an_engine_search_and_items_get_503_and_readiness_says_why(settings: ServiceSettings) -> None:
    app = create_app(settings, engine_loader=_unavailable)
    with TestClient(app) as client:  # the lifespan runs the loader, which fails
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "reason": "RuntimeError: no engine in these tests"}
        for reply in (client.post("/v1/search", json={"text": "red"}), client.post("/v1/search", json={}),
                      client.get("/v1/items/red.png"), client.get("/v1/items/red.png/image"),
                      client.get("/v1/indexes")):
            body = _error(reply, 503, "index_unavailable")
            assert "RuntimeError: no engine in these tests" in body["error"]["message"]
        assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200


def test_the_loaded_engine_serves_and_is_closed_on_shutdown(settings: ServiceSettings, engine: FakeEngine) -> None:
    loaded: list[ServiceSettings] = []

    def loader(given: ServiceSettings, encoder: object) -> ServedCollection:
        loaded.append(given)
        return cast(ServedCollection, ReadOnlyLive(engine))

    with TestClient(create_app(settings, engine_loader=loader)) as client:
        assert client.get("/readyz").json() == {"ready": True, "sides": {"images": 5, "texts": 2}}
        assert client.post("/v1/search", json={"text": "red"}).status_code == 200
        assert not engine.closed
    assert loaded == [settings] and engine.closed


def test_engine_work_runs_on_one_worker_thread(client: TestClient, engine: FakeEngine) -> None:
    import threading

    threads: set[str] = set()
    search = engine.search

    def recording(query: Query, params: SearchParams) -> SearchResult:
        threads.add(threading.current_thread().name)
        return search(query, params)

    engine.search = recording  # type: ignore[method-assign]
    for _ in range(3):
        assert client.post("/v1/search", json={"text": "red"}).status_code == 200
    assert len(threads) == 1 and next(iter(threads)).startswith("duet-engine")
