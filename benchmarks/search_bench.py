"""Quality, latency and size of a real index, measured through the shared search path (indexer/search.py).

Quality: text->image and image->text R@1/5/10 for dense, sparse (Lucene) and hybrid, plus exact float sparse
scoring over the whole side as the reference line for Lucene's impact ranking. Queries are the items of the other
side of the same index: their stored vectors are exactly what the checkpoint's encoder gives for those captions and
images (the index stores them), so the whole index and search path is exercised without re-encoding 6,000 inputs.
Latency: one query at a time on one thread, per mode, search only and with text encoding.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from benchmarks.recall import KS
from benchmarks.stats import percentiles
from core.metrics import success_of_lists
from indexer.params import DEFAULT_CANDIDATE_K, MODES, SearchParams
from indexer.query import Query
from indexer.search import SearchEngine
from indexer.searchers import ExactScores, Ranking
from indexer.store import SideStore


def stored_queries(store: SideStore) -> list[Query]:
    queries = []
    for row in range(len(store.ids)):
        ids, values = store.sparse.row(row)
        queries.append(Query(np.asarray(store.dense[row], np.float32), ids, values))
    return queries


def relevance(engine: SearchEngine) -> tuple[list[set[int]], list[set[int]]]:
    """Relevant target rows per query: t2i (caption -> its image), i2t (image -> its captions)."""
    images, texts = engine.reader.stores["images"], engine.reader.stores["texts"]
    t2i = [{images.row_of[item["image_id"]]} for item in texts.items]
    i2t: list[set[int]] = [set() for _ in images.ids]
    for row, item in enumerate(texts.items):
        i2t[images.row_of[item["image_id"]]].add(row)
    return t2i, i2t


def quality(engine: SearchEngine, *, threads: int = 2, candidate_k: int = DEFAULT_CANDIDATE_K) -> dict[str, Any]:
    t2i_rel, i2t_rel = relevance(engine)
    out: dict[str, Any] = {}
    for direction, query_side, target_side, relevant in (("t2i", "texts", "images", t2i_rel),
                                                         ("i2t", "images", "texts", i2t_rel)):
        queries = stored_queries(engine.reader.stores[query_side])
        target = engine.reader.stores[target_side]
        rows = np.arange(len(target.ids))
        exact_scores = ExactScores(target, engine.reader.vocab_size)
        result: dict[str, Any] = {}
        for mode in MODES:
            params = SearchParams(side=target_side, mode=mode, top_k=10, candidate_k=candidate_k)
            found = engine.reader.searcher(params, threads=threads).search_batch(queries, params.top_k)
            result[mode] = success_of_lists(found, relevant)
        exact = [Ranking(rows, exact_scores.sparse(query, rows)) for query in queries]  # every item, scored
        result["sparse_exact"] = success_of_lists(exact, relevant)
        result["lucene_minus_exact_R@10"] = result["sparse"]["R@10"] - result["sparse_exact"]["R@10"]
        out[direction] = result
    for mode in (*MODES, "sparse_exact"):
        out.setdefault("rsum", {})[mode] = sum(out[d][mode][f"R@{k}"] for d in ("t2i", "i2t") for k in KS)
    return out


def time_calls(call: Callable[[Any], object], inputs: Sequence[Any], *, warmup: int = 5) -> dict[str, float]:
    for item in inputs[:warmup]:
        call(item)
    samples = []
    for item in inputs:
        started = time.perf_counter()
        call(item)
        samples.append((time.perf_counter() - started) * 1000)
    return percentiles(samples)


def single_thread() -> None:
    """One thread for torch and FAISS (Lucene searches on the calling thread already)."""
    import faiss

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


# Configurations timed: each mode with its defaults, plus the other query-term setting of the Lucene leg.
LATENCY_CONFIGS = {
    "dense": {"mode": "dense"},
    "sparse": {"mode": "sparse"},  # all query terms: Lucene's ranking is the sparse ranking
    "sparse_q32": {"mode": "sparse", "sparse_query_terms": 32},  # 32 terms to Lucene, exact rescoring of 100
    "hybrid": {"mode": "hybrid"},  # default: 32 query terms to Lucene
    "hybrid_all_terms": {"mode": "hybrid", "sparse_query_terms": 0},
}


def latency(engine: SearchEngine, *, queries: int = 200, side: str = "images", candidate_k: int = DEFAULT_CANDIDATE_K,
            texts: Sequence[str] | None = None) -> dict[str, Any]:
    """p50/p95/p99 per configuration, one query at a time: search only (stored query vectors), and from text."""
    query_side = "texts" if side == "images" else "images"
    store = engine.reader.stores[query_side]
    step = max(1, len(store.ids) // queries)
    sample = stored_queries(store)[::step][:queries]
    out: dict[str, Any] = {"queries": len(sample), "side": side, "search_only": {}, "with_text_encoding": {}}
    for name, config in LATENCY_CONFIGS.items():
        params = SearchParams(side=side, top_k=10, candidate_k=candidate_k, **config)
        out["search_only"][name] = time_calls(lambda q, p=params: engine.search(q, p), sample)
    if texts:
        out["encode_text"] = time_calls(engine.encode_text, list(texts)[:queries])
        # the sparse leg alone: tokens -> learned weights for an inference-free model (no text tower forward)
        out["encode_text_sparse"] = time_calls(lambda t: engine.encoder.encode_text_terms([t]), list(texts)[:queries])
        out["inference_free"] = engine.encoder.inference_free
        for mode in MODES:
            params = SearchParams(side=side, mode=mode, top_k=10, candidate_k=candidate_k)
            out["with_text_encoding"][mode] = time_calls(
                lambda t, p=params: engine.search(engine.encode_text(t), p), list(texts)[:queries])
    return out


def sizes(engine: SearchEngine) -> dict[str, Any]:
    out = {}
    for side, manifest in engine.manifest.sides.items():
        per_item = {k: v / max(1, manifest.count) for k, v in manifest.bytes.items()}
        out[side] = {"count": manifest.count, "mean_terms": manifest.mean_terms, "bytes_per_item": per_item,
                     "lucene_vs_faiss": manifest.bytes["sparse_lucene"] / manifest.bytes["dense_faiss"]}
    return out
