"""A sharded collection built and searched in this process: the merge gives the single index's ranking exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.build import IndexBuildConfig
from indexer.index_reader import IndexReader
from indexer.merge import ShardCandidates, merge_candidates
from indexer.params import SearchParams
from indexer.search import SearchEngine, SearchResult
from indexer.served import ServedCollection
from indexer.sharding import build_collection_embedded, is_sharded, read_layout, shard_of
from tests.conftest import noise_png

pytestmark = pytest.mark.java

TEXTS = ["a red square on blue", "green dot", "the stripe is yellow", "a white square coloured black"]
# Every mode, each leg searching deeper than the side has rows (so no leg cuts its answer inside a group of tied
# scores, whose members one FAISS or Lucene search picks in its own order): the whole rankings must be equal.
DEEP = 1000
MODES = [SearchParams(mode="hybrid", top_k=DEEP, candidate_k=DEEP), SearchParams(mode="dense", top_k=DEEP),
         SearchParams(mode="sparse", top_k=DEEP), SearchParams(mode="sparse", sparse_query_terms=2, top_k=DEEP,
                                                              candidate_k=DEEP),
         SearchParams(mode="hybrid", fusion="rrf", top_k=DEEP, candidate_k=DEEP),
         SearchParams(mode="hybrid", top_k=5, offset=2, candidate_k=DEEP),
         SearchParams(mode="hybrid", w_sparse=0, top_k=DEEP, candidate_k=DEEP)]


def sharded_config(checkpoint: Path, dataset: Path, out: Path, shards: int) -> IndexBuildConfig:
    return IndexBuildConfig(checkpoint=checkpoint, output=out, dataset=dataset, splits=("test", "val"),
                            cache_root=out.parent / "cache", shards=shards)


@pytest.fixture(scope="module")
def sharded_dir(tiny_checkpoint: Path, synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sharded") / "collection"
    build_collection_embedded(sharded_config(tiny_checkpoint, synthetic_dataset, out, 3))
    return out


@pytest.fixture()
def sharded(sharded_dir: Path) -> Iterator[ServedCollection]:
    collection = ServedCollection.open_sharded(sharded_dir)
    yield collection
    collection.close()


def test_the_build_places_every_item_on_the_shard_its_id_names(sharded_dir: Path, tiny_engine: SearchEngine) -> None:
    layout = read_layout(sharded_dir)
    assert is_sharded(sharded_dir) and len(layout.shard_dirs) == 3
    seen: dict[str, list[str]] = {"images": [], "texts": []}
    for n, shard_dir in enumerate(layout.shard_dirs):
        shard = IndexReader(shard_dir)
        for side, store in shard.stores.items():
            assert all(shard_of(i, 3) == n for i in store.ids)
            assert store.order is not None and list(store.order) == sorted(store.order)
            assert [tiny_engine.reader.stores[side].ids[int(p)] for p in store.order] == store.ids
            seen[side] += store.ids
        shard.close()
    for side, ids in seen.items():
        assert sorted(ids) == sorted(tiny_engine.reader.stores[side].ids)
    assert sum(e.counts["images"] for e in layout.manifest.shards) == len(tiny_engine.reader.stores["images"].ids)


@pytest.mark.parametrize("side", ["images", "texts"])
def test_every_mode_ranks_as_the_single_index(tiny_engine: SearchEngine, sharded: ServedCollection,
                                              side: str) -> None:
    engine = sharded.engine
    queries = ([tiny_engine.encode_text(t) for t in TEXTS]
               + [tiny_engine.encode_image(_image(seed)) for seed in range(2)])
    for params in MODES:
        params = params.model_copy(update={"side": side, "explain": True})
        for query in queries:
            ours, theirs = tiny_engine.search(query, params), engine.search(query, params)
            assert_same_ranking(ours, theirs)
            assert theirs.candidates == ours.candidates
            assert theirs.warnings == ours.warnings


def assert_same_ranking(ours: SearchResult, theirs: SearchResult) -> None:
    """The same hits in the same order (ties by collection position), with the same scores, items, explanations."""
    assert [(h.id, h.rank) for h in theirs.hits] == [(h.id, h.rank) for h in ours.hits]
    for a, b in zip(ours.hits, theirs.hits, strict=True):
        assert (b.dense, b.sparse, b.fused) == pytest.approx((a.dense, a.sparse, a.fused), abs=1e-6)
        assert b.item == a.item and b.explanation == a.explanation


def test_merge_breaks_ties_by_collection_position() -> None:
    def answer(ids: list[str], keys: list[int], score: float) -> ShardCandidates:
        n = len(ids)
        scores = np.full(n, score, np.float32)
        return ShardCandidates(ids, np.array(keys, np.int64), scores, scores, {"dense": (np.arange(n), scores)},
                               n, None)

    merged = merge_candidates([answer(["b", "d"], [1, 3], 1.0), answer(["a", "c"], [0, 2], 1.0)],
                              lambda dense, sparse: dense + sparse, "fused", 3)
    assert merged.ids == ["a", "b", "c"] and merged.candidates == 3


def test_a_write_goes_to_the_shard_that_owns_its_id(sharded: ServedCollection) -> None:
    result = sharded.add_image(noise_png(7), item_id="written-7", captions=["a purple hexagon"])
    assert result.written == {"images": ["written-7"], "texts": ["written-7#0"]}
    owner = shard_of("written-7", 3)
    stats = sharded.stats()
    assert stats["shards"][f"shard-{owner:03d}"]["sides"]["images"]["delta"] == 1
    engine = sharded.engine
    found = engine.search(engine.encode_image(_png_image(7)), SearchParams(mode="dense", top_k=1))
    assert found.hits[0].id == "written-7"
    assert engine.item("written-7#0")[1]["text"] == "a purple hexagon"
    sharded.delete("written-7")
    with pytest.raises(KeyError):
        engine.item("written-7")


def _image(seed: int):  # type: ignore[no-untyped-def]
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))


def _png_image(seed: int):  # type: ignore[no-untyped-def]
    import io

    from PIL import Image

    return Image.open(io.BytesIO(noise_png(seed))).convert("RGB")


def test_the_cli_builds_verifies_and_writes_a_sharded_collection(tiny_checkpoint: Path, synthetic_dataset: Path,
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from indexer.cli import main as indexer_main

    out = tmp_path / "collection"
    assert indexer_main(["build", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_dataset),
                         "--out", str(out), "--splits", "test", "--shards", "2",
                         "--cache-root", str(tmp_path / "cache")]) == 0
    built = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in built["shards"]] == ["shard-000", "shard-001"]
    assert sum(s["counts"]["images"] for s in built["shards"]) == 16
    assert indexer_main(["verify", "--index", str(out), "--checkpoint", str(tiny_checkpoint)]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    image = tmp_path / "new.png"
    image.write_bytes(noise_png(3))
    assert indexer_main(["add", "--index", str(out), "--image", str(image), "--id", "added",
                         "--caption", "a new picture"]) == 0
    assert json.loads(capsys.readouterr().out)["written"]["texts"] == ["added#0"]
    assert indexer_main(["delete", "--index", str(out), "--id", "added"]) == 0
    assert indexer_main(["delete", "--index", str(out), "--id", "added"]) == 2
