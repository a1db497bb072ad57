"""``python -m benchmarks run|check|record-matrix|search|synthetic|report``: Duet's benchmarks.

``run`` is the whole report for one dataset split (quality, sweeps, efficiency, peers, scale); ``check`` re-runs
what a results matrix needs and prints OK/FAIL per row; ``search``/``synthetic``/``report`` are the single
measurements the run is made of, kept for quick looks at an existing index.
"""

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
from core.data import DatasetError
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
    _add_run_parsers(sub)
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
    p = sub.add_parser("report", help="render JSON reports as Markdown")
    p.add_argument("--search", nargs="+", required=True, help="JSONs of `benchmarks search`")
    p.add_argument("--synthetic", nargs="*", default=[], help="JSONs of `benchmarks synthetic`")
    p.add_argument("--output", required=True)
    p.add_argument("--notes", default="docs/benchmarks/earlier/notes.md", help="hand-written notes appended if present")
    return parser


def _add_run_parsers(sub: Any) -> None:
    from benchmarks.knobs import KnobGrid
    from benchmarks.runner import RunConfig

    p = sub.add_parser("run", help="the full report for one Karpathy dataset split (JSON, Markdown, PNG plots)")
    p.add_argument("--checkpoint", required=True, help="Duet checkpoint directory (e.g. runs/skd/best)")
    p.add_argument("--dataset", default="flickr8k", help="flickr8k | flickr30k | mscoco")
    p.add_argument("--data", help="dataset directory (Karpathy JSON + images/); default: the preset's")
    p.add_argument("--image-root", help="image root when not <data>/images (MSCOCO: the folder with val2014/)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--work", default=str(RunConfig.model_fields["work"].default))
    p.add_argument("--index", help="an existing index of the split, bound to --checkpoint")
    p.add_argument("--cache-root", default=str(RunConfig.model_fields["cache_root"].default),
                   help="feature cache (shared with training: a trained dataset's cache is reused)")
    p.add_argument("--peers", default=",".join(RunConfig.model_fields["peers"].default),
                   help="comma-separated subset of hnsw,milvus,seismic ('' for none)")
    p.add_argument("--scales", default=",".join(map(str, RunConfig.model_fields["scales"].default)),
                   help="synthetic corpus sizes, comma-separated ('' for none)")
    p.add_argument("--knob-scales", default=",".join(map(str, RunConfig.model_fields["knob_scales"].default)),
                   help="synthetic sizes at which each approximate engine's search-time knob is swept ('' for none)")
    grid = KnobGrid()
    p.add_argument("--knob-candidate-k", default=",".join(map(str, grid.candidate_k)),
                   help="Duet hybrid candidates per leg to sweep")
    p.add_argument("--knob-ef-search", default=",".join(map(str, grid.ef_search)), help="FAISS HNSW efSearch values")
    p.add_argument("--knob-query-cut", default=",".join(map(str, grid.query_cut)), help="Seismic query_cut values")
    p.add_argument("--stages", default=",".join(RunConfig.model_fields["stages"].default))
    p.add_argument("--prune-terms", default=",".join(map(str, RunConfig.model_fields["prune_terms"].default)))
    p.add_argument("--weight-grid", default=",".join(map(str, RunConfig.model_fields["weight_grid"].default)))
    p.add_argument("--latency-queries", type=int, default=200)
    p.add_argument("--scale-queries", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="threads for one-query latency (every engine)")
    p.add_argument("--batch-threads", type=int, default=2, help="threads for batched throughput and builds")
    p.add_argument("--resume", action="store_true",
                   help="skip the sections an interrupted run (report.partial.json) or, failing that, the finished "
                        "report.json in --out already measured for this checkpoint and configuration")
    p = sub.add_parser("check", help="re-run a results matrix's conditions; OK/FAIL per row, exit 1 on any FAIL")
    p.add_argument("--matrix", required=True, help="matrix JSON (e.g. benchmarks/matrix/flickr8k-test.json)")
    p.add_argument("--checkpoint", help="default: the matrix's checkpoint")
    p.add_argument("--data", help="dataset directory; default: the preset's")
    p.add_argument("--work", default=str(RunConfig.model_fields["work"].default))
    p.add_argument("--cache-root", default=str(RunConfig.model_fields["cache_root"].default))
    p.add_argument("--output", help="also write the verdicts as JSON here")
    p = sub.add_parser("render", help="redraw README.md and the plots of a run from its report.json")
    p.add_argument("--report", required=True, help="report.json of `run` (outputs go beside it)")
    p = sub.add_parser("record-matrix", help="write a results matrix from a run report (expected = measured)")
    p.add_argument("--report", required=True, help="report.json of `run`")
    p.add_argument("--output", required=True)


def _csv(text: str, kind: type) -> tuple:
    return tuple(kind(x) for x in text.split(",") if x.strip())


def run_config(args: argparse.Namespace) -> Any:
    from benchmarks.knobs import KnobGrid
    from benchmarks.runner import RunConfig

    return RunConfig(checkpoint=args.checkpoint, dataset=args.dataset, data=args.data, image_root=args.image_root,
                     split=args.split, out=args.out, work=args.work, index=args.index, peers=_csv(args.peers, str),
                     scales=_csv(args.scales, int), knob_scales=_csv(args.knob_scales, int),
                     knob_grid=KnobGrid(candidate_k=_csv(args.knob_candidate_k, int),
                                        ef_search=_csv(args.knob_ef_search, int),
                                        query_cut=_csv(args.knob_query_cut, int)),
                     stages=_csv(args.stages, str),
                     prune_terms=_csv(args.prune_terms, int), weight_grid=_csv(args.weight_grid, float),
                     latency_queries=args.latency_queries, scale_queries=args.scale_queries, threads=args.threads,
                     batch_threads=args.batch_threads, cache_root=args.cache_root)


def command_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from benchmarks.runner import run

    config = run_config(args)
    report = run(config, resume=args.resume)
    report["command"] = "python -m benchmarks " + " ".join(argv)
    out = Path(config.out)
    write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    render_outputs(out / "report.json")
    return 0


def render_outputs(report_path: Path) -> None:
    from benchmarks.plots import write_plots
    from benchmarks.report import render_run

    if not report_path.is_file():
        raise FileNotFoundError(f"report not found: {report_path}")
    report = json.loads(report_path.read_text())
    out = report_path.parent
    plots = write_plots(report, out)
    write_text_atomic(out / "README.md", render_run(report, plots))
    _logger.info("wrote %s (README.md, %d plots)", out, len(plots))


def command_check(args: argparse.Namespace) -> int:
    from benchmarks.matrix import ResultsMatrix, check, render
    from benchmarks.runner import RunConfig, run

    matrix = ResultsMatrix.load(args.matrix)
    with tempfile.TemporaryDirectory(prefix="duet-check-") as tmp:
        config = RunConfig(checkpoint=args.checkpoint or matrix.checkpoint, dataset=matrix.dataset, data=args.data,
                           split=matrix.split, out=tmp, work=args.work, stages=matrix.stages(),
                           cache_root=args.cache_root)
        report = run(config)
    verdicts = check(matrix, report)
    sys.stdout.write(render(verdicts) + "\n")
    if args.output:
        write_text_atomic(args.output, json.dumps({"matrix": args.matrix, "verdicts": verdicts}, indent=2))
    return 1 if any(v["status"] == "FAIL" for v in verdicts) else 0


def render_report(args: argparse.Namespace) -> str:
    from benchmarks.report import latency_table, quality_table, size_table

    lines = ["# Search benchmarks (generated by `python -m benchmarks report`)", ""]
    for path in args.search:
        search = json.loads(Path(path).read_text())
        lines += [f"## Index `{search['index']}`", "", f"Machine: {search['machine']}.", "",
                  "### Quality through the index (Lucene impact search, FAISS, hybrid rescoring)", "",
                  *quality_table(search), "",
                  "### Latency, one query at a time, one thread", "", *latency_table(search["latency_one_thread"]),
                  "", "### Size", "", *size_table(search["sizes"]), ""]
        if "http" in search:
            h = search["http"]
            lines += ["### HTTP overhead (uvicorn, 127.0.0.1, hybrid text queries)", "",
                      f"client p50 {h['client_ms']['p50']:.1f} ms, server-side p50 {h['server_ms']['p50']:.1f} ms: "
                      f"overhead {h['overhead_p50_ms']:.1f} ms = {100 * h['overhead_share_of_p50']:.1f}% of p50.", ""]
    for path in args.synthetic:
        syn = json.loads(Path(path).read_text())
        lines += [f"## Synthetic corpus, {syn['items']:,} items, statistics of `{syn['statistics_of']}` images", "",
                  f"Statistics: {syn['statistics']}; synthetic mean terms {syn['synthetic_mean_terms']:.1f}; "
                  f"Lucene build {syn['sparse_build_items_per_second']:.0f} items/s on 2 threads "
                  f"(collection writing included, encoding excluded).", "",
                  *latency_table(syn["latency_one_thread"]), "", *size_table(syn["sizes"]), ""]
    notes = Path(args.notes)
    if notes.is_file():
        lines += [notes.read_text()]
    return "\n".join(lines)


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
    config = IndexBuildConfig(checkpoint=real.checkpoint_dir, output=out,
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
    return {"items": args.items, "statistics_of": args.index, "machine": machine(), "statistics": stats.summary(),
            "synthetic_mean_terms": manifest.sides["images"].mean_terms, "build_seconds": build_seconds,
            "build_timings": manifest.build["timings"], "sizes": sizes(synthetic),
            "sparse_build_items_per_second": args.items / manifest.build["timings"]["images_sparse_seconds"],
            "latency_one_thread": latency(synthetic, queries=args.queries, candidate_k=args.candidate_k)}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.command == "run":
            return command_run(args, argv)
        if args.command == "check":
            return command_check(args)
        if args.command == "render":
            render_outputs(Path(args.report))
            return 0
        if args.command == "record-matrix":
            from benchmarks.matrix import record

            write_text_atomic(args.output, record(json.loads(Path(args.report).read_text()), source=args.report))
            return 0
        if args.command == "report":
            write_text_atomic(args.output, render_report(args))
            return 0
        report = run_search(args) if args.command == "search" else run_synthetic(args)
    except (IndexUnavailableError, DatasetError, FileNotFoundError, ValueError) as e:
        _logger.error("%s", e)
        return 2
    write_text_atomic(args.output, json.dumps(report, indent=2))
    _logger.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
