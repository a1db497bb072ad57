"""Filtered search and facets through a real uvicorn server on 127.0.0.1: the filter in every search request, the
planner's choice in the answer and /metrics, facet counts, and a clear 422 naming the field for every bad filter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from indexer.store import read_items, read_manifest
from tests.server import Server

pytestmark = pytest.mark.java


def _items(index: Path, side: str) -> list[dict[str, Any]]:
    return read_items((index / "current").resolve() / side)


def _refused(reply: Any, field: str) -> str:  # the message names the field
    assert reply.status == 422, reply.body[:400]
    error = reply.json()["error"]
    assert error["code"] == "invalid_filter" and field in error["message"], error
    return str(error["message"])


def test_a_filtered_search_returns_only_allowed_items(tiny_server: Server, tiny_index: Path) -> None:
    images = _items(tiny_index, "images")
    assert {"split", "file_bytes", "width", "height", "orientation"} <= set(images[0])
    summary = tiny_server.request("GET", "/v1/indexes").json()
    assert summary["payload"]["split"] == "keyword" and summary["payload"]["file_bytes"] == "integer"
    median = sorted(i["file_bytes"] for i in images)[len(images) // 2]
    wanted = {"must": [{"key": "split", "match": {"value": "val"}}],
              "must_not": [{"key": "file_bytes", "range": {"gte": median}}]}
    allowed = {i["id"] for i in images if i["split"] == "val" and i["file_bytes"] < median}
    assert 0 < len(allowed) < len(images)
    for mode in ("dense", "sparse", "hybrid"):
        reply = tiny_server.post_json("/v1/search", {"text": "a red square", "mode": mode, "top_k": 50,
                                                     "filter": wanted})
        assert reply.status == 200, reply.body
        body = reply.json()
        assert body["hits"] and {h["id"] for h in body["hits"]} <= allowed
        assert body["rows"] == len(allowed) and body["plan"] == "exact" and body["plans"] == {"exact": 1}
        assert {"plan_ms", "exact_ms"} <= set(body["timings_ms"])
        if mode == "dense":
            assert len(body["hits"]) == min(50, len(allowed))
    # captions carry their image's payload: image->text under a filter
    texts = _items(tiny_index, "texts")
    reply = tiny_server.post_json("/v1/search", {"text": "green dot", "side": "texts", "top_k": 20, "plan": "index",
                                                 "filter": {"must": [{"key": "split", "match": {"any": ["test"]}}]}})
    assert reply.status == 200, reply.body
    test_texts = {t["id"] for t in texts if t["split"] == "test"}
    assert reply.json()["plan"] == "index" and {h["id"] for h in reply.json()["hits"]} <= test_texts
    metrics = tiny_server.request("GET", "/metrics").body.decode()
    assert 'duet_search_plans_total{filtered="true",plan="exact"}' in metrics
    assert 'duet_search_plans_total{filtered="true",plan="index"}' in metrics


def test_a_filter_rides_a_multipart_image_search(tiny_server: Server, tiny_index: Path) -> None:
    first = _items(tiny_index, "images")[0]
    root = tiny_index / read_manifest(tiny_index).collection["root"]
    wanted = {"must": [{"has_id": [first["id"]]}]}
    reply = tiny_server.post_multipart("/v1/search", {"top_k": "5", "filter": json.dumps(wanted)},
                                       {"image": ("q.jpg", (root / first["path"]).read_bytes(), "image/jpeg")})
    assert reply.status == 200, reply.body
    assert [h["id"] for h in reply.json()["hits"]] == [first["id"]]


@pytest.mark.parametrize(("filter_", "field"), [
    ({"must": [{"key": "colour", "match": {"value": "red"}}]}, "colour"),
    ({"must": [{"key": "split", "match": {"value": 3}}]}, "split"),
    ({"must": [{"key": "width", "match": {"value": "wide"}}]}, "width"),
    ({"should": [{"key": "split", "range": {"gt": 2}}]}, "split"),
    ({"must": [{"key": "orientation", "match": {"any": []}}]}, "orientation"),
    ({"must_not": [{"must": [{"key": "height", "range": {"lt": "tall"}}]}]}, "height"),
])
def test_a_bad_filter_is_a_422_naming_its_field(tiny_server: Server, filter_: dict[str, Any], field: str) -> None:
    reply = tiny_server.post_json("/v1/search", {"text": "a red square", "filter": filter_})
    _refused(reply, field)
    _refused(tiny_server.request("GET", f"/v1/facets/split?filter={quote(json.dumps(filter_))}"), field)


def test_a_malformed_filter_is_a_422(tiny_server: Server) -> None:
    for filter_ in ({"must": "split"}, {"must": [{"key": "split"}]}, {"whatever": []},
                    {"must": [{"key": "split", "match": {"value": "a", "any": ["b"]}}]}):
        reply = tiny_server.post_json("/v1/search", {"text": "a red square", "filter": filter_})
        assert reply.status == 422 and reply.json()["error"]["code"] == "invalid_request", reply.body
    reply = tiny_server.request("GET", "/v1/facets/split?filter=%7Bnot%20json")
    assert reply.status == 422 and reply.json()["error"]["code"] == "invalid_filter"


def test_facets_count_values_under_a_filter(tiny_server: Server, tiny_index: Path) -> None:
    images = _items(tiny_index, "images")
    reply = tiny_server.request("GET", "/v1/facets/split")
    assert reply.status == 200, reply.body
    body = reply.json()
    expected = {s: sum(i["split"] == s for i in images) for s in {i["split"] for i in images}}
    assert {v["value"]: v["count"] for v in body["values"]} == expected and body["more"] is False
    counts = [v["count"] for v in body["values"]]
    assert counts == sorted(counts, reverse=True)
    under = {"must": [{"key": "split", "match": {"value": "test"}}]}
    reply = tiny_server.request("GET", f"/v1/facets/orientation?side=texts&filter={quote(json.dumps(under))}")
    texts = [t for t in _items(tiny_index, "texts") if t["split"] == "test"]
    assert {v["value"]: v["count"] for v in reply.json()["values"]} == {
        o: sum(t["orientation"] == o for t in texts) for o in {t["orientation"] for t in texts}}
    limited = tiny_server.request("GET", "/v1/facets/file_bytes?limit=1").json()
    assert len(limited["values"]) == 1 and limited["more"] is True
    scoped = tiny_server.request("GET", f"/v1/collections/{tiny_index.name}/facets/split")
    assert scoped.status == 200 and scoped.json() == body
    assert tiny_server.request("GET", "/v1/collections/nothing/facets/split").status == 404
    _refused(tiny_server.request("GET", "/v1/facets/nope"), "nope")
    assert tiny_server.request("GET", "/v1/facets/split?side=sideways").status == 422
    assert tiny_server.request("GET", "/v1/facets/split?limit=0").status == 422
