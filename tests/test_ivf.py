"""The IVF dense index under a filter (indexer/ivf.py) and the automatic dense index of a large side."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from indexer.build import _build_faiss, dense_factory, ivf_lists
from indexer.filters import Allowed
from indexer.ivf import FilteredIvfLeg, IvfLists, ValueLists
from indexer.query import Query


def clustered(rng: np.random.Generator, rows: int, dim: int, clusters: int) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    cluster = rng.integers(0, clusters, rows)
    vectors = centres[cluster] + 0.35 * rng.normal(size=(rows, dim)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), cluster


def dense_query(vector: np.ndarray) -> Query:
    return Query(np.ascontiguousarray(vector, np.float32), np.zeros(0, np.int32), np.zeros(0, np.float32))


def exact_dense(vectors: np.ndarray):  # type: ignore[no-untyped-def]
    return lambda query, rows: (vectors[rows] @ query.dense).astype(np.float32)


def filtered_top(vectors: np.ndarray, query: np.ndarray, allowed: np.ndarray, k: int) -> set[int]:
    scores = np.where(allowed, vectors @ query, -np.inf)
    return set(np.argsort(-scores)[:k].tolist())


def test_an_automatic_index_is_flat_up_to_the_exact_plan_and_ivf_above() -> None:
    assert dense_factory("auto", 100_000) == "Flat"
    assert dense_factory("auto", 1_000_000) == "IVF4096,SQ8" and ivf_lists(250_000) == 2048
    assert dense_factory("HNSW32", 5) == "HNSW32"
    vectors, _ = clustered(np.random.default_rng(0), 3_000, 16, 8)
    index: Any = faiss.extract_index_ivf(_build_faiss(vectors, "IVF64,SQ8"))
    assert index.nprobe == 2 and index.ntotal == 3_000  # 1/32 of the lists, saved with the index


def ivf_list_ids(index: Any, n: int) -> np.ndarray:
    """The row ids FAISS holds in list n."""
    inner: Any = faiss.extract_index_ivf(index)
    size = inner.invlists.list_size(n)
    return faiss.rev_swig_ptr(inner.invlists.get_ids(n), size).copy() if size else np.zeros(0, np.int64)


def test_ivf_lists_hold_every_row_once() -> None:
    vectors, _ = clustered(np.random.default_rng(1), 4_000, 16, 10)
    index = _build_faiss(vectors, "IVF32,Flat")
    lists = IvfLists.of(index)
    assert lists is not None and lists.count == 32
    assert np.array_equal(np.sort(lists.rows), np.arange(4_000))
    for n in (0, 7, 31):
        assert np.array_equal(lists.rows[lists.offsets[n]:lists.offsets[n + 1]], ivf_list_ids(index, n))
    assert IvfLists.of(_build_faiss(vectors, "Flat")) is None


def test_a_filtered_ivf_search_finds_the_filters_rows_even_far_from_the_query() -> None:
    """A uniform 10% filter and one keeping only the cluster farthest from the query. The leg, asked for 100 rows as
    the hybrid search asks for its candidates, returns allowed rows only. Under the uniform filter it finds the
    filtered top 10. Under the far one a plain IVF search with the same selector, probing the lists nearest the
    query, finds almost none of it; the leg, probing the nearest lists that hold allowed rows, finds most (not all:
    the coarse order of one distant cluster's lists says little of which of its rows face the query)."""
    rng = np.random.default_rng(2)
    vectors, cluster = clustered(rng, 20_000, 24, 16)
    index = _build_faiss(vectors, "IVF64,Flat")
    lists = IvfLists.of(index)
    assert lists is not None
    ivf: Any = faiss.extract_index_ivf(index)
    centres = np.stack([vectors[cluster == c].mean(axis=0) for c in range(16)])
    found_far = plain_far = 0
    for _ in range(20):
        query = vectors[rng.integers(0, 20_000)]
        uniform = rng.random(20_000) < 0.1
        far = cluster == int(np.argmin(centres @ query))
        found = {}
        for name, allowed in (("uniform", uniform), ("far", far)):
            leg = FilteredIvfLeg(index, lists, Allowed(allowed), exact_dense(vectors))
            ranking = leg.search_batch([dense_query(query)], 100)[0]
            assert ranking.rows.size == 100 and allowed[ranking.rows].all()
            found[name] = len(set(ranking.rows[:10].tolist()) & filtered_top(vectors, query, allowed, 10))
        assert found["uniform"] >= 9
        found_far += found["far"]
        parameters = faiss.SearchParametersIVF(nprobe=ivf.nprobe,
                                               sel=faiss.IDSelectorBatch(np.flatnonzero(far).astype(np.int64)))
        _, rows = ivf.search(query[None, :], 10, params=parameters)
        plain_far += len(set(rows[0][rows[0] >= 0].tolist()) & filtered_top(vectors, query, far, 10))
    assert found_far >= 100 and plain_far <= 20


def test_allowed_rows_are_counted_and_gathered_per_list_including_empty_lists() -> None:
    rng = np.random.default_rng(3)
    sizes = np.array([3, 0, 0, 5, 1, 0, 7, 0])  # empty lists inside and at the end
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    rows = rng.permutation(int(sizes.sum())).astype(np.int64)
    list_of_row = np.empty(rows.size, np.int32)
    list_of_row[rows] = np.repeat(np.arange(sizes.size, dtype=np.int32), sizes)
    lists = IvfLists(offsets, rows, np.zeros((sizes.size, 4), np.float32))
    for _ in range(20):
        allowed = rng.random(rows.size) < 0.5
        expected = np.bincount(list_of_row[np.flatnonzero(allowed)], minlength=sizes.size)
        some = rng.integers(0, sizes.size, 6)
        assert np.array_equal(lists.allowed_in(some, allowed), expected[some])
        order = rng.permutation(sizes.size)
        gathered, end = lists.allowed_rows(order, allowed, target=rows.size)  # every list read: each allowed row once
        assert np.array_equal(np.sort(gathered), np.flatnonzero(allowed)) and end == sizes.size
        first, stop = lists.allowed_rows(order, allowed, target=1)  # stops once it has some (a chunk of lists) ...
        rest, end = lists.allowed_rows(order, allowed, target=rows.size, start=stop)  # ... and goes on from there
        assert first.size >= 1 or not allowed.any()
        assert np.array_equal(np.concatenate([first, rest]), gathered) and end == sizes.size
        listed = np.flatnonzero(allowed)  # the same from the allowed rows themselves, not the lists
        places = lists.places(order, listed)
        assert np.array_equal(order[places], list_of_row[listed])
        for target, start in ((rows.size, 0), (1, 0), (rows.size, stop), (2, 3), (1, sizes.size)):
            expected_rows, expected_stop = lists.allowed_rows(order, allowed, target, start)
            found, found_stop = lists.listed_rows(listed, places, target, start)
            assert np.array_equal(np.sort(expected_rows), found) and found_stop == expected_stop


def test_a_filter_spread_near_the_query_probes_the_lists_an_unfiltered_search_does() -> None:
    """A uniform filter's rows lie near the query as elsewhere: the leg searches the ``nprobe`` nearest lists, as an
    unfiltered search. A filter keeping one cluster far from the query does not: its rows are gathered from the
    nearest lists holding them and scored exactly, so the scores are the exact ones."""
    rng = np.random.default_rng(5)
    vectors, cluster = clustered(rng, 20_000, 24, 16)
    index = _build_faiss(vectors, "IVF64,Flat")
    lists = IvfLists.of(index)
    assert lists is not None
    nprobe = int(faiss.extract_index_ivf(index).nprobe)
    centres = np.stack([vectors[cluster == c].mean(axis=0) for c in range(16)])
    for _ in range(10):
        query = vectors[rng.integers(0, 20_000)]
        coarse = lists.centroids @ query
        nearest = np.argsort(-coarse, kind="stable")[:nprobe]
        uniform = rng.random(20_000) < 0.3
        leg = FilteredIvfLeg(index, lists, Allowed(uniform), exact_dense(vectors))
        near = leg.near_lists(coarse, 10)
        assert near is not None and np.array_equal(near, nearest)
        far = cluster == int(np.argmin(centres @ query))
        leg = FilteredIvfLeg(index, lists, Allowed(far), exact_dense(vectors))
        assert leg.near_lists(coarse, 10) is None
        ranking = leg.search_batch([dense_query(query)], 10)[0]
        assert far[ranking.rows].all() and np.allclose(ranking.scores, vectors[ranking.rows] @ query, atol=1e-6)
        assert (np.diff(ranking.scores) <= 0).all()


def test_a_deeper_ask_of_the_same_query_goes_on_from_the_rows_already_scored() -> None:
    """A dense-first search asks the leg again, deeper, for a query the bound did not settle: the gathering path
    answers as a fresh leg asked at that depth would, scoring only rows it had not scored before."""
    rng = np.random.default_rng(6)
    vectors, cluster = clustered(rng, 20_000, 24, 16)
    index = _build_faiss(vectors, "IVF64,Flat")
    lists = IvfLists.of(index)
    assert lists is not None
    centres = np.stack([vectors[cluster == c].mean(axis=0) for c in range(16)])
    query = vectors[rng.integers(0, 20_000)]
    far = cluster == int(np.argmin(centres @ query))
    scored: list[int] = []

    def counting(query: Query, rows: np.ndarray) -> np.ndarray:
        scored.extend(rows.tolist())
        return exact_dense(vectors)(query, rows)

    leg = FilteredIvfLeg(index, lists, Allowed(far), counting)
    asked = dense_query(query)
    for depth in (10, 100, 400):
        ranking = leg.search_batch([asked], depth)[0]
        fresh = FilteredIvfLeg(index, lists, Allowed(far), exact_dense(vectors))
        expected = fresh.search_batch([dense_query(query)], depth)[0]
        assert np.array_equal(ranking.rows, expected.rows) and np.array_equal(ranking.scores, expected.scores)
    assert len(scored) == len(set(scored))  # no row scored twice
    listed = FilteredIvfLeg(index, lists, Allowed(far, np.flatnonzero(far)), exact_dense(vectors))
    unlisted = FilteredIvfLeg(index, lists, Allowed(far), exact_dense(vectors))
    for depth in (10, 100, 400, 3_000):  # allowed rows listed: the same rows gathered, so the same answers
        got, expected = listed.search_batch([asked], depth)[0], unlisted.search_batch([asked], depth)[0]
        assert np.array_equal(got.rows, expected.rows) and np.array_equal(got.scores, expected.scores)
    other = dense_query(vectors[rng.integers(0, 20_000)])  # another query starts its own gathering
    assert np.array_equal(leg.search_batch([other], 10)[0].rows,
                          FilteredIvfLeg(index, lists, Allowed(far),
                                         exact_dense(vectors)).search_batch([other], 10)[0].rows)


def test_value_lists_hold_each_values_centroid_per_list() -> None:
    """A keyword field's (value, list) centroids are the means of the rows holding the value in the list, for a
    single keyword and for lists of keywords; a list holding none of the values scores -inf; a field with more pairs
    than the budget keeps none."""
    rng = np.random.default_rng(8)
    vectors, cluster = clustered(rng, 3_000, 16, 6)
    lists = IvfLists.of(_build_faiss(vectors, "IVF16,Flat"))
    assert lists is not None
    code_rows = np.concatenate([np.arange(3_000), np.arange(0, 3_000, 3)])  # every third row holds a second value
    codes = np.concatenate([cluster, (cluster[::3] + 1) % 6]).astype(np.int32)
    values = ValueLists.of(lists, code_rows, codes, vectors)
    assert values is not None
    query = vectors[5]
    for wanted in ([2], [0, 4]):
        expected = np.full(lists.count, -np.inf, np.float32)
        for code in wanted:
            for n in range(lists.count):
                members = code_rows[(codes == code) & (lists.list_of_row[code_rows] == n)]
                if members.size:
                    expected[n] = max(expected[n], float(vectors[members].mean(axis=0) @ query))
        got = values.scores(np.array(wanted), query)
        assert np.array_equal(np.isinf(got), np.isinf(expected))
        assert np.allclose(got[~np.isinf(got)], expected[~np.isinf(expected)], atol=1e-5)
    unique = np.arange(3_000, dtype=np.int32)  # a value per row: 3,000 pairs over 16 lists, past the budget
    assert ValueLists.of(lists, np.arange(3_000), unique, vectors) is None


def test_lists_read_by_the_filters_value_centroids_find_more_of_its_top() -> None:
    """Regions cut through the lists (each row's region: the nearest of 16 anchors, as the benchmark's), and a filter
    keeps the region farthest from the query, its rows listed by the region's value: reading the lists in the order
    of the region's centroid in each finds more of the filtered top 10 than the lists' own centroids do."""
    rng = np.random.default_rng(9)
    vectors, _ = clustered(rng, 30_000, 16, 300)
    anchors = vectors[rng.choice(30_000, 16, replace=False)]
    region = np.argmax(vectors @ anchors.T, axis=1).astype(np.int32)
    index = _build_faiss(vectors, "IVF128,Flat")
    lists = IvfLists.of(index)
    assert lists is not None
    values = ValueLists.of(lists, np.arange(30_000), region, vectors)
    assert values is not None
    found = {"lists": 0, "values": 0}
    for _ in range(30):
        query = vectors[rng.integers(0, 30_000)]
        code = np.array([int(np.argmin(anchors @ query))])
        far = region == code[0]
        truth = filtered_top(vectors, query, far, 10)
        for name, scores in (("lists", None), ("values", lambda vector, code=code: values.scores(code, vector))):
            leg = FilteredIvfLeg(index, lists, Allowed(far, np.flatnonzero(far)), exact_dense(vectors),
                                 list_scores=scores)
            ranking = leg.search_batch([dense_query(query)], 100)[0]
            assert far[ranking.rows].all()
            found[name] += len(set(ranking.rows[:10].tolist()) & truth)
    assert found["values"] > found["lists"]
