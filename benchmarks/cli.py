"""``python -m benchmarks search|synthetic ...``: measure quality, latency and size through the real index path."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.atomic import write_text_atomic
from core.progress import setup_logging
from indexer.store import IndexUnavailableError

_logger = logging.getLogger("benchmarks")


def machine() -> dict[str, Any]:
    import os

    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "processor": platform.processor() or platform.machine()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("search", help="quality (R@1/5/10, both directions), latency, size and HTTP overhead")
    p.add_argument("--index", required=True, help="index of a Karpathy split with both sides (e.g. test)")
    p.add_argument("--output", required=True, help="JSON report path")
    p.add_argument("--latency-queries", type=int, default=200)
    p.add_argument("--candidate-k", type=int, default=100)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--http", action="store_true", help="also measure HTTP overhead through a uvicorn server")
    p = sub.add_parser("synthetic", help="latency per mode on a synthetic corpus following a real index's statistics")
    p.add_argument("--index", required=True, help="real index: statistics of its images side, its captions as queries")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--work", default="artifacts/synthetic", help="where the synthetic index is built (kept)")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--candidate-k", type=int, default=100)
    p.add_argument("--output", required=True)
    return parser


def run_search(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.search_bench import latency, quality, single_thread, sizes
    from indexer.search import SearchEngine

    engine = SearchEngine(args.index)
    report: dict[str, Any] = {"index": args.index, "machine": machine(), "manifest_build": engine.manifest.build}
    report["sizes"] = sizes(engine)
    if not args.skip_quality:
        started = time.perf_counter()
        report["quality"] = quality(engine, candidate_k=args.candidate_k)
        report["quality_seconds"] = time.perf_counter() - started
    texts = [item["text"] for item in engine.stores["texts"].items]
    step = max(1, len(texts) // args.latency_queries)
    sample = texts[::step][:args.latency_queries]
    single_thread()
    report["latency_one_thread"] = latency(engine, queries=args.latency_queries, candidate_k=args.candidate_k,
                                           texts=sample)
    if args.http:
        from benchmarks.http_bench import http_overhead

        report["http"] = http_overhead(Path(args.index), sample[:100])
    return report


def run_synthetic(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.search_bench import latency, single_thread, sizes
    from benchmarks.synthetic import CorpusStatistics, generate
    from indexer.build import IndexBuildConfig, publish_index
    from indexer.search import SearchEngine

    real = SearchEngine(args.index)
    stats = CorpusStatistics.of(real.stores["images"])
    encoded = generate(stats, args.items)
    out = Path(args.work) / f"synthetic-{args.items}"
    config = IndexBuildConfig(checkpoint=Path(real.manifest.checkpoint.path), output=out,
                              sparse_scale=float(real.manifest.quantization["scale"]))
    started = time.perf_counter()
    manifest = publish_index(config, real.encoder, {"images": ([{"id": f"s{i}"} for i in range(args.items)],
                                                               encoded)},
                             {"name": f"synthetic-{args.items}", "source": "synthetic", "root": tempfile.gettempdir(),
                              "splits": [], "statistics_of": args.index})
    build_seconds = time.perf_counter() - started
    synthetic = SearchEngine(out, encoder=real.encoder)
    # Queries: the real index's captions (stored vectors), searched against the synthetic images.
    synthetic.stores["texts"] = real.stores["texts"]
    single_thread()
    return {"items": args.items, "machine": machine(), "statistics": stats.summary(),
            "synthetic_mean_terms": manifest.sides["images"].mean_terms, "build_seconds": build_seconds,
            "build_timings": manifest.build["timings"], "sizes": sizes(synthetic),
            "sparse_build_items_per_second": args.items / manifest.build["timings"]["images_sparse_seconds"],
            "latency_one_thread": latency(synthetic, queries=args.queries, candidate_k=args.candidate_k)}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        report = run_search(args) if args.command == "search" else run_synthetic(args)
    except (IndexUnavailableError, FileNotFoundError, ValueError) as e:
        _logger.error("%s", e)
        return 2
    write_text_atomic(args.output, json.dumps(report, indent=2))
    _logger.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
