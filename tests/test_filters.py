"""Filtered search: payload indexes, the filter language, and the planner's exact plan against a brute-force oracle.

The oracle evaluates each random filter on the items' own payloads in plain Python and ranks every live allowed row
by its exact scores; the engine must give the same ids and scores, for random payloads and random filters, in every
mode, fusion and side, with deletes and rows written since the build, on one index and on three shards.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.encoder import DuetEncoder, EncodedItems, SparseRows, TermPostings
from core.fusion import integrated_score, reciprocal_rank_fusion
from indexer import dense_first, planner
from indexer.build import EncodedSide, IndexBuildConfig, publish_index, verify_index
from indexer.dense_first import FusedBound
from indexer.filters import Allowed, Filter, compile_filter
from indexer.index_reader import IndexReader, ReaderShard
from indexer.live import LiveCollection
from indexer.params import SearchParams
from indexer.payload import (
    PayloadError,
    PayloadIndex,
    check_schema,
    inferred_schema,
    narrowest,
    payload_of,
    stored_value,
)
from indexer.query import Query
from indexer.search import SearchEngine
from indexer.searchers import ExactScores, row_dot_products
from indexer.sharding import shard_of
from indexer.store import IndexUnavailableError
from tests.conftest import noise_png

pytestmark = pytest.mark.java

SCHEMA = {"color": "keyword", "tags": "keywords", "year": "integer", "score": "float", "taken": "datetime",
          "public": "bool"}
COLORS = ["red", "green", "blue", "grey"]
TAGS = ["a", "b", "c", "d", "e"]
ITEMS = 240


def random_payload(rng: np.random.Generator) -> dict[str, Any]:
    """A payload with each field present about 80% of the time."""
    fields: dict[str, Any] = {
        "color": str(rng.choice(COLORS)),
        "tags": [str(t) for t in rng.choice(TAGS, size=int(rng.integers(0, 4)), replace=False)],
        "year": int(rng.integers(1990, 2030)),
        "score": float(np.round(rng.normal(), 1)),
        "taken": (dt.datetime(2020, 1, 1) + dt.timedelta(hours=int(rng.integers(0, 40_000)))).isoformat(),
        "public": bool(rng.integers(0, 2)),
    }
    return {k: v for k, v in fields.items() if rng.random() < 0.8}


def random_vectors(rng: np.random.Generator, count: int, dim: int, vocab: int) -> EncodedItems:
    dense = rng.normal(size=(count, dim)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    rows = []
    for _ in range(count):
        ids = np.sort(rng.choice(min(vocab, 60), size=int(rng.integers(1, 8)), replace=False)).astype(np.int32)
        rows.append((ids, rng.uniform(0.1, 2.0, ids.size).astype(np.float32)))
    return EncodedItems(dense, sparse_of(rows))


def sparse_of(rows: list[tuple[np.ndarray, np.ndarray]]) -> SparseRows:
    indptr = np.concatenate([[0], np.cumsum([ids.size for ids, _ in rows])]).astype(np.int64)
    return SparseRows(indptr, np.concatenate([r[0] for r in rows]).astype(np.int32),
                      np.concatenate([r[1] for r in rows]).astype(np.float32))


def random_query(rng: np.random.Generator, dim: int) -> Query:
    dense = rng.normal(size=dim).astype(np.float32)
    ids = np.sort(rng.choice(60, size=int(rng.integers(1, 6)), replace=False)).astype(np.int32)
    return Query(dense / np.linalg.norm(dense), ids, rng.uniform(0.1, 2.0, ids.size).astype(np.float32))


def random_condition(rng: np.random.Generator, depth: int = 0) -> dict[str, Any]:
    kind = int(rng.integers(0, 9 if depth < 2 else 8))
    if kind == 0:
        return {"key": "color", "match": {"value": str(rng.choice(COLORS))}}
    if kind == 1:
        return {"key": "tags", "match": {"any": [str(t) for t in rng.choice(TAGS, size=2, replace=False)]}}
    ops = [str(op) for op in rng.choice(["gt", "gte", "lt", "lte"], size=int(rng.integers(1, 3)), replace=False)]
    if kind == 2:  # bounds the values hold: every operator meets its boundary case
        return {"key": "year", "range": {op: int(rng.integers(1990, 2030)) for op in ops}}
    if kind == 3:
        return {"key": "score", "range": {op: float(np.round(rng.normal(), 1)) for op in ops}}
    if kind == 4:
        start = dt.datetime(2020, 1, 1) + dt.timedelta(hours=int(rng.integers(0, 40_000)))
        return {"key": "taken", "range": {"lte": start.isoformat() + "+00:00"}}
    if kind == 5:
        return {"key": "public", "match": {"value": bool(rng.integers(0, 2))}}
    if kind == 6:
        return {"key": str(rng.choice(list(SCHEMA))), "exists": bool(rng.random() < 0.7)}
    if kind == 7:
        return {"has_id": [f"i{int(n)}" for n in rng.integers(0, ITEMS + 40, size=30)]}
    return random_filter(rng, depth + 1)


def random_filter(rng: np.random.Generator, depth: int = 0) -> dict[str, Any]:
    clause: dict[str, Any] = {}
    for part in ("must", "should", "must_not"):
        if rng.random() < 0.6:
            clause[part] = [random_condition(rng, depth) for _ in range(int(rng.integers(1, 3)))]
    return clause


# ----- the oracle: the filter on the item's own payload, in plain Python -----
def _holds(condition: dict[str, Any], item: dict[str, Any]) -> bool:
    if "has_id" in condition:
        return item["id"] in condition["has_id"]
    if "key" not in condition:
        return passes(condition, item)
    value = payload_of(item).get(condition["key"])
    if "exists" in condition:
        return (value is not None and value != []) == condition["exists"]
    if value is None:
        return False
    if "match" in condition:
        wanted = condition["match"].get("any", [condition["match"].get("value")])
        held = value if isinstance(value, list) else [value]
        return any(v in wanted and type(v) is type(w) for v in held for w in wanted if v == w)
    key = condition["key"]
    if key == "taken":
        value = dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
    checks = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b,
              "lte": lambda a, b: a <= b}
    for name, bound in condition["range"].items():
        if key == "taken":
            bound = dt.datetime.fromisoformat(bound)
        if not checks[name](value, bound):
            return False
    return True


def passes(clause: dict[str, Any], item: dict[str, Any]) -> bool:
    if not all(_holds(c, item) for c in clause.get("must", [])):
        return False
    if clause.get("should") and not any(_holds(c, item) for c in clause["should"]):
        return False
    return not any(_holds(c, item) for c in clause.get("must_not", []))


def oracle(items: list[dict[str, Any]], dense: np.ndarray, sparse: np.ndarray, clause: dict[str, Any],
           params: SearchParams, w: tuple[float, float], temperature: float) -> tuple[list[str], np.ndarray]:
    """Every live item passing the filter, ranked as the exact plan defines it (ties by collection order)."""
    allowed = np.array([passes(clause, item) for item in items], bool)
    rows = np.flatnonzero(allowed)
    d, s = dense[rows], sparse[rows]
    k = params.top_k
    if params.mode == "dense":
        order = np.lexsort((rows, -d))[:k]
        return [items[r]["id"] for r in rows[order]], d[order]
    if params.mode == "sparse":
        matched = s > 0
        rows, s = rows[matched], s[matched]
        order = np.lexsort((rows, -s))[:k]
        return [items[r]["id"] for r in rows[order]], s[order]
    if params.fusion == "weighted":
        fused = integrated_score(d, s, w_dense=w[0], w_sparse=w[1], temperature=temperature)
        order = np.lexsort((rows, -fused))[:k]
        return [items[r]["id"] for r in rows[order]], fused[order]
    depth = max(k, params.candidate_k)
    by_dense = rows[np.lexsort((rows, -d))[:depth]]
    matched = s > 0
    by_sparse = rows[matched][np.lexsort((rows[matched], -s[matched]))[:depth]]
    union = np.union1d(by_dense, by_sparse)
    at = np.searchsorted(rows, union)
    fused = reciprocal_rank_fusion(d[at], s[at])
    order = np.lexsort((union, -fused))[:k]
    return [items[r]["id"] for r in union[order]], fused[order]


# ----- fixtures: one index and three shards of the same random items -----
def publish(encoder: DuetEncoder, checkpoint: Path, out: Path, items: list[dict[str, Any]], encoded: EncodedItems,
            order: np.ndarray | None = None) -> None:
    config = IndexBuildConfig(checkpoint=checkpoint, output=out, dataset=None, payload=SCHEMA)
    publish_index(config, encoder, {"images": EncodedSide(items, encoded, order)},
                  {"name": out.name, "source": "generated", "root": "."})


@pytest.fixture(scope="module")
def generated(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    encoder = DuetEncoder.from_checkpoint(tiny_checkpoint)
    dim = int(encoder.encode_texts(["."]).dense.shape[1])
    items = [{"id": f"i{n}", **random_payload(rng)} for n in range(ITEMS)]
    encoded = random_vectors(rng, ITEMS, dim, len(encoder.vocabulary))
    root = tmp_path_factory.mktemp("filtered")
    publish(encoder, tiny_checkpoint, root / "single", items, encoded)
    shards = []
    for n in range(3):
        rows = np.array([r for r, item in enumerate(items) if shard_of(item["id"], 3) == n], np.int64)
        part = EncodedItems(encoded.dense[rows], sparse_of([encoded.sparse.row(int(r)) for r in rows]))
        publish(encoder, tiny_checkpoint, root / f"shard{n}", [items[r] for r in rows], part, order=rows)
        shards.append(root / f"shard{n}")
    return {"encoder": encoder, "dim": dim, "items": items, "root": root, "shards": shards}


def engines(generated: dict[str, Any], single: Path) -> Iterator[SearchEngine]:
    encoder = generated["encoder"]
    one = SearchEngine.open(single, encoder=encoder)
    readers = [IndexReader(d, encoder=encoder) for d in generated["shards"]]
    three = SearchEngine([ReaderShard(r, name=f"shard{n}") for n, r in enumerate(readers)], encoder,
                         root=generated["root"], collection_root=generated["root"], shard_dirs=generated["shards"])
    yield one
    yield three
    one.close()
    three.close()


PARAMS = [SearchParams(mode="dense", top_k=12), SearchParams(mode="sparse", top_k=12),
          SearchParams(mode="hybrid", top_k=12), SearchParams(mode="hybrid", fusion="rrf", top_k=12, candidate_k=20),
          SearchParams(mode="hybrid", top_k=5, offset=4)]


def check_against_oracle(engine: SearchEngine, items: list[dict[str, Any]], rng: np.random.Generator, dim: int,
                         cases: int) -> int:
    """Random filters and queries through the engine's exact plan against the oracle; the cases that had hits."""
    reader_scores = {}
    with_hits = 0
    for case in range(cases):
        clause = random_filter(rng)
        query = random_query(rng, dim)
        base = PARAMS[case % len(PARAMS)]
        params = base.model_copy(update={"filter": Filter.model_validate(clause), "plan": "exact"})
        result = engine.search(query, params)
        if not reader_scores:
            reader_scores["w"] = engine.default_weights()
        dense = np.array([item_score(engine, item["id"], query, "dense") for item in items], np.float32)
        sparse = np.array([item_score(engine, item["id"], query, "sparse") for item in items], np.float32)
        whole = params.model_copy(update={"top_k": params.offset + params.top_k, "offset": 0})
        ids, scores = oracle(items, dense, sparse, clause, whole, reader_scores["w"], engine.manifest.temperature)
        ids, scores = ids[params.offset:], scores[params.offset:]
        got = [hit.id for hit in result.hits]
        ranked = {"dense": "dense", "sparse": "sparse"}.get(params.mode, "fused")
        assert got == ids, (clause, params.mode, params.fusion)
        assert np.array_equal(np.array([getattr(h, ranked) for h in result.hits], np.float32),
                              scores.astype(np.float32)), clause
        assert result.plan == "exact" and result.rows == sum(passes(clause, item) for item in items)
        with_hits += bool(got)
    return with_hits


def _located(engine: SearchEngine, item_id: str) -> tuple[Any, int]:
    for shard in engine.shards:
        reader = shard.reader  # type: ignore[attr-defined]
        view = reader.view("images")
        row = view.row_of(item_id)
        if row is not None:
            return view, row
    raise KeyError(item_id)


def item_score(engine: SearchEngine, item_id: str, query: Query, leg: str) -> float:
    """One item's exact score on a leg, scored alone (the engine's arithmetic for one row, which must not depend on
    the rows scored beside it)."""
    view, row = _located(engine, item_id)
    store = view.base if row < view.base_count else view.segment.delta
    local = row if row < view.base_count else row - view.base_count
    return float(getattr(ExactScores(store, len(engine.encoder.vocabulary)), leg)(query, np.array([local]))[0])


def test_filtered_results_equal_the_brute_force_oracle_single_and_sharded(generated: dict[str, Any]) -> None:
    rng = np.random.default_rng(11)
    for engine in engines(generated, generated["root"] / "single"):
        assert check_against_oracle(engine, generated["items"], rng, generated["dim"], 60) >= 30


def listed_rows_equal_the_masks(reader: IndexReader, rng: np.random.Generator) -> int:
    """Random filters over a view with deletes and a delta: where a keyword's posting lists the allowed rows, they
    are the mask's rows, deleted ones left out; the filters listed so."""
    view = reader.view("images")
    listed = 0
    for case in range(40):
        clause = random_filter(rng)
        if case % 2:  # a keyword match the filter must pass, beside its other conditions
            clause.setdefault("must", []).append({"key": "tags", "match": {"any": ["a", "c"]}})
        allowed = reader.allowed(view, reader.compiled(Filter.model_validate(clause)))
        if allowed.listed is not None:
            listed += 1
            assert np.array_equal(allowed.listed, np.flatnonzero(allowed.mask)), clause
            assert not np.isin(allowed.listed, view.segment.deleted).any()
    return listed


def test_filters_hold_with_deletes_and_rows_written_since(generated: dict[str, Any], tmp_path: Path) -> None:
    single = tmp_path / "single"
    shutil.copytree(generated["root"] / "single", single, symlinks=True)
    live = LiveCollection.open(single, encoder=generated["encoder"])
    rng = np.random.default_rng(5)
    items = list(generated["items"])
    for n in range(0, ITEMS, 9):
        live.delete(f"i{n}")
    items = [item for item in items if int(item["id"][1:]) % 9]
    for n in range(25):  # the delta: images written since, some replacing built ones (a delete and a write)
        item_id = f"i{n * 7 + 1}" if n % 5 == 0 else f"w{n}"
        payload = random_payload(rng)
        live.add_image(noise_png(n), item_id=item_id, metadata=payload)
        items = [item for item in items if item["id"] != item_id] + [{"id": item_id, "metadata": payload}]
    try:
        with live.searching() as engine:
            assert engine.reader.view("images").segment.delta.count == 25
            assert check_against_oracle(engine, items, rng, generated["dim"], 60) >= 30
            assert listed_rows_equal_the_masks(engine.reader, rng) >= 10
    finally:
        live.close()


def test_the_index_plan_keeps_to_the_filter(generated: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    items = {item["id"]: item for item in generated["items"]}
    for engine in engines(generated, generated["root"] / "single"):
        for case in range(20):
            clause = random_filter(rng)
            params = PARAMS[case % len(PARAMS)].model_copy(update={"filter": Filter.model_validate(clause),
                                                                   "plan": "index"})
            result = engine.search(random_query(rng, generated["dim"]), params)
            assert result.plan == "index"
            assert all(passes(clause, items[hit.id]) for hit in result.hits)
            allowed = sum(passes(clause, item) for item in items.values())
            if params.mode == "dense":  # FAISS searches the allowed rows alone: a full page whenever there are
                assert len(result.hits) == min(params.top_k, max(0, allowed - params.offset))



def test_a_filtered_sparse_leg_scores_the_allowed_rows_where_an_over_fetch_would_go_deep(
        generated: dict[str, Any]) -> None:
    """Lucene under a filter over-fetches by the filter's selectivity, and each hit it returns costs about as much as
    ``EXACT_ROWS_PER_HIT`` rows scored exactly: past that the leg scores every allowed row instead (a filter far from
    the query otherwise doubles the ask up to every row). Both ways give the allowed rows only; the exact way gives
    the top k of the allowed rows by their exact sparse scores."""
    reader = IndexReader(generated["root"] / "single", encoder=generated["encoder"])
    try:
        rng = np.random.default_rng(17)
        lucene = reader.sparse_leg("images")
        asked: list[int] = []

        class Counting:
            name = "lucene"

            def search_batch(self, queries: list[Query], k: int) -> list[Any]:
                asked.append(k)
                return lucene.search_batch(queries, k)

        exact = reader.exact_scores("images").sparse
        for _ in range(10):
            query = random_query(rng, generated["dim"])
            mask = rng.random(ITEMS) < 0.3
            allowed = Allowed(mask)
            rows = np.flatnonzero(mask)
            scores = exact(query, rows)
            expected = set(rows[scores > 0][np.argsort(-scores[scores > 0], kind="stable")[:5]].tolist())
            asked.clear()
            ranking = planner.Filtered(Counting(), allowed, exact).search_batch([query], 5)[0]
            assert not asked  # 72 rows allowed: fewer than EXACT_ROWS_PER_HIT per hit of any ask
            assert set(ranking.rows.tolist()) == expected and mask[ranking.rows].all()
            through = planner.Filtered(Counting(), allowed).search_batch([query], 5)[0]  # no exact scores: Lucene
            assert asked and mask[through.rows].all() and len(through) == len(ranking)
    finally:
        reader.close()


def test_the_over_fetch_gives_way_to_exact_scores_past_the_measured_cost() -> None:
    """The rule alone, on a leg that finds nothing the filter keeps: it is asked, twice as deep each time, until the
    next ask would cost more than scoring the allowed rows."""
    asked: list[int] = []

    class FindsOthers:
        name = "others"

        def search_batch(self, queries: list[Query], k: int) -> list[Any]:
            asked.append(k)
            return [planner.Ranking(np.arange(k, dtype=np.int64), np.ones(k, np.float32)) for _ in queries]

    mask = np.zeros(1_000_000, bool)
    mask[-50_000:] = True  # the rows the leg never reaches first
    scored: list[int] = []

    def exact(query: Query, rows: np.ndarray) -> np.ndarray:
        scored.append(rows.size)
        return np.ones(rows.size, np.float32)

    leg = planner.Filtered(FindsOthers(), Allowed(mask), exact)
    ranking = leg.search_batch([random_query(np.random.default_rng(0), 4)], 10)[0]
    assert asked == [408, 816]  # 2 * 10 * 20 + 8, then twice as deep; the next ask, 1,632 deep, would cost more
    assert planner.EXACT_ROWS_PER_HIT * 816 < 50_000 <= planner.EXACT_ROWS_PER_HIT * 1_632
    assert scored == [50_000] and len(ranking) == 10 and mask[ranking.rows].all()

def test_the_planner_chooses_by_the_allowed_rows(generated: dict[str, Any]) -> None:
    engine = SearchEngine.open(generated["root"] / "single", encoder=generated["encoder"])
    try:
        query = random_query(np.random.default_rng(0), generated["dim"])
        assert engine.search(query, SearchParams()).plan == "exact"  # a small collection: brute force
        assert engine.search(query, SearchParams(plan="index")).plan == "index"
        result = engine.search(query, SearchParams(plan="index"))
        assert {"dense_ms", "sparse_ms", "plan_ms"} <= set(result.timings_ms)
        assert {"exact_ms", "plan_ms"} <= set(engine.search(query, SearchParams()).timings_ms)
    finally:
        engine.close()


def test_facets_count_live_items_under_a_filter(generated: dict[str, Any]) -> None:
    items = generated["items"]
    clause = {"must": [{"key": "public", "match": {"value": True}}]}
    for engine in engines(generated, generated["root"] / "single"):
        counted = {f.value: f.count for f in engine.facets("images", "color", Filter.model_validate(clause))}
        expected: dict[str, int] = {}
        for item in items:
            if passes(clause, item) and "color" in item:
                expected[item["color"]] = expected.get(item["color"], 0) + 1
        assert counted == expected
        tags = {f.value: f.count for f in engine.facets("images", "tags")}
        assert tags == {t: sum(t in item.get("tags", []) for item in items) for t in TAGS if
                        any(t in item.get("tags", []) for item in items)}
        flags = engine.facets("images", "public")
        assert {f.value for f in flags} <= {True, False} and sum(f.count for f in flags) == sum(
            "public" in item for item in items)
        with pytest.raises(PayloadError, match="score: facets count"):
            engine.facets("images", "score")
        with pytest.raises(PayloadError, match="nope: no payload index"):
            engine.facets("images", "nope")


@pytest.mark.parametrize(("clause", "field", "message"), [
    ({"must": [{"key": "nope", "match": {"value": "x"}}]}, "nope", "no payload index on this field"),
    ({"must": [{"key": "color", "match": {"value": 3}}]}, "color", "a keyword is a string"),
    ({"must": [{"key": "year", "match": {"value": "1999"}}]}, "year", "is not a number"),
    ({"should": [{"key": "color", "range": {"gt": 1}}]}, "color", "a range needs an integer, float or datetime"),
    ({"must": [{"key": "tags", "match": {"any": []}}]}, "tags", "'any' needs at least one value"),
    ({"must": [{"key": "taken", "range": {"gt": "yesterday"}}]}, "taken", "is not an ISO 8601"),
    ({"must": [{"key": "public", "match": {"value": 1}}]}, "public", "true or false"),
    ({"must_not": [{"must": [{"key": "score", "range": {"lt": "high"}}]}]}, "score", "is not a number"),
])
def test_a_bad_filter_is_refused_naming_its_field(clause: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(PayloadError, match=message) as refused:
        compile_filter(Filter.model_validate(clause), check_schema(SCHEMA))
    assert refused.value.field == field


def test_payload_values_are_typed_and_columns_round_trip(tmp_path: Path) -> None:
    assert stored_value("datetime", "1970-01-01T00:00:01", "t") == 1_000_000
    assert stored_value("datetime", "1970-01-01T01:00:00+01:00", "t") == 0
    assert stored_value("integer", 3.0, "n") == 3 and stored_value("keywords", "x", "k") == ("x",)
    for kind, value in (("integer", 2.5), ("integer", True), ("float", "1"), ("keyword", 1), ("keywords", [1]),
                        ("bool", 0), ("datetime", 5)):
        with pytest.raises(PayloadError):
            stored_value(kind, value, "f")  # type: ignore[arg-type]
    items = [{"id": "a", "color": "red", "tags": ["x", "y"], "metadata": {"year": 2001}},
             {"id": "b", "color": None, "tags": []}, {"id": "c", "metadata": {"color": "blue", "public": False}}]
    schema = check_schema({"color": "keyword", "tags": "keywords", "year": "integer", "public": "bool"})
    index = PayloadIndex.from_items(schema, items)
    index.save(tmp_path / "payload.npz")
    assert PayloadIndex.load(tmp_path / "payload.npz", schema, 3).equals(index)
    # integers are held in the narrowest type that holds them (a filter reads fewer bytes), the same values
    assert index.column("year").values.dtype == np.int16 and index.column("public").values.dtype == np.int8
    assert narrowest(np.array([0, -(2**40)], np.int64)).dtype == np.int64
    assert narrowest(np.array([0, 2**31 - 1], np.int64)).dtype == np.int32
    assert narrowest(np.array([0.5, 1e9])).dtype == np.float64
    empty = PayloadIndex.from_items(schema, [])  # a side with no items yet: every filter matches nothing
    assert not empty.column("color").rows_with(["red"]).size and empty.column("color").counts(np.zeros(0, bool)) == {}
    unset = PayloadIndex.from_items(schema, [{"id": "u"}])
    assert not unset.column("color").rows_with(["red"]).any()
    flags = PayloadIndex.from_items(schema, [{"id": "t", "public": True}, {"id": "f", "public": False}, {"id": "n"}])
    assert flags.column("public").counts(np.ones(3, bool)) == {0: 1, 1: 1}
    with pytest.raises(PayloadError, match="item 'z'"):
        PayloadIndex.from_items(schema, [{"id": "z", "year": "soon"}])
    with pytest.raises(PayloadError, match="reserved"):
        check_schema({"text": "keyword"})
    assert inferred_schema([{"a": 1, "b": "x", "c": [1], "d": 1.5, "e": True, "f": ["x"]},
                            {"a": 2.5, "b": ["y"], "d": 2, "g": None}]) == {
        "a": "float", "b": "keywords", "d": "float", "e": "bool", "f": "keywords"}


def test_verify_checks_the_payload_index_and_writes_are_typed(generated: dict[str, Any], tmp_path: Path) -> None:
    single = tmp_path / "single"
    shutil.copytree(generated["root"] / "single", single, symlinks=True)
    assert verify_index(single)["sides"]["images"]["payload_fields"] == len(SCHEMA)
    live = LiveCollection.open(single, encoder=generated["encoder"])
    try:
        with pytest.raises(ValueError, match="metadata.year: integer field"):
            live.add_image(noise_png(1), item_id="typed", metadata={"year": "2001"})
        assert live.reader.view("images").row_of("typed") is None  # refused before the log: nothing written
    finally:
        live.close()
    payload = next((single / "current").resolve().glob("images/payload.npz"))
    payload.chmod(0o644)
    payload.write_bytes(payload.read_bytes()[:-8])
    with pytest.raises(IndexUnavailableError):
        verify_index(single)


class SettleCounter:
    """Counts the bound's answers (indexer/dense_first.py), to show a test went through both outcomes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answers: list[bool] = []
        original = FusedBound.settles

        def counted(bound: FusedBound, query: Query, kth: float, dense_last: float) -> bool:
            answer = original(bound, query, kth, dense_last)
            self.answers.append(answer)
            return answer
        monkeypatch.setattr(FusedBound, "settles", counted)


def test_the_exact_plan_settled_by_its_dense_top_equals_the_oracle(generated: dict[str, Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A weighted hybrid search's exact plan scores every row densely and, when the bound settles the top k from
    the dense top alone, only those rows sparsely: the answer is still the oracle's. Shallow depths (16, 64 of 240
    rows) make the bound both settle queries and send others to every row's sparse score."""
    monkeypatch.setattr(planner, "DENSE_DEPTH", 16)
    monkeypatch.setattr(dense_first, "DENSE_DEPTH_MAX", 64)
    counter = SettleCounter(monkeypatch)
    rng = np.random.default_rng(23)
    for engine in engines(generated, generated["root"] / "single"):
        check_against_oracle(engine, generated["items"], rng, generated["dim"], 40)
    assert True in counter.answers and False in counter.answers


def test_the_index_plan_goes_dense_first_and_answers_exactly_over_an_exact_dense_index(
        generated: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Over a flat (exact) dense index, the dense-first index plan of a weighted hybrid search equals the exact plan,
    ids and scores, filtered or not: a query the bound settles from the dense top needs no sparse leg, one it does
    not is asked deeper and, past the deepest ask, through the sparse legs too."""
    monkeypatch.setattr(dense_first.DenseFirstSearcher.__init__, "__defaults__", (16,))
    monkeypatch.setattr(dense_first, "DENSE_DEPTH_MAX", 64)
    counter = SettleCounter(monkeypatch)
    # per shard's store (a scorer is made per call, and a freed one's id may be a later one's): the rows each sparse
    # rescoring scored (not a filtered sparse leg ranking its allowed rows: planner.Filtered)
    scored: dict[int, list[np.ndarray]] = {}
    original_sparse = ExactScores.sparse
    original_leg = planner.Filtered._every_allowed_row
    in_leg = [False]

    def recorded(self: ExactScores, query: Query, rows: np.ndarray) -> np.ndarray:
        if not in_leg[0]:
            scored.setdefault(id(self.store), []).append(rows.copy())
        return original_sparse(self, query, rows)

    def leg_ranking(self: planner.Filtered, query: Query, k: int) -> planner.Ranking:
        in_leg[0] = True
        try:
            return original_leg(self, query, k)
        finally:
            in_leg[0] = False
    monkeypatch.setattr(ExactScores, "sparse", recorded)
    monkeypatch.setattr(planner.Filtered, "_every_allowed_row", leg_ranking)
    rng = np.random.default_rng(29)
    sparse_searched = 0
    for engine in engines(generated, generated["root"] / "single"):
        for case in range(30):
            query = random_query(rng, generated["dim"])
            clause = random_filter(rng) if case % 2 else None
            base = SearchParams(mode="hybrid", top_k=10, filter=Filter.model_validate(clause) if clause else None)
            exact = engine.search(query, base.model_copy(update={"plan": "exact"}))
            scored.clear()
            indexed = engine.search(query, base.model_copy(update={"plan": "index"}))
            assert indexed.plan == "index"
            for calls in scored.values():  # a deeper ask scores only the rows it had not scored
                assert sum(c.size for c in calls) == np.unique(np.concatenate(calls)).size
            assert [h.id for h in indexed.hits] == [h.id for h in exact.hits], clause
            assert [h.fused for h in indexed.hits] == [h.fused for h in exact.hits]
            sparse_searched += indexed.timings_ms.get("sparse_ms", 0.0) > 0
    assert True in counter.answers and False in counter.answers
    assert sparse_searched > 0  # some query went past the deepest dense ask


def test_every_sparse_path_gives_the_same_bits() -> None:
    """A row's sparse score is the same whether it is scored alone, among some rows (scipy's row product) or among
    most rows (the term postings)."""
    rng = np.random.default_rng(3)
    rows = []
    for _ in range(3000):
        ids = np.sort(rng.choice(500, size=int(rng.integers(1, 40)), replace=False)).astype(np.int32)
        rows.append((ids, rng.uniform(0.01, 3.0, ids.size).astype(np.float32)))
    sparse = sparse_of(rows)

    class Stored:
        dense = np.zeros((3000, 4), np.float32)

        def __init__(self) -> None:
            self.sparse = sparse
            self.term_postings: TermPostings = sparse.by_term()

    scores = ExactScores(Stored(), 600)
    query = Query(np.zeros(4, np.float32), np.array([7, 3, 450, 499, 550], np.int32),
                  rng.uniform(0.1, 2.0, 5).astype(np.float32))
    every = np.arange(3000)
    by_term = scores.sparse(query, every)  # postings + rows < the rows' terms: through the postings
    by_row = scores._sparse_by_row(query, every)
    alone = np.array([scores.sparse(query, np.array([r]))[0] for r in range(0, 3000, 37)], np.float32)
    assert by_term.any() and np.array_equal(by_term, by_row) and np.array_equal(alone, by_row[::37])


def test_a_dense_score_does_not_depend_on_the_rows_beside_it() -> None:
    rng = np.random.default_rng(4)
    matrix = rng.normal(size=(500, 33)).astype(np.float32)
    vector = rng.normal(size=33).astype(np.float32)
    every = row_dot_products(matrix, vector, np.arange(500))
    alone = np.array([row_dot_products(matrix, vector, np.array([r]))[0] for r in range(500)], np.float32)
    assert np.array_equal(every, alone) and np.allclose(every, matrix @ vector, atol=1e-5)
    with pytest.raises(IndexError):
        row_dot_products(matrix, vector, np.array([3, 500]))


def test_a_filtered_search_through_an_ivf_index_returns_only_the_filters_rows(
        generated: dict[str, Any], tmp_path: Path) -> None:
    """The index plan over an IVF dense index, filtered, in every mode: every hit passes the filter, and most of
    the exact plan's hits are found (the IVF leg probes the lists holding allowed rows, indexer/ivf.py)."""
    encoder, items = generated["encoder"], generated["items"]
    reader = IndexReader(generated["root"] / "single", encoder=encoder)
    store = reader.stores["images"]
    config = IndexBuildConfig(checkpoint=reader.checkpoint_dir, output=tmp_path / "ivf", dataset=None, payload=SCHEMA,
                              faiss_factory="IVF8,Flat")
    publish_index(config, encoder, {"images": EncodedSide(items, EncodedItems(np.asarray(store.dense), store.sparse))},
                  {"name": "ivf", "source": "generated", "root": "."})
    reader.close()
    rng = np.random.default_rng(31)
    by_id = {item["id"]: item for item in items}
    overlaps = []
    engine = SearchEngine.open(tmp_path / "ivf", encoder=encoder)
    try:
        assert engine.manifest.sides["images"].faiss_factory == "IVF8,Flat"
        # each keyword field's (value, list) centroids, which order the lists a filter listed by it reads
        assert set(engine.reader._value_lists) == {("images", "color"), ("images", "tags")}
        for case in range(30):
            clause = random_filter(rng)
            query = random_query(rng, generated["dim"])
            params = PARAMS[case % len(PARAMS)].model_copy(update={"filter": Filter.model_validate(clause)})
            indexed = engine.search(query, params.model_copy(update={"plan": "index"}))
            exact = engine.search(query, params.model_copy(update={"plan": "exact"}))
            assert indexed.plan == "index" and all(passes(clause, by_id[hit.id]) for hit in indexed.hits)
            if exact.hits:
                overlaps.append(len({h.id for h in indexed.hits} & {h.id for h in exact.hits}) / len(exact.hits))
    finally:
        engine.close()
    assert overlaps and float(np.mean(overlaps)) >= 0.8
