"""The hand-written argparse CLIs before they were generated from the config models, frozen as a reference.

tests/test_cli_compat.py parses the same command lines with these and with the generated CLIs and compares the
configurations. Only the parsers and the namespace -> config steps are kept; edit nothing here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.knobs import KnobGrid
from benchmarks.matrix import ResultsMatrix
from benchmarks.runner import RunConfig
from indexer.build import IndexBuildConfig
from service.settings import ServiceSettings


# ----- python -m indexer -----
def indexer_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m indexer")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="encode a collection and publish its indexes (atomically)")
    p.add_argument("--checkpoint", required=True, help="Duet checkpoint directory, e.g. runs/skd/best")
    p.add_argument("--out", required=True, help="index directory to publish (replaced only when complete)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", help="Karpathy-format dataset directory (default: the DUET_DATA setting)")
    source.add_argument("--folder", help="a plain folder of images (optional metadata.jsonl with captions)")
    p.add_argument("--image-root", help="image root of the Karpathy dataset (default <data>/images)")
    p.add_argument("--splits", default="test", help="comma-separated Karpathy splits, e.g. test or train,val,test")
    # the default moved from Flat to auto (flat up to 100,000 items a side, HNSW above): a line that names no factory
    # gets the new default either way
    p.add_argument("--faiss-factory", default="auto", help="FAISS index_factory string (inner product)")
    p.add_argument("--scale", type=float, default=100.0, help="sparse impact quantisation: round(weight * scale)")
    p.add_argument("--prune-image-terms", type=int, help="keep each image's top-k terms")
    p.add_argument("--prune-text-terms", type=int, help="keep each text's top-k terms")
    p.add_argument("--cache-root", default="artifacts/cache", help="feature cache root (shared with training)")
    p.add_argument("--skip-corrupt", action="store_true", help="list and skip unreadable images")
    p.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("verify", help="check an index's counts, ids and file hashes")
    p.add_argument("--index", required=True)
    p.add_argument("--checkpoint", help="also check the index was built from this checkpoint")
    return parser


def index_build_config(args: argparse.Namespace) -> IndexBuildConfig:
    fields: dict[str, object] = {
        "checkpoint": args.checkpoint, "output": args.out, "splits": tuple(s for s in args.splits.split(",") if s),
        "faiss_factory": args.faiss_factory, "sparse_scale": args.scale, "prune_image_terms": args.prune_image_terms,
        "prune_text_terms": args.prune_text_terms, "cache_root": args.cache_root, "skip_corrupt": args.skip_corrupt,
        "threads": args.threads,
    }
    if args.folder:
        fields.update(source="folder", dataset=args.folder)
    else:
        fields.update(source="karpathy", image_root=args.image_root)
        if args.data:
            fields["dataset"] = args.data
    return IndexBuildConfig.model_validate(fields)


# ----- python -m benchmarks -----
def benchmarks_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parsers(sub)
    p = sub.add_parser("search")
    p.add_argument("--index", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--latency-queries", type=int, default=200)
    p.add_argument("--candidate-k", type=int, default=100)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--http", action="store_true")
    p = sub.add_parser("synthetic")
    p.add_argument("--index", required=True)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--work", default="artifacts/synthetic")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--candidate-k", type=int, default=100)
    p.add_argument("--output", required=True)
    p = sub.add_parser("report")
    p.add_argument("--search", nargs="+", required=True)
    p.add_argument("--synthetic", nargs="*", default=[])
    p.add_argument("--output", required=True)
    p.add_argument("--notes", default="docs/benchmarks/earlier/notes.md")
    return parser


def _add_run_parsers(sub: Any) -> None:
    p = sub.add_parser("run")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", default="flickr8k")
    p.add_argument("--data")
    p.add_argument("--image-root")
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True)
    p.add_argument("--work", default=str(RunConfig.model_fields["work"].default))
    p.add_argument("--index")
    p.add_argument("--cache-root", default=str(RunConfig.model_fields["cache_root"].default))
    p.add_argument("--peers", default=",".join(RunConfig.model_fields["peers"].default))
    p.add_argument("--scales", default=",".join(map(str, RunConfig.model_fields["scales"].default)))
    p.add_argument("--knob-scales", default=",".join(map(str, RunConfig.model_fields["knob_scales"].default)))
    grid = KnobGrid()
    p.add_argument("--knob-candidate-k", default=",".join(map(str, grid.candidate_k)))
    p.add_argument("--knob-ef-search", default=",".join(map(str, grid.ef_search)))
    p.add_argument("--knob-query-cut", default=",".join(map(str, grid.query_cut)))
    p.add_argument("--stages", default=",".join(RunConfig.model_fields["stages"].default))
    p.add_argument("--prune-terms", default=",".join(map(str, RunConfig.model_fields["prune_terms"].default)))
    p.add_argument("--weight-grid", default=",".join(map(str, RunConfig.model_fields["weight_grid"].default)))
    p.add_argument("--latency-queries", type=int, default=200)
    p.add_argument("--scale-queries", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-threads", type=int, default=2)
    p.add_argument("--resume", action="store_true")
    p = sub.add_parser("check")
    p.add_argument("--matrix", required=True)
    p.add_argument("--checkpoint")
    p.add_argument("--data")
    p.add_argument("--work", default=str(RunConfig.model_fields["work"].default))
    p.add_argument("--cache-root", default=str(RunConfig.model_fields["cache_root"].default))
    p.add_argument("--output")


def _csv(text: str, kind: type) -> tuple:
    return tuple(kind(x) for x in text.split(",") if x.strip())


def run_config(args: argparse.Namespace) -> RunConfig:
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


def check_config(args: argparse.Namespace, matrix: ResultsMatrix, out: Path) -> RunConfig:
    return RunConfig(checkpoint=args.checkpoint or matrix.checkpoint, dataset=matrix.dataset, data=args.data,
                     split=matrix.split, out=out, work=args.work, stages=matrix.stages(), cache_root=args.cache_root)


# ----- python -m service -----
def service_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service")
    parser.add_argument("--index", dest="index_dir")
    parser.add_argument("--checkpoint")
    parser.add_argument("--collection-root")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--log-level", default="INFO")
    return parser


def service_settings(args: argparse.Namespace) -> ServiceSettings:
    flags = {name: getattr(args, name) for name in ("index_dir", "checkpoint", "collection_root", "host", "port")}
    return ServiceSettings(**{name: value for name, value in flags.items() if value is not None})
