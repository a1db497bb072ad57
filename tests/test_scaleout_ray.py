"""The scale-out on a real 2-node Ray cluster (loopback only, stopped by PID): a Ray Data build of a sharded
collection, served by ``python -m service --engine ray`` with 2 replicas per shard. Its rankings over HTTP equal the
embedded index's, a write is searchable, a replica killed under concurrent load fails no query, a shard with no
replica answers 503 naming it, then recovers, and an unreadable image stops a Ray build naming it or, with
--skip-corrupt, is left out with its captions, the second build resuming from what the first encoded (images
changed in between encoded again)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.index_reader import IndexReader
from indexer.ray_build import encoded_ids
from indexer.ray_cluster import LocalRayCluster
from indexer.search import SearchEngine
from indexer.sharding import read_layout
from service.ray_serving import reader_app
from tests.conftest import noise_png
from tests.ray_probe import ROOT, ask
from tests.server import Server, serving

pytestmark = [pytest.mark.ray, pytest.mark.java]
KEY = "ray-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXTS = ["a red square on blue", "green dot", "the stripe is yellow"]
# each leg deeper than a side has rows: no leg cuts inside a group of tied scores (see tests/test_sharded.py)
VAL = {"must": [{"key": "split", "match": {"value": "val"}}]}
MODES: list[dict[str, Any]] = [{"mode": "hybrid", "candidate_k": 1000}, {"mode": "dense"}, {"mode": "sparse"},
                               {"mode": "hybrid", "fusion": "rrf", "candidate_k": 1000},
                               # filtered, by each plan: each shard plans on its own replica
                               {"mode": "hybrid", "candidate_k": 1000, "filter": VAL},
                               {"mode": "dense", "plan": "index", "filter": VAL}]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    temp_dir = Path(tempfile.mkdtemp(prefix="duet-ray-", dir="/tmp"))  # short: Ray's socket paths live under it
    running = LocalRayCluster(temp_dir=temp_dir, nodes=2, cpus_per_node=1).start()
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def collection(cluster: LocalRayCluster, tiny_checkpoint: Path, synthetic_dataset: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built by ``python -m indexer build --engine ray``, a Ray driver of its own (see tests/ray_probe.py)."""
    out = tmp_path_factory.mktemp("ray-collection") / "collection"
    subprocess.run([sys.executable, "-m", "indexer", "build", "--engine", "ray", "--address", cluster.address,
                    "--shards", "2", "--workers", "2", "--actor-batch-size", "16", "--checkpoint",
                    str(tiny_checkpoint), "--data", str(synthetic_dataset), "--splits", "test,val", "--out",
                    str(out), "--cache-root", str(out.parent / "cache")], check=True, cwd=ROOT, timeout=600,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return out


@pytest.fixture(scope="module")
def server(cluster: LocalRayCluster, collection: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("ray-logs") / "server.log"
    with serving(collection, log, args=("--engine", "ray", "--address", cluster.address, "--replicas", "2",
                                        "--auto-compact-ratio", "0", "--shard-timeout-s", "1",
                                        "--shard-attempts", "2"), env={"DUET_API_KEY": KEY}) as running:
        _wait_ready(running)
        yield running


def _wait_ready(server: Server, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = server.request("GET", "/readyz")
        if reply.status == 200:
            return
        if "loading" not in str(reply.json().get("reason")):
            raise AssertionError(f"not ready: {reply.json()} {server.log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    raise TimeoutError(server.log_path.read_text()[-3000:])


def test_the_ray_build_encodes_on_both_nodes_and_matches_the_embedded_index(collection: Path,
                                                                           tiny_engine: SearchEngine) -> None:
    layout = read_layout(collection)
    encode = layout.manifest.build["encode"]
    assert encode["engine"] == "ray" and encode["nodes"] == 2 and encode["workers"] == 2
    for side, store in tiny_engine.reader.stores.items():
        found = 0
        for shard_dir in layout.shard_dirs:
            shard = IndexReader(shard_dir, encoder=tiny_engine.encoder)
            part = shard.stores[side]
            rows = [store.row_of[i] for i in part.ids]
            assert list(part.order) == rows  # each row's position in the collection, in collection order
            np.testing.assert_array_equal(part.dense, store.dense[rows])
            found += len(part.ids)
            shard.close()
        assert found == len(store.ids)


# the builds run before the server fixture starts Ray Serve, whose replicas would share the nodes' CPUs with the
# encoder actors
def _ray_build(cluster: LocalRayCluster, checkpoint: Path, data: Path, out: Path,
               *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "indexer", "build", "--engine", "ray", "--address", cluster.address,
                           "--shards", "2", "--workers", "1", "--actor-batch-size", "8", "--checkpoint",
                           str(checkpoint), "--data", str(data), "--splits", "test", "--out", str(out),
                           "--cache-root", str(out.parent / "cache"), *extra], cwd=ROOT, timeout=600,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_the_ray_build_refuses_or_skips_an_unreadable_image_and_resumes(
        cluster: LocalRayCluster, tiny_checkpoint: Path, synthetic_dataset: Path, tiny_engine: SearchEngine,
        tmp_path: Path) -> None:
    from core.data import load_karpathy

    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset, data)
    dataset = load_karpathy(data)
    # the last image: with one actor, the batches before it are encoded when it stops the build
    bad_record = dataset.split("test")[-1]
    bad = dataset.image_path(bad_record)
    bad.write_bytes(b"not an image")
    out = tmp_path / "ray" / "collection"
    refused = _ray_build(cluster, tiny_checkpoint, data, out)
    assert refused.returncode == 2, refused.stderr[-3000:]
    error = [line for line in refused.stderr.splitlines() if "| ERROR |" in line]
    assert len(error) == 1 and bad.name in error[0] and "--skip-corrupt" in error[0]  # one line, not Ray's trace
    assert not (out / "current").exists() and not list(out.glob("versions/*"))
    kept = list(out.glob(".encoding/*/side=*/shard=*/*.parquet"))
    assert kept and "a build of the same inputs resumes there" in refused.stderr
    # two images the refused build encoded change before the next build: one is replaced (its record changes with
    # it), one is touched (same record, a newer file); both rows are encoded again
    replaced_record, touched_record = dataset.split("test")[:2]
    replaced_id = str(replaced_record.relative_path)
    (encoded_dir,) = (out / ".encoding").iterdir()
    assert {replaced_id, str(touched_record.relative_path)} <= {
        item_id for shard in range(2) for item_id in encoded_ids(encoded_dir, "images", shard)}
    replaced = dataset.image_path(replaced_record)
    replaced.write_bytes(noise_png(9_999))
    touched = dataset.image_path(touched_record)
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    fresh = tiny_engine.encoder.encode_image_files([replaced]).dense[0]
    assert not np.allclose(fresh, tiny_engine.reader.stores["images"].dense[
        tiny_engine.reader.stores["images"].row_of[replaced_id]], atol=1e-3)

    # the same build with the flag resumes from the rows the refused one encoded
    built = _ray_build(cluster, tiny_checkpoint, data, out, "--skip-corrupt")
    assert built.returncode == 0, built.stderr[-3000:]
    assert "resuming the encode" in built.stderr
    assert sum(int(n) for n in re.findall(r"images of shard \d+: encoding again (\d+) whose", built.stderr)) == 2
    layout = read_layout(out)
    encode = layout.manifest.build["encode"]
    total = sum(1 + len(record.captions) for record in dataset.split("test"))
    assert encode["resumed_items"] > 0 and encode["items"] + encode["resumed_items"] == total, encode
    assert not (out / ".encoding").exists()  # removed once published
    skipped = layout.manifest.collection["skipped_images"]
    assert len(skipped) == 1 and skipped[0].endswith(bad.name)
    # the rest of the test split, each row as the embedded index of the same files encoded it (the replaced image
    # as its new file); the unreadable image's captions are left out too, as an embedded build leaves them
    readable = {str(record.relative_path) for record in dataset.split("test")} - {skipped[0]}
    shards = [IndexReader(shard_dir, encoder=tiny_engine.encoder) for shard_dir in layout.shard_dirs]
    try:
        for side, store in tiny_engine.reader.stores.items():
            assert layout.manifest.build["rows"][side] == [len(shard.stores[side].ids) for shard in shards]
            ids: list[str] = []
            for shard in shards:
                part = shard.stores[side]
                rows = [store.row_of[i] for i in part.ids]
                assert rows == sorted(rows) and list(np.argsort(part.order)) == list(range(len(rows)))
                expected_dense = store.dense[rows].copy()
                expected_dense[[n for n, i in enumerate(part.ids) if i == replaced_id]] = fresh
                np.testing.assert_allclose(part.dense, expected_dense, atol=1e-5)
                ids += part.ids
            expected = readable if side == "images" else {
                i for i in store.ids if store.items[store.row_of[i]]["image_id"] in readable}
            assert set(ids) == expected, side
    finally:
        for shard in shards:
            shard.close()


def _search(server: Server, payload: dict[str, Any]) -> Any:
    reply = server.post_json("/v1/search", payload)
    assert reply.status == 200, reply.body[:500]
    return reply.json()


def _expected(tiny_engine: SearchEngine, payload: dict[str, Any]) -> list[tuple[str, float]]:
    from indexer.params import SearchParams

    query = tiny_engine.encode_text(payload["text"])
    params = SearchParams(**{k: v for k, v in payload.items() if k != "text"})
    return [(h.id, h.fused) for h in tiny_engine.search(query, params).hits]


def test_every_mode_over_http_equals_the_embedded_index(server: Server, tiny_engine: SearchEngine) -> None:
    for side in ("images", "texts"):
        for mode in MODES:
            for text in TEXTS:
                payload = {"text": text, "side": side, "top_k": 200, **mode}
                got = [(h["id"], h["scores"]["fused"]) for h in _search(server, payload)["hits"]]
                expected = _expected(tiny_engine, payload)
                assert [i for i, _ in got] == [i for i, _ in expected], payload
                assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-6)
    explained = _search(server, {"text": TEXTS[0], "explain": True, "top_k": 3})
    assert all(h["explanation"] is not None for h in explained["hits"])
    # facets are counted on every shard's replica and summed
    reply = server.request("GET", "/v1/facets/split?side=texts")
    assert reply.status == 200, reply.body[:300]
    assert {v["value"]: v["count"] for v in reply.json()["values"]} == {
        f.value: f.count for f in tiny_engine.facets("texts", "split")}


def test_a_write_to_the_sharded_collection_is_searchable(server: Server) -> None:
    reply = server.post_multipart("/v1/items", {"id": "ray-written", "captions": "a violet zigzag"},
                                  {"image": ("w.png", noise_png(11), "image/png")}, headers=AUTH)
    assert reply.status == 201, reply.body
    found = server.post_multipart("/v1/search", {"top_k": "1", "mode": "dense"},
                                  {"image": ("w.png", noise_png(11), "image/png")})
    assert found.json()["hits"][0]["id"] == "ray-written"
    assert server.request("GET", "/v1/items/ray-written%230").json()["text"] == "a violet zigzag"
    assert server.request("GET", "/v1/items/ray-written/image").body == noise_png(11)
    stats = server.request("GET", "/v1/collection", headers=AUTH).json()
    assert stats["sides"]["images"]["delta"] == 1
    assert server.request("DELETE", "/v1/items/ray-written", headers=AUTH).status == 200
    assert server.request("GET", "/v1/items/ray-written").status == 404


def _load(server: Server, seconds: float, clients: int = 8) -> tuple[int, list[str]]:
    """Concurrent searches for ``seconds``: how many answered, and every failure."""
    stop = time.monotonic() + seconds
    answered, failures = [0], []
    lock = threading.Lock()

    def client(n: int) -> None:
        while time.monotonic() < stop:
            reply = server.post_json("/v1/search", {"text": TEXTS[n % len(TEXTS)], "top_k": 5})
            with lock:
                if reply.status == 200:
                    answered[0] += 1
                else:
                    failures.append(f"{reply.status} {reply.body[:200]!r}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answered[0], failures


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def test_killing_one_replica_under_concurrent_load_fails_no_query(server: Server, cluster: LocalRayCluster,
                                                                  collection: Path) -> None:
    shard = read_layout(collection).manifest.shards[0].name
    replicas = _replica_pids(cluster, shard)
    assert len(replicas) == 2
    victim = sorted(replicas.values())[0]
    timer = threading.Timer(1.5, _kill, args=(victim,))
    timer.start()
    answered, failures = _load(server, 5.0)
    timer.join()
    assert failures == [] and answered > 10
    assert victim not in _replica_pids(cluster, shard).values()


def test_a_shard_with_no_replica_answers_503_naming_it_then_recovers(server: Server, cluster: LocalRayCluster,
                                                                   collection: Path) -> None:
    shard = read_layout(collection).manifest.shards[1].name
    _wait_replicas(cluster, shard, 2)
    for pid in _replica_pids(cluster, shard).values():
        _kill(pid)
    reply = server.post_json("/v1/search", {"text": TEXTS[0]})
    assert reply.status == 503 and reply.json()["error"]["code"] == "shard_unavailable"
    assert shard in reply.json()["error"]["message"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reply = server.post_json("/v1/search", {"text": TEXTS[0]})
        if reply.status == 200:
            break
        time.sleep(0.5)
    assert reply.status == 200, "Serve restarted the shard's replicas and search recovered"


def _replica_pids(cluster: LocalRayCluster, shard: str) -> dict[str, int]:
    return dict(ask(cluster.address, "replicas", reader_app(shard), shard))


def _wait_replicas(cluster: LocalRayCluster, shard: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(_replica_pids(cluster, shard)) < count and time.monotonic() < deadline:
        time.sleep(0.5)


def server_collection(server: Server) -> Path:
    return Path(server.request("GET", "/v1/indexes").json()["index_dir"])
