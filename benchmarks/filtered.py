"""Filtered search at scale: the planner's choice against exact brute force and milvus-lite, side by side in one run.

A synthetic corpus shaped like a real index's images (benchmarks/synthetic.py) gets two payload fields:
  bucket   an integer drawn uniformly from 0..9,999, independent of the vectors: ``bucket < s * 10,000`` keeps a
           share s of the items (0.1%, 1%, 10%, 50%, 100%);
  region   the nearest of 16 centroids (real image vectors) of the item's dense vector: a query filtered to the
           region whose centroid is least like it keeps about 1/16 of the items, all far from the query, the case
           that breaks a graph index (its neighbourhood of the query holds none of them).
Each filter is searched one query at a time on one thread, hybrid top 10, by the planner (``auto``), by the exact
plan (brute force over the allowed rows: the reference every overlap@10 is taken against) and by milvus-lite
(FLAT dense and inverted-index sparse with the same expression). The unfiltered search is measured the same way.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from benchmarks.machine import machine
from benchmarks.peers import MilvusLiteEngine, MilvusLiteStore, PeerUnavailableError, Scoring, Vectors
from benchmarks.scale import caption_queries
from benchmarks.search_bench import single_thread
from benchmarks.stats import percentiles
from benchmarks.synthetic import CorpusStatistics, generate
from indexer.build import IndexBuildConfig, publish_index
from indexer.filters import Filter
from indexer.params import SearchParams
from indexer.query import Query
from indexer.search import SearchEngine, SearchResult
from indexer.store import IndexUnavailableError, read_manifest

BUCKETS = 10_000
PAYLOAD = {"bucket": "integer", "region": "keyword"}
REGIONS = 16
SELECTIVITIES = (0.001, 0.01, 0.1, 0.5, 1.0)
K = 10


class FilteredOptions(BaseModel):
    """``filtered``: filtered and unfiltered hybrid search on a synthetic corpus with payload fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: Path = Field(description="real index: statistics of its images side, its captions as queries")
    items: int = Field(100_000, gt=0, description="synthetic images generated and indexed")
    queries: int = Field(50, gt=0, description="queries timed per filter")
    work: Path = Field(Path("artifacts/filtered"), description="where the synthetic index is built")
    out: Path = Field(Path("docs/benchmarks/filtered"), description="where report.json and README.md are written")
    milvus: bool = Field(True, description="measure milvus-lite on the same data beside Duet")
    keep: bool = Field(False, description="keep the synthetic index")
    reuse: bool = Field(False, description="search the synthetic index a run with --keep left (the same items, "
                        "generated again from the same seed) instead of building it again")


def payload_fields(dense: np.ndarray, centroids: np.ndarray, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    region = np.concatenate([np.argmax(dense[start:start + 65_536] @ centroids.T, axis=1)
                             for start in range(0, dense.shape[0], 65_536)])
    bucket = np.asarray(rng.integers(0, BUCKETS, dense.shape[0]), np.int64)
    return {"bucket": bucket,
            "region": np.array([f"r{r:02d}" for r in region])}


def reusable(out: Path, items: int) -> bool:
    """Whether ``out`` holds a synthetic index of ``items`` items with this benchmark's payload fields."""
    try:
        manifest = read_manifest(out)
    except (IndexUnavailableError, OSError, ValueError):
        return False
    return manifest.sides["images"].count == items and manifest.payload == PAYLOAD


def bucket_filter(share: float) -> dict[str, Any]:
    return {"must": [{"key": "bucket", "range": {"lt": round(share * BUCKETS)}}]}


def far_region(query: Query, centroids: np.ndarray) -> str:
    return f"r{int(np.argmin(centroids @ query.dense)):02d}"


def overlap(found: Sequence[str], exact: Sequence[str]) -> float:
    """Share of the exact top k found (1.0 when the exact answer is empty and so is the found one)."""
    return len(set(found) & set(exact)) / len(exact) if exact else float(not found)


def _timed(call: Callable[[], SearchResult]) -> tuple[float, SearchResult]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000, result


def measure_duet(engine: SearchEngine, queries: Sequence[Query],
                 filters: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """The planner and the exact plan on each query with its filter: p50s, overlap@10 of the planner's answer
    with the exact one, the plans chosen, and the exact answers (for the peers)."""
    auto_ms: list[float] = []
    exact_ms: list[float] = []
    overlaps: list[float] = []
    rows: list[int] = []
    plans: dict[str, int] = {}
    exact_ids: list[list[str]] = []
    for query, clause in zip(queries, filters, strict=True):
        base = SearchParams(top_k=K, filter=Filter.model_validate(clause) if clause else None)
        engine.search(query, base)  # warm: the first search of a filter pays for nothing the others do not
        exact_params = base.model_copy(update={"plan": "exact"})
        spent, planned = _timed(lambda: engine.search(query, base))  # noqa: B023 (called at once)
        exact_spent, exact = _timed(lambda: engine.search(query, exact_params))  # noqa: B023
        auto_ms.append(spent)
        exact_ms.append(exact_spent)
        ids = [h.id for h in exact.hits]
        exact_ids.append(ids)
        overlaps.append(overlap([h.id for h in planned.hits], ids))
        plans[planned.plan] = plans.get(planned.plan, 0) + 1
        rows.append(planned.rows)
    return {"auto_ms": percentiles(auto_ms), "exact_ms": percentiles(exact_ms),
            "overlap_at_10": float(np.mean(overlaps)), "plans": plans, "allowed_rows_median": float(np.median(rows)),
            "exact_ids": exact_ids}


def measure_brute_force(engine: SearchEngine, fields: dict[str, np.ndarray], queries: Sequence[Query],
                        filters: Sequence[dict[str, Any] | None], exact_ids: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Plain exact brute force with numpy and scipy on the same stores: the filter evaluated on the field arrays,
    every allowed row's dense (a BLAS product) and sparse (a CSR product) scores, fused by the checkpoint's
    weights, the top k taken."""
    store = engine.reader.stores["images"]
    dense, matrix = np.asarray(store.dense), store.sparse.matrix
    w_dense, w_sparse = engine.default_weights()
    temperature = engine.manifest.temperature
    spent, overlaps = [], []
    for query, clause, ids in zip(queries, filters, exact_ids, strict=True):
        started = time.perf_counter()
        if clause is None:
            rows = np.arange(dense.shape[0])
        else:
            condition = clause["must"][0]
            rows = np.flatnonzero(fields["bucket"] < condition["range"]["lt"] if "range" in condition
                                  else fields["region"] == condition["match"]["value"])
        query_vector = np.zeros(matrix.shape[1], np.float64)
        known = query.term_ids < matrix.shape[1]
        query_vector[query.term_ids[known]] = query.term_weights[known]
        selected = matrix if rows.size == dense.shape[0] else matrix[rows]
        fused = w_dense * (dense[rows] @ query.dense) / temperature + w_sparse * (selected @ query_vector)
        top = np.argpartition(-fused, min(K, fused.size - 1))[:K] if fused.size > K else np.arange(fused.size)
        found = rows[top[np.argsort(-fused[top])]]
        spent.append((time.perf_counter() - started) * 1000)
        overlaps.append(overlap([store.ids[r] for r in found.tolist()], ids))
    return {"ms": percentiles(spent), "overlap_at_10": float(np.mean(overlaps))}


def milvus_expression(clause: dict[str, Any] | None) -> str:
    if not clause:
        return ""
    condition = clause["must"][0]
    if "range" in condition:
        return f"{condition['key']} < {condition['range']['lt']}"
    return f'{condition["key"]} == "{condition["match"]["value"]}"'


def measure_milvus(store: MilvusLiteStore, scoring: Scoring, queries: Sequence[Query],
                   filters: Sequence[dict[str, Any] | None], exact_ids: Sequence[Sequence[str]]) -> dict[str, Any]:
    spent, overlaps = [], []
    for query, clause, ids in zip(queries, filters, exact_ids, strict=True):
        engine = MilvusLiteEngine(store, "hybrid", scoring, filter_expression=milvus_expression(clause))
        engine.search_batch([query], K)
        started = time.perf_counter()
        ranking = engine.search_batch([query], K)[0]
        spent.append((time.perf_counter() - started) * 1000)
        overlaps.append(overlap([f"s{r}" for r in ranking.rows.tolist()], ids))
    return {"ms": percentiles(spent), "overlap_at_10": float(np.mean(overlaps))}


def run_filtered(options: FilteredOptions) -> dict[str, Any]:
    real = SearchEngine.open(options.index)
    stats = CorpusStatistics.of(real.reader.stores["images"])
    queries = caption_queries(real, options.queries)
    encoded = generate(stats, options.items)
    centroids = np.asarray(real.reader.stores["images"].dense[:: max(1, len(real.reader.stores["images"].ids)
                                                                   // REGIONS)][:REGIONS], np.float32)
    fields = payload_fields(encoded.dense, centroids)
    items = [{"id": f"s{i}", "bucket": int(b), "region": str(r)}
             for i, (b, r) in enumerate(zip(fields["bucket"], fields["region"], strict=True))]
    out = options.work / f"filtered-{options.items}"
    build_seconds: float | None = None
    if options.reuse and reusable(out, options.items):
        manifest = read_manifest(out)
    else:
        shutil.rmtree(out, ignore_errors=True)
        config = IndexBuildConfig(checkpoint=real.reader.checkpoint_dir, output=out, dataset=None,
                                  sparse_scale=float(real.manifest.quantization["scale"]), payload=PAYLOAD)
        started = time.perf_counter()
        manifest = publish_index(config, real.encoder, {"images": (items, encoded)},
                                 {"name": out.name, "source": "synthetic", "root": tempfile.gettempdir(), "splits": []})
        build_seconds = time.perf_counter() - started
    vectors = Vectors(np.asarray(encoded.dense), encoded.sparse)
    del items
    gc.collect()
    single_thread()
    engine = SearchEngine.open(out, encoder=real.encoder, sides=("images",))
    cases: dict[str, list[dict[str, Any] | None]] = {"unfiltered": [None] * len(queries)}
    for share in SELECTIVITIES:
        cases[f"{share:.1%}"] = [bucket_filter(share)] * len(queries)
    cases["far region (~6%)"] = [{"must": [{"key": "region", "match": {"value": far_region(q, centroids)}}]}
                                 for q in queries]
    report: dict[str, Any] = {
        "items": options.items, "queries": len(queries), "machine": machine(), "build_seconds": build_seconds,
        "faiss_factory": manifest.sides["images"].faiss_factory,
        "payload_bytes_per_item": manifest.sides["images"].bytes["payload"] / options.items,
        "payload_build_seconds": manifest.build["timings"].get("images_payload_seconds"),
        "cases": {}}
    try:
        for name, filters in cases.items():
            report["cases"][name] = measure_duet(engine, queries, filters)
            report["cases"][name]["brute_force"] = measure_brute_force(engine, fields, queries, filters,
                                                                       report["cases"][name]["exact_ids"])
        if options.milvus:
            try:
                store = MilvusLiteStore(vectors, options.work, fields=fields)
            except PeerUnavailableError as e:
                report["milvus_unavailable"] = str(e)
            else:
                report["milvus_build_seconds"] = store.build_seconds
                try:
                    scoring = Scoring.of(engine)
                    for name, filters in cases.items():
                        report["cases"][name]["milvus"] = measure_milvus(
                            store, scoring, queries, filters, report["cases"][name]["exact_ids"])
                finally:
                    store.close()
    finally:
        engine.close()
        real.close()
        if not options.keep:
            shutil.rmtree(out, ignore_errors=True)
    for case in report["cases"].values():
        del case["exact_ids"]
    return report


def render(report: dict[str, Any]) -> str:
    unfiltered = report["cases"]["unfiltered"]["auto_ms"]["p50"]
    lines = [f"# Filtered search: {report['items']:,} synthetic items", "",
             f"Generated by `{report.get('command', 'python -m benchmarks filtered')}` ({report['queries']} real "
             "caption queries per filter, "
             f"one at a time, one thread, hybrid top {K}); every number is in `report.json`.", "",
             f"- machine: {report['machine'].get('cpu', '')}, {report['machine'].get('cpus', '')} CPUs",
             f"- dense index: {report['faiss_factory']}; "
             + (f"build {report['build_seconds']:.0f} s" if report["build_seconds"] is not None
                else "index built by an earlier run (`--keep`) and searched again (`--reuse`)")
             + f"; payload index {report['payload_bytes_per_item']:.1f} B/item, built in "
             f"{report['payload_build_seconds'] or 0:.2f} s",
             "", "| filter | allowed rows (median) | plans | Duet p50 ms | overlap@10 | p50 / unfiltered | Duet p99 ms "
             "| Duet exact plan p50 ms | brute force p50 ms | milvus-lite p50 ms | milvus-lite overlap@10 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, case in report["cases"].items():
        milvus = case.get("milvus")
        plans = ", ".join(f"{plan} {count}" for plan, count in sorted(case["plans"].items()))
        lines.append(f"| {name} | {case['allowed_rows_median']:,.0f} | {plans} | {case['auto_ms']['p50']:.2f} | "
                     f"{100 * case['overlap_at_10']:.1f}% | {case['auto_ms']['p50'] / unfiltered:.2f}x | "
                     f"{case['auto_ms']['p99']:.2f} | {case['exact_ms']['p50']:.2f} | "
                     f"{case['brute_force']['ms']['p50']:.2f} | "
                     + (f"{milvus['ms']['p50']:.2f} | {100 * milvus['overlap_at_10']:.1f}% |" if milvus else "- | - |"))
    lines += ["", "Overlap@10 is against the exact plan's answer: every allowed row scored densely, and sparsely "
              "wherever the bound cannot settle the top 10 from the dense top (indexer/dense_first.py), fused by the "
              "checkpoint's weights; the brute force (numpy and scipy: every allowed row scored on both legs, "
              f"fused, top {K}) finds the same rows (its overlap: "
              + ", ".join(f"{100 * c['brute_force']['overlap_at_10']:.1f}%" for c in report["cases"].values())
              + "). milvus-lite fuses by its own weighted sum of raw scores, so its overlap also measures that "
              "difference in ranking rule."]
    if "milvus_unavailable" in report:
        lines += ["", f"milvus-lite: {report['milvus_unavailable']}"]
    return "\n".join(lines) + "\n"
