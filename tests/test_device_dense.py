"""The exact dense leg on a device (indexer/device_dense.py), run here on the CPU through torch: the same code a
CUDA device runs, only the tensors' device differs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexer.device_dense import COPY_ROWS, DeviceDenseLeg, DeviceMatrix
from indexer.filters import Filter
from indexer.index_reader import IndexReader
from indexer.params import SearchParams
from indexer.query import Query
from indexer.search import SearchEngine


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def dense_query(vector: np.ndarray) -> Query:
    return Query(np.ascontiguousarray(vector, np.float32), np.zeros(0, np.int32), np.zeros(0, np.float32))


def test_the_device_leg_is_the_exact_top_k_of_the_allowed_rows() -> None:
    rng = np.random.default_rng(0)
    vectors = unit_rows(rng, COPY_ROWS + 1_000, 16)  # more rows than one copy to the device
    matrix = DeviceMatrix(vectors, "cpu")
    assert np.array_equal(matrix.vectors.numpy(), vectors)
    allowed = rng.random(vectors.shape[0]) < 0.05
    queries = [dense_query(v) for v in unit_rows(rng, 4, 16)]
    for mask in (None, allowed):
        rankings = DeviceDenseLeg(matrix, mask).search_batch(queries, 10)
        for query, ranking in zip(queries, rankings, strict=True):
            scores = vectors @ query.dense
            if mask is not None:
                scores = np.where(mask, scores, -np.inf)
            expected = np.argsort(-scores, kind="stable")[:10]
            assert np.array_equal(ranking.rows, expected)
            np.testing.assert_allclose(ranking.scores, scores[expected], rtol=1e-5, atol=1e-6)
    few = np.zeros(vectors.shape[0], bool)
    few[[5, 77, 1_000]] = True  # fewer allowed rows than asked for: those, never a masked one
    (ranking,) = DeviceDenseLeg(matrix, few).search_batch(queries[:1], 10)
    assert sorted(ranking.rows.tolist()) == [5, 77, 1_000]
    assert DeviceDenseLeg(matrix, np.zeros(vectors.shape[0], bool)).search_batch(queries[:1], 10)[0].rows.size == 0


def test_a_reader_with_a_dense_device_answers_as_the_exact_flat_index_does(tiny_index: Path) -> None:
    """The tiny index's FAISS index is flat (exact): the device leg must give the same hits and scores, unfiltered,
    filtered through the index plan, and with deleted rows skipped."""
    flat = SearchEngine.open(tiny_index)
    device = SearchEngine.over(IndexReader(tiny_index, encoder=flat.encoder, dense_device="cpu"), owned=True)
    try:
        assert device.reader.dense_device == "cpu" and flat.reader.dense_device is None
        ids = list(flat.reader.stores["images"].ids)
        encoded = flat.encoder.encode_texts(["a dog running", "two people on a red boat", "a child"])
        queries = [Query.from_encoded(encoded, n) for n in range(3)]
        allowed = ids[::3]
        for params in (SearchParams(mode="dense", top_k=8), SearchParams(mode="hybrid", top_k=8),
                       SearchParams(mode="hybrid", top_k=5, plan="index",
                                    filter=Filter.model_validate({"must": [{"has_id": allowed}]}))):
            for query in queries:
                want, got = flat.search(query, params), device.search(query, params)
                assert [h.id for h in got.hits] == [h.id for h in want.hits]
                # every candidate is rescored from the forward store: the same scores to the bit
                assert [(h.dense, h.sparse, h.fused) for h in got.hits] == [(h.dense, h.sparse, h.fused)
                                                                            for h in want.hits]
                if params.filter is not None:
                    assert got.plan == "index" and {h.id for h in got.hits} <= set(allowed)
        deleted = np.arange(0, len(ids), 2)  # every other row deleted: the leg skips them
        leg = device.reader.dense_leg("images", excluded=deleted)
        assert isinstance(leg, DeviceDenseLeg)
        assert leg is device.reader.dense_leg("images", excluded=deleted)  # one mask per deletes snapshot
        (ranking,) = leg.search_batch(queries[:1], 6)
        assert ranking.rows.size == 6 and not np.isin(ranking.rows, deleted).any()
    finally:
        device.close()
        flat.close()
