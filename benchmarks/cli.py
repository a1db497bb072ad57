"""``python -m benchmarks run|check|record-matrix|search|synthetic|report|live|filtered|gpu|scale-out|reliability``:
Duet's benchmarks.

``run`` is the whole report for one dataset split (quality, sweeps, efficiency, peers, scale); ``check`` re-runs
what a results matrix needs and prints OK/FAIL per row; ``search``/``synthetic``/``report`` are the single
measurements the run is made of, kept for quick looks at an existing index; ``live`` measures live collections
(writes, time to searchable, search beside a delta, compaction) on copies of an index; ``scale-out`` measures
sharded and Ray builds, sharded serving over HTTP (Ray Serve included), writes and bytes per item;
``reliability`` runs generated and hostile input, load, faults and access checks against real services.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from benchmarks.filtered import FilteredOptions
from benchmarks.gpu import GpuOptions
from benchmarks.live_bench import LiveBenchConfig
from benchmarks.machine import machine
from benchmarks.matrix import ResultsMatrix
from benchmarks.reliability.config import ReliabilityConfig
from benchmarks.runner import RunConfig
from benchmarks.scale_bench import ScaleOutConfig
from core.atomic import write_text_atomic
from core.cli_args import Flag, ModelArgs
from core.data import DatasetError
from core.progress import setup_logging
from indexer.store import IndexUnavailableError

_logger = logging.getLogger("benchmarks")


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearchOptions(_Options):
    """``search``: the run's quality and latency measurements on an existing index."""

    index: Path = Field(description="index of a Karpathy split with both sides (e.g. test)")
    output: Path = Field(description="JSON report path")
    # the run's own options: one default for both
    latency_queries: int = RunConfig.model_fields["latency_queries"]
    candidate_k: int = RunConfig.model_fields["candidate_k"]
    skip_quality: bool = Field(False, description="latency and size only")
    http: bool = Field(False, description="also measure HTTP overhead through a uvicorn server")


class SyntheticOptions(_Options):
    """``synthetic``: latency per mode on a synthetic corpus shaped like a real index's images."""

    index: Path = Field(description="real index: statistics of its images side, its captions as queries")
    items: int = Field(100_000, gt=0, description="synthetic images generated and indexed")
    work: Path = Field(Path("artifacts/synthetic"), description="where the synthetic index is built (kept)")
    queries: int = RunConfig.model_fields["scale_queries"]
    candidate_k: int = RunConfig.model_fields["candidate_k"]
    output: Path = Field(description="JSON report path")


class ReportOptions(_Options):
    """``report``: JSON reports of ``search`` and ``synthetic`` as Markdown."""

    search: tuple[Path, ...] = Field(min_length=1, description="JSONs of `benchmarks search`")
    synthetic: tuple[Path, ...] = Field((), description="JSONs of `benchmarks synthetic`")
    output: Path = Field(description="Markdown path")
    notes: Path = Field(Path("docs/benchmarks/earlier/notes.md"), description="hand-written notes appended if present")


# flags keep the names the Makefile, scripts and docs use; help comes from the fields' descriptions
_RUN_FLAGS: dict[str, str | Flag] = {"knob_grid": "--knob"}
RUN_ARGS = ModelArgs(RunConfig, flags=_RUN_FLAGS)
# ``check``: the matrix fixes dataset, split and stages
CHECK_ARGS = ModelArgs(RunConfig, include=("checkpoint", "data", "work", "cache_root"), flags={
    **_RUN_FLAGS, "checkpoint": Flag(required=False, help="default: the matrix's checkpoint")})
SEARCH_ARGS = ModelArgs(SearchOptions)
SYNTHETIC_ARGS = ModelArgs(SyntheticOptions, flags={"queries": Flag(help="queries timed per mode")})
REPORT_ARGS = ModelArgs(ReportOptions, flags={"search": Flag(nargs=True), "synthetic": Flag(nargs=True)})
LIVE_ARGS = ModelArgs(LiveBenchConfig)
SCALE_OUT_ARGS = ModelArgs(ScaleOutConfig)
RELIABILITY_ARGS = ModelArgs(ReliabilityConfig)
FILTERED_ARGS = ModelArgs(FilteredOptions)
GPU_ARGS = ModelArgs(GpuOptions)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="the full report for one Karpathy dataset split (JSON, Markdown, PNG plots)")
    RUN_ARGS.add_to(p)
    p.add_argument("--resume", action="store_true",
                   help="skip the sections an interrupted run (report.partial.json) or, failing that, the finished "
                        "report.json in --out already measured for this checkpoint and configuration")
    p = sub.add_parser("check", help="re-run a results matrix's conditions; OK/FAIL per row, exit 1 on any FAIL")
    p.add_argument("--matrix", required=True, help="matrix JSON (e.g. benchmarks/matrix/flickr8k-test.json)")
    CHECK_ARGS.add_to(p)
    p.add_argument("--output", help="also write the verdicts as JSON here")
    p = sub.add_parser("render", help="redraw README.md and the plots of a run from its report.json")
    p.add_argument("--report", required=True, help="report.json of `run` (outputs go beside it)")
    p = sub.add_parser("record-matrix", help="write a results matrix from a run report (expected = measured)")
    p.add_argument("--report", required=True, help="report.json of `run`")
    p.add_argument("--output", required=True, help="matrix JSON path")
    SEARCH_ARGS.add_to(sub.add_parser("search", help="quality (R@1/5/10, both directions), latency, size and HTTP "
                                      "overhead"))
    SYNTHETIC_ARGS.add_to(sub.add_parser("synthetic", help="latency per mode on a synthetic corpus following a real "
                                         "index's statistics"))
    REPORT_ARGS.add_to(sub.add_parser("report", help="render JSON reports as Markdown"))
    p = sub.add_parser("live", help="live collections on copies of an index: write throughput, time to searchable, "
                       "search latency beside a delta, compaction time (JSON and Markdown)")
    LIVE_ARGS.add_to(p)
    _add_resume(p, "this index, checkpoint and options")
    FILTERED_ARGS.add_to(sub.add_parser("filtered", help="filtered hybrid search on a synthetic corpus with payload "
                                        "fields: the planner against exact brute force and milvus-lite, by "
                                        "selectivity (JSON and Markdown)"))
    GPU_ARGS.add_to(sub.add_parser("gpu", help="tower, pipeline and training speed on the machine's device, on "
                                   "JPEGs and captions it generates (JSON and Markdown)"))
    p = sub.add_parser("scale-out", help="sharded and Ray builds, sharded search and writes over HTTP (Ray Serve "
                       "included) against one index, bytes per item by FAISS factory (JSON and Markdown)")
    SCALE_OUT_ARGS.add_to(p)
    _add_resume(p, "this checkpoint and options")
    p = sub.add_parser("reliability", help="generated and hostile input, load and overload, concurrency, access and "
                       "kill -9 faults against real services on 127.0.0.1 (JSON and Markdown)")
    RELIABILITY_ARGS.add_to(p)
    p.add_argument("--only", default="", help="comma-separated parts to run (access, fuzz, hostile, load, "
                   "concurrency, faults); default: all")
    _add_resume(p, "this checkpoint and options")
    return parser


def _add_resume(parser: argparse.ArgumentParser, keyed_by: str) -> None:
    parser.add_argument("--resume", action="store_true", help="skip the sections an interrupted run "
                        f"(report.partial.json in --out) already measured for {keyed_by}")


def run_config(args: argparse.Namespace) -> RunConfig:
    return RUN_ARGS.build(args)


def check_config(args: argparse.Namespace, matrix: ResultsMatrix, out: Path) -> RunConfig:
    """The run a matrix's check re-does: the matrix's dataset, split, stages and (unless given) checkpoint."""
    return CHECK_ARGS.build(args, checkpoint=matrix.checkpoint, dataset=matrix.dataset, split=matrix.split,
                            stages=matrix.stages(), out=out)


def command_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from benchmarks.runner import run

    config = run_config(args)
    report = run(config, resume=args.resume)
    report["command"] = "python -m benchmarks " + " ".join(argv)
    out = Path(config.out)
    write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    render_outputs(out / "report.json")
    return 0


def command_live(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from benchmarks.live_bench import render_live, run_live

    config = LIVE_ARGS.build(args)
    return _written(config.out, run_live(config, resume=args.resume), argv, render_live)


def _written(out: Path, report: dict[str, Any], argv: Sequence[str], render: Callable[[dict[str, Any]], str]) -> int:
    """A report and its page, written atomically into ``out`` with the command that measured it."""
    report["command"] = "python -m benchmarks " + " ".join(argv)
    write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    write_text_atomic(out / "README.md", render(report))
    _logger.info("wrote %s (report.json, README.md)", out)
    return 0


def command_filtered(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from benchmarks.filtered import render, run_filtered

    options = FILTERED_ARGS.build(args)
    return _written(options.out, run_filtered(options), argv, render)


def command_gpu(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from benchmarks.gpu import render, run_gpu

    options = GPU_ARGS.build(args)
    return _written(options.out, run_gpu(options), argv, render)


def command_scale_out(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from indexer.ray_cluster import LoopbackNamespaceError, enter_loopback_namespace

    try:  # first: it moves only this thread and what it starts afterwards (servers, the Ray cluster, clients)
        enter_loopback_namespace()
    except LoopbackNamespaceError as e:
        _logger.error("%s", e)
        return 2
    from benchmarks.scale_bench import render_scale_out, run_scale_out

    config = SCALE_OUT_ARGS.build(args)
    return _written(config.out, run_scale_out(config, resume=args.resume), argv, render_scale_out)


def command_reliability(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from benchmarks.reliability.report import render_reliability
    from benchmarks.reliability.run import PARTS, run_reliability
    from indexer.ray_cluster import LoopbackNamespaceError, enter_loopback_namespace

    try:  # every server and client of the run on loopback only, where this machine allows it (root)
        enter_loopback_namespace()
    except LoopbackNamespaceError as e:
        _logger.warning("not in a loopback-only namespace (%s); all traffic still goes to 127.0.0.1", e)
    config = RELIABILITY_ARGS.build(args)
    only = tuple(p for p in args.only.split(",") if p)
    unknown = set(only) - {part for part, _, _ in PARTS}
    if unknown:
        _logger.error("unknown parts: %s", ", ".join(sorted(unknown)))
        return 2
    return _written(config.out, run_reliability(config, resume=args.resume, only=only), argv, render_reliability)


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
    from benchmarks.matrix import check, render
    from benchmarks.runner import run

    matrix = ResultsMatrix.load(args.matrix)
    with tempfile.TemporaryDirectory(prefix="duet-check-") as tmp:
        report = run(check_config(args, matrix, Path(tmp)))
    verdicts = check(matrix, report)
    sys.stdout.write(render(verdicts) + "\n")
    if args.output:
        write_text_atomic(args.output, json.dumps({"matrix": args.matrix, "verdicts": verdicts}, indent=2))
    return 1 if any(v["status"] == "FAIL" for v in verdicts) else 0


def render_report(options: ReportOptions) -> str:
    from benchmarks.report import latency_table, quality_table, size_table

    lines = ["# Search benchmarks (generated by `python -m benchmarks report`)", ""]
    for path in options.search:
        search = json.loads(path.read_text())
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
    for path in options.synthetic:
        syn = json.loads(path.read_text())
        lines += [f"## Synthetic corpus, {syn['items']:,} items, statistics of `{syn['statistics_of']}` images", "",
                  f"Statistics: {syn['statistics']}; synthetic mean terms {syn['synthetic_mean_terms']:.1f}; "
                  f"Lucene build {syn['sparse_build_items_per_second']:.0f} items/s on 2 threads "
                  f"(collection writing included, encoding excluded).", "",
                  *latency_table(syn["latency_one_thread"]), "", *size_table(syn["sizes"]), ""]
    if options.notes.is_file():
        lines += [options.notes.read_text()]
    return "\n".join(lines)


def run_search(options: SearchOptions) -> dict[str, Any]:
    from benchmarks.search_bench import latency, quality, single_thread, sizes
    from indexer.search import SearchEngine

    engine = SearchEngine.open(options.index)
    report: dict[str, Any] = {"index": str(options.index), "machine": machine(),
                              "manifest_build": engine.manifest.build}
    report["sizes"] = sizes(engine)
    if not options.skip_quality:
        started = time.perf_counter()
        report["quality"] = quality(engine, candidate_k=options.candidate_k)
        report["quality_seconds"] = time.perf_counter() - started
    texts = [item["text"] for item in engine.reader.stores["texts"].items]
    step = max(1, len(texts) // options.latency_queries)
    sample = texts[::step][:options.latency_queries]
    single_thread()
    report["latency_one_thread"] = latency(engine, queries=options.latency_queries, candidate_k=options.candidate_k,
                                           texts=sample)
    if options.http:
        from benchmarks.http_bench import http_overhead

        report["http"] = http_overhead(options.index, sample[:100])
    return report


def run_synthetic(options: SyntheticOptions) -> dict[str, Any]:
    from benchmarks.search_bench import latency, single_thread, sizes
    from benchmarks.synthetic import CorpusStatistics, generate
    from indexer.build import IndexBuildConfig, publish_index
    from indexer.search import SearchEngine

    items, statistics_of = options.items, str(options.index)
    real = SearchEngine.open(options.index)
    stats = CorpusStatistics.of(real.reader.stores["images"])
    encoded = generate(stats, items)
    out = options.work / f"synthetic-{items}"
    config = IndexBuildConfig(checkpoint=real.reader.checkpoint_dir, output=out,
                              sparse_scale=float(real.manifest.quantization["scale"]))
    started = time.perf_counter()
    manifest = publish_index(config, real.encoder, {"images": ([{"id": f"s{i}"} for i in range(items)], encoded)},
                             {"name": f"synthetic-{items}", "source": "synthetic", "root": tempfile.gettempdir(),
                              "splits": [], "statistics_of": statistics_of})
    build_seconds = time.perf_counter() - started
    synthetic = SearchEngine.open(out, encoder=real.encoder)
    # Queries: the real index's captions (stored vectors), searched against the synthetic images.
    synthetic.reader.stores["texts"] = real.reader.stores["texts"]
    single_thread()
    return {"items": items, "statistics_of": statistics_of, "machine": machine(), "statistics": stats.summary(),
            "synthetic_mean_terms": manifest.sides["images"].mean_terms, "build_seconds": build_seconds,
            "build_timings": manifest.build["timings"], "sizes": sizes(synthetic),
            "sparse_build_items_per_second": items / manifest.build["timings"]["images_sparse_seconds"],
            "latency_one_thread": latency(synthetic, queries=options.queries, candidate_k=options.candidate_k)}


# the commands that write a report of their own: (parsed flags, the command line) -> exit status
REPORTING_COMMANDS: dict[str, Callable[[argparse.Namespace, Sequence[str]], int]] = {
    "run": command_run, "live": command_live, "scale-out": command_scale_out, "reliability": command_reliability,
    "filtered": command_filtered, "gpu": command_gpu}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.command in REPORTING_COMMANDS:
            return REPORTING_COMMANDS[args.command](args, argv)
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
            options = REPORT_ARGS.build(args)
            write_text_atomic(options.output, render_report(options))
            return 0
        if args.command == "search":
            search = SEARCH_ARGS.build(args)
            output, report = search.output, run_search(search)
        else:
            synthetic = SYNTHETIC_ARGS.build(args)
            output, report = synthetic.output, run_synthetic(synthetic)
    except (IndexUnavailableError, DatasetError, FileNotFoundError, ValueError) as e:
        _logger.error("%s", e)
        return 2
    write_text_atomic(output, json.dumps(report, indent=2))
    _logger.info("wrote %s", output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
