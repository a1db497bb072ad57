"""``python -m benchmarks run``: the whole report for one Karpathy dataset split and one checkpoint.

Steps, each through the real index and search path:
  1. index: build the split's index with the checkpoint (or reuse a verified one; a given --index must be bound
     to the checkpoint, else IndexMismatchError names both);
  2. quality: t2i and i2t R@1/5/10 and RSUM for dense, sparse (Lucene), hybrid, and exact sparse scoring;
     readability: GP@k, grounded mass, junk rate and hubs of the indexed image vectors, the frequency floor, and
     whether captions' terms are their own words;
  3. the dense/sparse weight sweep and recall versus active terms (pruned indexes);
  4. efficiency: one-thread latency per mode (search only and with text encoding), batched queries per second,
     bytes per item, build time and rate, image and text encoding throughput;
  5. peers on the same vectors (t2i): exact brute force, FAISS HNSW, milvus-lite, Seismic;
  6. scale: synthetic corpora (default 10k and 100k items), every mode and peer;
  7. knobs: at chosen sizes (default 100k), each approximate engine's search-time knob against overlap@10.
The report is JSON (every number plus the machine), Markdown and PNG plots, written atomically into --out.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from benchmarks.compare import PEERS, set_threads, side_by_side
from benchmarks.datasets import PRESETS, BenchmarkDataset, resolve_dataset
from benchmarks.knobs import KnobGrid, knob_point
from benchmarks.machine import machine
from benchmarks.search_bench import latency, quality, relevance, sizes, stored_queries
from benchmarks.sections import SectionStore
from benchmarks.sweeps import pruning_sweep, weight_sweep
from benchmarks.synthetic import GENERATOR
from core.encoder import DuetEncoder
from indexer.build import IndexBuildConfig, build_index, verify_index
from indexer.params import DEFAULT_CANDIDATE_K, MODES, SearchParams
from indexer.search import SearchEngine
from indexer.store import IndexMismatchError, IndexUnavailableError

_logger = logging.getLogger("benchmarks.runner")

# quality is always measured (the headline); the others can be left out (the matrix check runs quality only)
STAGES = ("quality", "readability", "sweeps", "efficiency", "peers", "scale", "knobs")
# the report's sections besides the scale points (``scale-<items>``), as the partial report names them
SECTIONS = ("quality", "readability", "weight_sweep", "pruning", "encoding", "batched", "latency", "peers")


class RunConfig(BaseModel):
    """One benchmark run; every field has a CLI flag of the same name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: Path = Field(description="Duet checkpoint directory (e.g. runs/grounded/best)")
    dataset: str = Field("flickr8k", description=f"one of {sorted(PRESETS)}")
    data: Path | None = Field(None, description="dataset directory (default: the preset's)")
    image_root: Path | None = Field(None, description="image root when not <data>/images (MSCOCO: the folder with "
                                    "val2014/)")
    split: str = Field("test", description="the Karpathy split indexed and measured")
    out: Path = Field(description="report directory (report.json, README.md, *.png)")
    work: Path = Field(Path("artifacts/benchmarks"), description="indexes and scratch space (kept for reuse)")
    index: Path | None = Field(None, description="an existing index of the split, bound to --checkpoint, used "
                               "instead of building one")
    candidate_k: int = Field(DEFAULT_CANDIDATE_K, gt=0, description="hybrid candidates per leg")
    latency_queries: int = Field(200, gt=0, description="queries timed one at a time")
    threads: int = Field(1, gt=0, description="threads for one-query latency, every engine alike")
    batch_threads: int = Field(2, gt=0, description="threads for batched throughput and builds")
    weight_grid: tuple[float, ...] = Field((0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
                                           description="w_dense shares of the weight sweep")
    prune_terms: tuple[int, ...] = Field((8, 16, 32, 64, 128), description="terms kept per vector in the pruning sweep")
    peers: tuple[str, ...] = Field(PEERS, description=f"engines compared on the same vectors, a subset of "
                                   f"{', '.join(PEERS)}; '' for none")
    scales: tuple[int, ...] = Field((10_000, 100_000), description="synthetic corpus sizes; '' for none")
    scale_queries: int = Field(100, gt=0, description="queries timed at each synthetic scale")
    knob_scales: tuple[int, ...] = Field((100_000,), description="synthetic sizes at which each approximate "
                                         "engine's search-time knob is swept; '' for none")
    knob_grid: KnobGrid = KnobGrid()
    encode_samples: int = Field(64, gt=0, description="images (and 8x as many texts) timed for encoding throughput")
    cache_root: Path = Field(Path("artifacts/cache"), description="feature cache (shared with training: a trained "
                             "dataset's cache is reused)")
    stages: tuple[str, ...] = Field(STAGES, description=f"what to measure, a subset of {STAGES}")

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(stages) - set(STAGES)
        if unknown or not stages:
            raise ValueError(f"unknown or no stages {sorted(unknown)}; choose from {list(STAGES)}")
        return stages

    @field_validator("peers")
    @classmethod
    def _known_peers(cls, peers: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(peers) - set(PEERS)
        if unknown:
            raise ValueError(f"unknown peers {sorted(unknown)}; choose from {list(PEERS)}")
        return peers

    @field_validator("weight_grid")
    @classmethod
    def _weights_in_range(cls, grid: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= a <= 1.0 for a in grid):
            raise ValueError("weight_grid values are w_dense shares in [0, 1]")
        return grid


def build_config(config: RunConfig, dataset: BenchmarkDataset) -> IndexBuildConfig:
    return IndexBuildConfig(checkpoint=config.checkpoint, output=config.work / f"index-{config.split}",
                            dataset=dataset.directory, image_root=config.image_root, splits=(config.split,),
                            cache_root=config.cache_root, threads=config.batch_threads)


def ensure_index(config: RunConfig, dataset: BenchmarkDataset, encoder: DuetEncoder) -> tuple[Path, bool]:
    """(index dir, built now?). A given index is checked against the checkpoint and the split, never rebuilt."""
    if config.index is not None:
        engine = SearchEngine.open(config.index, encoder=encoder)  # raises IndexMismatchError on another checkpoint
        splits = engine.manifest.collection.get("splits")
        engine.close()
        if splits != [config.split]:
            raise IndexMismatchError(f"index {config.index} holds splits {splits}, the benchmark needs exactly "
                                     f"[{config.split!r}] (build one with --splits {config.split})")
        return config.index, False
    out = config.work / f"index-{config.split}"
    try:
        verify_index(out, checkpoint=config.checkpoint)
        _logger.info("reusing %s (verified against %s)", out, config.checkpoint)
        return out, False
    except (IndexUnavailableError, IndexMismatchError) as e:
        _logger.info("building %s: %s", out, e)
    build_index(build_config(config, dataset))
    return out, True


def encoding_throughput(encoder: DuetEncoder, dataset: BenchmarkDataset, samples: int, threads: int) -> dict:
    """Images (decode + preprocess + both towers' heads) and texts per second, from files, batch 32."""
    from PIL import Image

    from core.data import load_karpathy

    set_threads(threads)
    data = load_karpathy(dataset.directory, json_name=dataset.json_name, image_root=dataset.image_root)
    records = data.split(dataset.split)[:samples]
    texts = [c.text for r in data.split(dataset.split) for c in r.captions][:samples * 8]
    started = time.perf_counter()
    for start in range(0, len(records), 32):
        images = [Image.open(data.image_path(r)).convert("RGB") for r in records[start:start + 32]]
        encoder.encode_images(images)
    image_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, len(texts), 256):
        encoder.encode_texts(texts[start:start + 256])
    text_seconds = time.perf_counter() - started
    return {"threads": threads, "images": len(records), "images_per_second": len(records) / image_seconds,
            "texts": len(texts), "texts_per_second": len(texts) / text_seconds}


def batched_throughput(engine: SearchEngine, *, candidate_k: int, threads: int) -> dict[str, Any]:
    """Queries per second with every caption as a query in one search_batch call per mode."""
    set_threads(threads)
    queries = stored_queries(engine.reader.stores["texts"])
    out = {"threads": threads, "queries": len(queries)}
    for mode in MODES:
        params = SearchParams(side="images", mode=mode, top_k=10, candidate_k=candidate_k)
        started = time.perf_counter()
        engine.search_batch(queries, params, threads=threads)
        out[f"{mode}_qps"] = len(queries) / (time.perf_counter() - started)
    return out


def peers_on_split(engine: SearchEngine, config: RunConfig) -> dict[str, Any]:
    _logger.info("peers on the same vectors: %s", config.peers)
    t2i_relevant, _ = relevance(engine)
    rows, notes = side_by_side(engine, "images", stored_queries(engine.reader.stores["texts"]), relevant=t2i_relevant,
                               peers=config.peers, work=config.work, candidate_k=config.candidate_k,
                               latency_queries=config.latency_queries, threads=config.threads,
                               batch_threads=config.batch_threads)
    return {"side": "images", "queries": "every caption of the split (t2i)", "unavailable": notes, "engines": rows}


_SELECTION_FIELDS = ("stages", "scales", "knob_scales", "knob_grid")


class PartialReport(SectionStore):
    """The run's sections (benchmarks/sections.py). Without a partial report, ``--resume`` reuses the sections of a
    finished ``<out>/report.json`` instead, so a report can be extended (another scale point) without measuring
    again what it holds. Sections are reused for the same checkpoint content and run configuration."""

    def __init__(self, config: RunConfig, content_hash: str, *, resume: bool) -> None:
        super().__init__(Path(config.out), {"content_hash": content_hash,
                                            "config": json.loads(config.model_dump_json(exclude={"out"}))})
        finished = Path(config.out) / "report.json"
        if resume and self.path.is_file():
            self.resume()
        elif resume and finished.is_file():  # extend a finished report, e.g. with another scale point
            self.reuse(finished, self._saved_from_report(json.loads(finished.read_text())))

    @staticmethod
    def _saved_from_report(report: dict[str, Any]) -> dict[str, Any]:
        """A finished report as a partial one: its sections, less synthetic points of another generator."""
        sections = {name: report[name] for name in SECTIONS if name in report}
        sections |= {f"{kind}-{point['items']}": point for kind in ("scale", "knobs")
                     for point in report.get(kind, []) if point.get("generator") == GENERATOR}
        config = {k: v for k, v in report.get("config", {}).items() if k != "out"}
        return {"key": {"content_hash": report.get("checkpoint", {}).get("content_hash"), "config": config},
                "sections": sections, "log": report.get("sections", {})}

    def comparable(self, key: dict[str, Any]) -> dict[str, Any]:
        # which sections run (stages, sizes) does not change what a finished section measured; a knob section
        # carries its own grid and is checked against it (``section``'s ``reusable``)
        config = {k: v for k, v in key.get("config", {}).items() if k not in _SELECTION_FIELDS}
        return {"content_hash": key.get("content_hash"), "config": config}



def run(config: RunConfig, *, resume: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    dataset = resolve_dataset(config.dataset, config.data, config.split, image_root=config.image_root)
    if dataset.protocol_note:
        _logger.warning("%s", dataset.protocol_note)
    config.work.mkdir(parents=True, exist_ok=True)
    encoder = DuetEncoder.from_checkpoint(config.checkpoint)
    index, built = ensure_index(config, dataset, encoder)
    engine = SearchEngine.open(index, encoder=encoder)
    partial = PartialReport(config, encoder.checkpoint.content_hash, resume=resume)
    report: dict[str, Any] = {
        "dataset": {"name": config.dataset, "directory": str(dataset.directory), "split": config.split,
                    "images": dataset.images, "captions": dataset.captions, "note": dataset.protocol_note},
        "checkpoint": {"path": str(config.checkpoint), "content_hash": encoder.checkpoint.content_hash,
                       "method": encoder.checkpoint.metadata.get("method")},
        "config": json.loads(config.model_dump_json()), "machine": machine(), "index": str(index),
        "fusion": {"w_dense": engine.manifest.fusion_dense_weight, "w_sparse": engine.manifest.fusion_sparse_weight,
                   "temperature": engine.manifest.temperature},
    }
    timings = engine.manifest.build["timings"]
    count = sum(s.count for s in engine.manifest.sides.values())
    report["build"] = {"built_in_this_run": built, "timings": timings, "items": count,
                       "items_per_second": count / timings["total_seconds"]}
    report["sizes"] = sizes(engine)
    k, threads, batch = config.candidate_k, config.threads, config.batch_threads
    try:
        set_threads(batch)
        report["quality"] = partial.section("quality", lambda: quality(engine, threads=batch, candidate_k=k))
        if "readability" in config.stages:
            from benchmarks.readability import readability_section

            report["readability"] = partial.section("readability", lambda: readability_section(engine, dataset))
        if "sweeps" in config.stages:
            report["weight_sweep"] = partial.section("weight_sweep", lambda: weight_sweep(
                engine, config.weight_grid, candidate_k=k, threads=batch))
            report["pruning"] = partial.section("pruning", lambda: pruning_sweep(
                engine, build_config(config, dataset), config.prune_terms, config.work, candidate_k=k,
                threads=batch))
        if "efficiency" in config.stages:
            report["encoding"] = partial.section("encoding", lambda: encoding_throughput(
                encoder, dataset, config.encode_samples, batch))
            report["batched"] = partial.section("batched", lambda: batched_throughput(
                engine, candidate_k=k, threads=batch))
            report["latency"] = partial.section("latency", lambda: one_thread_latency(engine, config))
        if "peers" in config.stages:
            report["peers"] = partial.section("peers", lambda: peers_on_split(engine, config))
        if "scale" in config.stages:
            from benchmarks.scale import scale_point

            # points saved before the index's bytes per item were recorded are measured again
            report["scale"] = [partial.section(f"scale-{items}", lambda items=items: scale_point(
                engine, items, config.work, peers=config.peers, queries=config.scale_queries, candidate_k=k,
                threads=threads, batch_threads=batch), reusable=lambda saved: "duet_bytes_per_item" in saved)
                for items in config.scales]
        if "knobs" in config.stages:
            report["knobs"] = [knob_section(partial, engine, config, items) for items in config.knob_scales]
    finally:
        engine.close()
    report["seconds"] = time.perf_counter() - started
    report["sections"] = partial.log
    report["headline"] = headline(report)
    partial.finish()
    return report


def knob_section(partial: PartialReport, engine: SearchEngine, config: RunConfig, items: int) -> dict[str, Any]:
    grid = config.knob_grid.model_dump(mode="json")
    return partial.section(f"knobs-{items}", lambda: knob_point(
        engine, items, config.work, grid=config.knob_grid, peers=config.peers, queries=config.scale_queries,
        threads=config.threads, batch_threads=config.batch_threads),
        reusable=lambda saved: saved.get("grid") == grid and saved.get("generator") == GENERATOR)


def one_thread_latency(engine: SearchEngine, config: RunConfig) -> dict[str, Any]:
    set_threads(config.threads)
    texts = [item["text"] for item in engine.reader.stores["texts"].items]
    out = latency(engine, queries=config.latency_queries, candidate_k=config.candidate_k,
                  texts=texts[::max(1, len(texts) // config.latency_queries)])
    return {**out, "threads": config.threads}


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers the README shows: R@1/5/10 per mode and direction, RSUM, p50 latency."""
    q = report["quality"]
    p50 = report.get("latency", {}).get("search_only", {})
    return {mode: {"t2i": q["t2i"][mode], "i2t": q["i2t"][mode], "rsum": q["rsum"][mode],
                   "p50_ms": p50[mode]["p50"] if mode in p50 else None}
            for mode in MODES}
