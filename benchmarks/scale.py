"""Latency versus corpus size: synthetic corpora that follow the trained model's statistics, every mode and peer.

The corpus (mixtures of two real items in both spaces, keeping terms per item, term document frequencies and
weights; see synthetic.py) is indexed by Duet's own publish path and by each peer; queries are real caption
vectors of the benchmark's index.
There are no relevance judgements here: quality is overlap@10 with exact brute force of the same scoring rule.
"""

from __future__ import annotations

import gc
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.compare import side_by_side
from benchmarks.search_bench import stored_queries
from benchmarks.synthetic import GENERATOR, CorpusStatistics, corpus_summary, generate
from indexer.build import IndexBuildConfig, publish_index
from indexer.params import DEFAULT_CANDIDATE_K
from indexer.query import Query
from indexer.search import SearchEngine

_logger = logging.getLogger("benchmarks.scale")


@dataclass(frozen=True)
class SyntheticBuild:
    """A synthetic corpus published by Duet's own index path, and what building it took."""

    engine: SearchEngine
    statistics: dict[str, float]  # of the real index side the corpus follows
    synthetic_statistics: dict[str, float]
    build_seconds: float
    sparse_items_per_second: float


@contextmanager
def synthetic_index(real: SearchEngine, items: int, work: Path, *, batch_threads: int = 2,
                    keep: bool = False) -> Iterator[SyntheticBuild]:
    """Generate ``items`` synthetic items (the same corpus for the same size: the generator's seed is fixed),
    publish them as a Duet index under ``work`` and open it; the index is deleted afterwards unless ``keep``."""
    stats = CorpusStatistics.of(real.reader.stores["images"])
    encoded = generate(stats, items)
    out = work / f"synthetic-{items}"
    config = IndexBuildConfig(checkpoint=real.reader.checkpoint_dir, output=out,
                              sparse_scale=float(real.manifest.quantization["scale"]), threads=batch_threads)
    started = time.perf_counter()
    manifest = publish_index(config, real.encoder, {"images": ([{"id": f"s{i}"} for i in range(items)], encoded)},
                             {"name": f"synthetic-{items}", "source": "synthetic", "root": tempfile.gettempdir(),
                              "splits": [], "statistics_of": str(real.root)})
    build_seconds = time.perf_counter() - started
    synthetic_statistics = corpus_summary(encoded.sparse)
    del encoded  # the index's own store holds the vectors now; at 1M items a second copy costs 3.3 GB
    gc.collect()
    engine = SearchEngine.open(out, encoder=real.encoder, sides=("images",))
    try:
        yield SyntheticBuild(engine, stats.summary(), synthetic_statistics, build_seconds,
                             items / manifest.build["timings"]["images_sparse_seconds"])
    finally:
        engine.close()
        if not keep:
            shutil.rmtree(out, ignore_errors=True)


def caption_queries(real: SearchEngine, count: int) -> list[Query]:
    """``count`` real caption vectors of the benchmark's index, evenly spaced over its captions."""
    text_queries = stored_queries(real.reader.stores["texts"])
    return text_queries[::max(1, len(text_queries) // count)][:count]


def scale_point(real: SearchEngine, items: int, work: Path, *, peers: Sequence[str], queries: int = 100,
                candidate_k: int = DEFAULT_CANDIDATE_K, threads: int = 1, batch_threads: int = 2,
                keep: bool = False) -> dict[str, Any]:
    sample = caption_queries(real, queries)
    with synthetic_index(real, items, work, batch_threads=batch_threads, keep=keep) as built:
        rows, notes = side_by_side(built.engine, "images", sample, relevant=None, peers=peers, work=work,
                                   candidate_k=candidate_k, latency_queries=queries, threads=threads,
                                   batch_threads=batch_threads)
    return {"items": items, "generator": GENERATOR, "queries": len(sample), "statistics": built.statistics,
            "synthetic_statistics": built.synthetic_statistics,
            "synthetic_mean_terms": built.engine.manifest.sides["images"].mean_terms,
            "duet_build_seconds": built.build_seconds,
            "duet_sparse_build_items_per_second": built.sparse_items_per_second,
            "duet_bytes_per_item": {part: size / items for part, size in
                                    built.engine.manifest.sides["images"].bytes.items()},
            "engines": rows,
            "unavailable": notes}
