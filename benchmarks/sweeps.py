"""Quality sweeps through the real index path: the dense/sparse weight of hybrid search, and term pruning.

Weight sweep: hybrid search (both legs' candidates, exact rescoring) with w_dense = a, w_sparse = 1 - a over a grid;
a = 0 ranks the union of candidates by the sparse score alone, a = 1 by the dense score alone.
Pruning: indexes rebuilt (from the feature cache) with every item's and caption's sparse vector cut to its top-k
terms, searched through Lucene; exact float scoring of the same pruned vectors is the reference line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.recall import KS, rsum
from benchmarks.search_bench import quality, relevance, stored_queries
from core.metrics import success_of_lists
from core.progress import progress
from indexer.build import IndexBuildConfig, build_index, verify_index
from indexer.params import DEFAULT_CANDIDATE_K, SearchParams
from indexer.search import SearchEngine
from indexer.store import IndexUnavailableError

_logger = logging.getLogger("benchmarks.sweeps")


def weight_sweep(engine: SearchEngine, grid: Sequence[float], *, candidate_k: int = DEFAULT_CANDIDATE_K,
                 threads: int = 2) -> list[dict[str, Any]]:
    t2i_rel, i2t_rel = relevance(engine)
    directions = (("t2i", "texts", "images", t2i_rel), ("i2t", "images", "texts", i2t_rel))
    queries = {name: stored_queries(engine.reader.stores[query_side]) for name, query_side, _, _ in directions}
    default = engine.manifest.fusion_dense_weight / (engine.manifest.fusion_dense_weight
                                                      + engine.manifest.fusion_sparse_weight)
    points = []
    for a in progress(sorted({*grid, round(default, 6)}), desc="weight sweep", unit="point"):
        point: dict[str, Any] = {"w_dense": a, "w_sparse": 1 - a, "default": abs(a - default) < 1e-6}
        for name, _, target_side, relevant in directions:
            params = SearchParams(side=target_side, mode="hybrid", top_k=max(KS), candidate_k=candidate_k,
                                  w_dense=a, w_sparse=1 - a)
            found = engine.reader.searcher(params, threads=threads).search_batch(queries[name], params.top_k)
            point[name] = success_of_lists(found, relevant)
        point["rsum"] = rsum(point["t2i"], point["i2t"])
        points.append(point)
    return points


def pruned_index(base_config: IndexBuildConfig, terms: int, work: Path) -> Path:
    """An index of the same split with both sides pruned to ``terms`` terms; reused when already built."""
    out = work / f"index-prune{terms}"
    try:
        verify_index(out, checkpoint=base_config.checkpoint)
        _logger.info("reusing %s", out)
        return out
    except IndexUnavailableError:
        pass
    config = base_config.model_copy(update={"output": out, "prune_image_terms": terms, "prune_text_terms": terms})
    build_index(config)
    return out


def pruning_sweep(engine: SearchEngine, base_config: IndexBuildConfig, terms: Sequence[int], work: Path, *,
                  candidate_k: int = DEFAULT_CANDIDATE_K, threads: int = 2) -> list[dict[str, Any]]:
    """Recall vs active terms: one pruned index per k, plus the unpruned index as the last point."""
    points = []
    for k in terms:
        index = pruned_index(base_config, k, work)
        pruned = SearchEngine.open(index, encoder=engine.encoder)
        try:
            points.append(_pruning_point(pruned, k, candidate_k, threads))
        finally:
            pruned.close()
    points.append(_pruning_point(engine, None, candidate_k, threads))
    return points


def _pruning_point(engine: SearchEngine, k: int | None, candidate_k: int, threads: int) -> dict[str, Any]:
    q = quality(engine, threads=threads, candidate_k=candidate_k)
    sides = engine.manifest.sides
    return {"terms": k, "mean_terms": {side: float(np.round(s.mean_terms, 2)) for side, s in sides.items()},
            "lucene_bytes_per_item": {side: s.bytes["sparse_lucene"] / max(1, s.count) for side, s in sides.items()},
            "quality": q}
