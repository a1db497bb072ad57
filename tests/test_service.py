"""The HTTP API through a real uvicorn server on 127.0.0.1: search, items, meta endpoints and every input limit."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from PIL import Image

from tests.server import Server, serving

pytestmark = pytest.mark.java  # every test serves a Lucene index


def _png(width: int, height: int, color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "blue").save(buffer, format="JPEG")
    return buffer.getvalue()


def _error(reply, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert reply.status == status, reply.body[:500]
    body = reply.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body


def test_health_readiness_and_index_summary(tiny_server: Server) -> None:
    assert tiny_server.request("GET", "/healthz").json() == {"status": "ok"}
    ready = tiny_server.request("GET", "/readyz")
    assert ready.status == 200 and ready.json() == {"ready": True, "sides": {"images": 32, "texts": 160}}
    summary = tiny_server.request("GET", "/v1/indexes").json()
    assert summary["sides"]["images"]["count"] == 32
    assert summary["default_weights"] == {"w_dense": 0.1, "w_sparse": 0.2}
    assert "/v1/search" in tiny_server.request("GET", "/openapi.json").json()["paths"]
    docs = tiny_server.request("GET", "/docs")
    assert docs.status == 200 and b"/docs-assets/swagger-ui-bundle.js" in docs.body
    assert tiny_server.request("GET", "/redoc").status == 200
    bundle = tiny_server.request("GET", "/docs-assets/swagger-ui-bundle.js")
    assert bundle.status == 200 and len(bundle.body) > 100_000  # the asset itself, served locally


def test_text_search_returns_scored_hits_with_explanations(tiny_server: Server) -> None:
    reply = tiny_server.post_json("/v1/search", {"text": "a red square", "top_k": 5, "explain": True})
    assert reply.status == 200, reply.body
    body = reply.json()
    assert reply.headers["x-request-id"] == body["request_id"]
    assert body["query"]["kind"] == "text" and body["query"]["terms"]
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4, 5]
    for hit in body["hits"]:
        assert set(hit["scores"]) == {"dense", "sparse", "fused"}
        assert hit["metadata"]["image_url"].startswith("/v1/items/")
        assert sum(m["contribution"] for m in hit["explanation"]["matched_terms"]) == pytest.approx(
            hit["scores"]["sparse"], rel=1e-4)
    # a small collection: every row scored exactly (indexer/planner.py); through the indexes when asked
    assert {"encode", "plan_ms", "exact_ms", "total"} <= set(body["timings_ms"]) and body["plan"] == "exact"
    indexed = tiny_server.post_json("/v1/search", {"text": "a red square", "top_k": 5, "plan": "index"}).json()
    assert {"dense_ms", "sparse_ms", "rescore_ms"} <= set(indexed["timings_ms"]) and indexed["plan"] == "index"
    assert [h["id"] for h in indexed["hits"]] == [h["id"] for h in body["hits"]]


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_each_mode_and_both_sides(tiny_server: Server, mode: str) -> None:
    for side in ("images", "texts"):
        body = tiny_server.post_json("/v1/search", {"text": "green dot", "mode": mode, "side": side, "top_k": 3}).json()
        assert body["mode"] == mode and len(body["hits"]) == 3
        assert all(("#" in h["id"]) == (side == "texts") for h in body["hits"])


def test_image_query_as_multipart_and_as_base64(tiny_server: Server) -> None:
    multipart = tiny_server.post_multipart("/v1/search", {"side": "texts", "top_k": "4", "mode": "hybrid"},
                                      {"image": ("q.jpg", _jpeg(), "image/jpeg")})
    assert multipart.status == 200, multipart.body
    assert multipart.json()["query"]["kind"] == "image" and len(multipart.json()["hits"]) == 4
    encoded = base64.b64encode(_jpeg()).decode()
    as_json = tiny_server.post_json("/v1/search", {"image_base64": encoded, "side": "texts", "top_k": 4}).json()
    assert [h["id"] for h in as_json["hits"]] == [h["id"] for h in multipart.json()["hits"]]


def test_items_and_their_images(tiny_server: Server, synthetic_dataset: Path) -> None:
    hit = tiny_server.post_json("/v1/search", {"text": "a yellow stripe", "top_k": 1}).json()["hits"][0]
    item = tiny_server.request("GET", f"/v1/items/{hit['id']}").json()
    assert item["id"] == hit["id"] and item["side"] == "images"
    image = tiny_server.request("GET", hit["metadata"]["image_url"])
    assert image.status == 200 and image.body == (synthetic_dataset / "images" / hit["id"]).read_bytes()
    caption = tiny_server.request("GET", f"/v1/items/{hit['id']}%230").json()
    assert caption["side"] == "texts" and caption["image_id"] == hit["id"]
    assert tiny_server.request("GET", f"/v1/items/{hit['id']}%230/image").status == 200
    _error(tiny_server.request("GET", "/v1/items/no-such-item"), 404, "item_not_found")
    _error(tiny_server.request("GET", "/v1/items/..%2F..%2Fetc%2Fpasswd/image"), 404, "item_not_found")


def test_metrics_count_requests_and_searches(tiny_server: Server) -> None:
    tiny_server.post_json("/v1/search", {"text": "white square", "mode": "sparse"})
    text = tiny_server.request("GET", "/metrics").body.decode()
    assert 'duet_http_requests_total{method="POST",route="/v1/search",status="200"}' in text
    assert 'duet_search_seconds_count{mode="sparse",side="images"}' in text
    assert "process_cpu_seconds_total" in text and "python_info" in text  # the client library's own metrics


@pytest.mark.parametrize(("payload", "status", "code"), [
    ({"text": ""}, 422, "empty_text"),
    ({"text": "   "}, 422, "empty_text"),
    ({"text": "x" * 1001}, 422, "text_too_long"),
    ({"text": "ok", "top_k": 1001}, 422, "invalid_request"),
    ({"text": "ok", "top_k": 0}, 422, "invalid_request"),
    ({"text": "ok", "mode": "fuzzy"}, 422, "invalid_request"),
    ({"text": "ok", "w_sparse": -1}, 422, "invalid_request"),
    ({"text": "ok", "unknown": 1}, 422, "invalid_request"),
    ({}, 422, "invalid_request"),
    ({"text": "ok", "image_base64": "AAAA"}, 422, "invalid_request"),
    ({"image_base64": "not base64!"}, 422, "invalid_base64"),
    ({"image_base64": base64.b64encode(b"plain text, not an image").decode()}, 415, "not_an_image"),
    ([1, 2], 422, "invalid_request"),
])
def test_bad_json_requests_get_clear_4xx(tiny_server: Server, payload: object, status: int, code: str) -> None:
    _error(tiny_server.post_json("/v1/search", payload), status, code)


def test_bad_bodies_and_content_types(tiny_server: Server) -> None:
    _error(tiny_server.request("POST", "/v1/search", b"\xff\xfe{not utf8", {"Content-Type": "application/json"}),
           400, "invalid_encoding")
    _error(tiny_server.request("POST", "/v1/search", b"{broken", {"Content-Type": "application/json"}),
           400, "malformed_json")
    _error(tiny_server.request("POST", "/v1/search", b"text=hello", {"Content-Type": "text/plain"}),
           415, "unsupported_media_type")


def test_oversized_bodies_get_413(tiny_server: Server) -> None:
    # Announced by Content-Length: refused before the body is read (a raw socket sends only the headers).
    with socket.create_connection(("127.0.0.1", tiny_server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10485761\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "body_too_large"
    # Streamed without a length (chunked): counted as it arrives.
    connection = http.client.HTTPConnection("127.0.0.1", tiny_server.port, timeout=60)
    chunks = (b"x" * (1024 * 1024) for _ in range(11))
    try:
        connection.request("POST", "/v1/search", body=chunks, encode_chunked=True,
                           headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        reply = connection.getresponse()
        assert reply.status == 413 and json.loads(reply.read())["error"]["code"] == "body_too_large"
    except (BrokenPipeError, ConnectionResetError):
        pytest.fail("the server closed the connection without a 413 response")
    finally:
        connection.close()


def test_bad_images(tiny_server: Server) -> None:
    truncated = _jpeg(200, 150)[:300]
    _error(tiny_server.post_multipart("/v1/search", {}, {"image": ("t.jpg", truncated, "image/jpeg")}),
           422, "corrupt_image")
    _error(tiny_server.post_multipart("/v1/search", {}, {"image": ("x.txt", b"hello", "text/plain")}),
           415, "not_an_image")
    # 8000 x 6000 = 48 megapixels, a few hundred KB as a flat PNG: refused from its header.
    _error(tiny_server.post_multipart("/v1/search", {}, {"image": ("big.png", _png(8000, 6000), "image/png")}),
           413, "image_too_large")
    _error(tiny_server.post_multipart("/v1/search", {}, {"image": ("e.png", b"", "image/png")}), 422, "empty_image")
    _error(tiny_server.post_multipart("/v1/search", {}, {"file": ("e.png", _png(8, 8), "image/png")}),
           422, "invalid_request")
    ok = tiny_server.post_multipart("/v1/search", {"top_k": "2"}, {"image": ("ok.png", _png(30, 20), "image/png")})
    assert ok.status == 200


def test_missing_and_mismatched_index_fail_readiness_and_search(tiny_index: Path, tiny_backbone,  # type: ignore[no-untyped-def]
                                                                synthetic_dataset: Path, tmp_path: Path) -> None:
    from tests.conftest import save_tiny_checkpoint

    other = save_tiny_checkpoint(tiny_backbone, synthetic_dataset, tmp_path / "other", seed=3)
    copy = tmp_path / "index"  # its own copy: the session's index is held (written) by the shared test server
    shutil.copytree(tiny_index, copy, symlinks=True, ignore=shutil.ignore_patterns("live"))
    for args, reason in (([str(tmp_path / "absent")], "index directory not found"),
                         ([str(copy), "--checkpoint", str(other)], "checkpoint content hash")):
        server = Server(["--index", *args], tmp_path / "server.log")
        try:
            server.wait_started()
            ready = server.request("GET", "/readyz")
            assert ready.status == 503 and reason in ready.json()["reason"]
            _error(server.post_json("/v1/search", {"text": "red"}), 503, "index_unavailable")
            assert server.request("GET", "/healthz").status == 200
        finally:
            server.stop()


def test_a_moved_index_serves_the_same_hits_and_its_images(tiny_server: Server, tiny_index: Path,
                                                           synthetic_dataset: Path, tmp_path: Path) -> None:
    """The index and its image folder moved together (a plain copy, following links): the index's own checkpoint
    is loaded and the images are served from where they now are."""
    common = Path(os.path.commonpath([tiny_index, synthetic_dataset]))
    moved = tmp_path / "moved"
    shutil.copytree(tiny_index, moved / tiny_index.relative_to(common))
    shutil.copytree(synthetic_dataset / "images", moved / synthetic_dataset.relative_to(common) / "images")
    query = {"text": "a red square on blue", "mode": "hybrid", "top_k": 5}
    original = tiny_server.post_json("/v1/search", query).json()["hits"]
    moved_image = moved / synthetic_dataset.relative_to(common) / "images" / original[0]["id"]
    moved_image.write_bytes(_png(8, 8))  # tells the moved folder's file from the original
    server = Server(["--index", str(moved / tiny_index.relative_to(common))], tmp_path / "server.log")
    try:
        server.wait_started()
        assert server.request("GET", "/readyz").status == 200
        reply = server.post_json("/v1/search", query)
        image = server.request("GET", original[0]["metadata"]["image_url"])
    finally:
        server.stop()
    assert reply.status == 200, reply.body
    assert [(h["id"], h["scores"]) for h in reply.json()["hits"]] == [(h["id"], h["scores"]) for h in original]
    assert len(original) == 5
    assert image.status == 200 and image.body == moved_image.read_bytes()


@pytest.fixture(scope="module")
def grounded_server(tiny_grounded_index: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with serving(tiny_grounded_index, tmp_path_factory.mktemp("logs") / "grounded.log") as running:
        yield running


def test_grounded_model_serves_word_terms_and_explains_empty_sparse_queries(grounded_server: Server) -> None:
    reply = grounded_server.post_json("/v1/search", {"text": "a red square", "explain": True, "top_k": 3})
    assert reply.status == 200, reply.body
    body = reply.json()
    assert {t["term"] for t in body["query"]["terms"]} == {"red", "square"}  # whole words, as the query wrote them
    assert body["warnings"] == [] and body["query"]["unmatched_terms"] == []
    hybrid = grounded_server.post_json("/v1/search", {"text": "the of a", "mode": "hybrid", "top_k": 3})
    assert hybrid.status == 200, hybrid.body
    assert hybrid.json()["query"]["terms"] == [] and "sparse leg is empty" in hybrid.json()["warnings"][0]
    assert len(hybrid.json()["hits"]) == 3
    _error(grounded_server.post_json("/v1/search", {"text": "!!!", "mode": "sparse"}), 422, "empty_sparse_query")


def test_words_outside_the_vocabulary_are_listed_counted_and_named(grounded_server: Server) -> None:
    def unmatched_count() -> float:
        text = grounded_server.request("GET", "/metrics").body.decode()
        lines = [line for line in text.splitlines() if line.startswith("duet_query_unmatched_words_total ")]
        return float(lines[0].split()[1])

    before = unmatched_count()
    reply = grounded_server.post_json("/v1/search", {"text": "a red Zebra by the Celtic harp", "top_k": 3})
    assert reply.status == 200, reply.body
    query = reply.json()["query"]
    assert [t["term"] for t in query["terms"]] == ["red"]
    assert query["unmatched_terms"] == ["zebra", "celtic", "harp"]
    assert unmatched_count() == before + 3
    # every word unknown: as a text with no content word, the words named
    hybrid = grounded_server.post_json("/v1/search", {"text": "zebra giraffe", "mode": "hybrid", "top_k": 3})
    assert hybrid.status == 200 and len(hybrid.json()["hits"]) == 3
    assert hybrid.json()["warnings"][0].endswith("(no term for: zebra, giraffe)")
    sparse = grounded_server.post_json("/v1/search", {"text": "zebra giraffe", "mode": "sparse"})
    _error(sparse, 422, "empty_sparse_query")
    assert "no term for: zebra, giraffe" in sparse.json()["error"]["message"]
    assert unmatched_count() == before + 5  # the refused search is not counted: it never answered


def test_settings_come_from_flags_over_the_environment_over_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.cli import build_parser, settings_from
    from service.settings import ServiceSettings

    for name in ("DUET_INDEX_DIR", "DUET_PORT", "DUET_MAX_TOP_K"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DUET_DATA", "/elsewhere")  # another component's setting: not the service's business
    assert ServiceSettings().index_dir == Path("indexes/flickr8k") and ServiceSettings().max_top_k == 1000
    monkeypatch.setenv("DUET_INDEX_DIR", "indexes/from-env")
    monkeypatch.setenv("DUET_MAX_TOP_K", "50")
    monkeypatch.setenv("DUET_PORT", "9001")
    from_env = settings_from(build_parser().parse_args([]))
    assert (from_env.index_dir, from_env.port, from_env.max_top_k) == (Path("indexes/from-env"), 9001, 50)
    flagged = settings_from(build_parser().parse_args(["--index", "indexes/from-flag", "--port", "9002"]))
    assert (flagged.index_dir, flagged.port, flagged.max_top_k) == (Path("indexes/from-flag"), 9002, 50)
    monkeypatch.setenv("DUET_MAX_TOP_K", "many")
    with pytest.raises(ValueError, match="max_top_k"):
        ServiceSettings()


def test_the_device_setting_names_a_device_this_machine_has() -> None:
    import torch

    from service.settings import ServiceSettings

    assert ServiceSettings(device="cpu").device == "cpu"
    with pytest.raises(ValueError, match="device"):
        ServiceSettings(device="tpu")
    with pytest.raises(ValueError, match="no such CUDA device"):
        ServiceSettings(device=f"cuda:{torch.cuda.device_count() + 1}")
    if not torch.cuda.is_available():  # CI's machines: a CUDA device is refused at startup, not on the first search
        with pytest.raises(ValueError, match="no such CUDA device"):
            ServiceSettings(device="cuda")


def test_the_ray_engine_refuses_a_device_it_would_not_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from service.cli import main
    from service.settings import ServiceSettings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with one GPU, as far as settings see
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert ServiceSettings(device="cuda").device == "cuda"  # the embedded engine uses it
    with pytest.raises(ValueError, match="applies to the embedded engine"):
        ServiceSettings(engine="ray", device="cuda")
    assert main(["--engine", "ray", "--device", "cuda"]) == 2  # a clear refusal before any cluster is asked
