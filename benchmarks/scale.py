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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.compare import side_by_side
from benchmarks.search_bench import stored_queries
from benchmarks.synthetic import GENERATOR, CorpusStatistics, corpus_summary, generate
from indexer.build import IndexBuildConfig, publish_index
from indexer.search import SearchEngine

_logger = logging.getLogger("benchmarks.scale")


def scale_point(real: SearchEngine, items: int, work: Path, *, peers: Sequence[str], queries: int = 100,
                candidate_k: int = 100, threads: int = 1, batch_threads: int = 2,
                keep: bool = False) -> dict[str, Any]:
    stats = CorpusStatistics.of(real.stores["images"])
    encoded = generate(stats, items)
    out = work / f"synthetic-{items}"
    config = IndexBuildConfig(checkpoint=Path(real.manifest.checkpoint.path), output=out,
                              sparse_scale=float(real.manifest.quantization["scale"]), threads=batch_threads)
    started = time.perf_counter()
    manifest = publish_index(config, real.encoder, {"images": ([{"id": f"s{i}"} for i in range(items)], encoded)},
                             {"name": f"synthetic-{items}", "source": "synthetic", "root": tempfile.gettempdir(),
                              "splits": [], "statistics_of": str(real.index_dir)})
    build_seconds = time.perf_counter() - started
    synthetic_statistics = corpus_summary(encoded.sparse)
    del encoded  # the index's own store holds the vectors now; at 1M items a second copy costs 3.3 GB
    gc.collect()
    synthetic = SearchEngine(out, encoder=real.encoder, sides=("images",))
    text_queries = stored_queries(real.stores["texts"])
    step = max(1, len(text_queries) // queries)
    sample = text_queries[::step][:queries]
    try:
        rows, notes = side_by_side(synthetic, "images", sample, relevant=None, peers=peers, work=work,
                                   candidate_k=candidate_k, latency_queries=queries, threads=threads,
                                   batch_threads=batch_threads)
    finally:
        synthetic.close()
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    timings = manifest.build["timings"]
    return {"items": items, "generator": GENERATOR, "queries": len(sample), "statistics": stats.summary(),
            "synthetic_statistics": synthetic_statistics,
            "synthetic_mean_terms": manifest.sides["images"].mean_terms, "duet_build_seconds": build_seconds,
            "duet_sparse_build_items_per_second": items / timings["images_sparse_seconds"],
            "engines": rows, "unavailable": notes}
