"""``python -m training METHOD|cache|evaluate ...``: the training command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from core.data import MSCOCO_TRAIN_PAIRS
from core.progress import setup_logging
from training.config import TrainConfig, build_config
from training.methods import METHODS
from training.presets import LIT_BASE, PRESETS, STANDALONE_PRESETS

_logger = logging.getLogger("training")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="JSON file merged over the method's preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field, e.g. --set optim.lr=5e-4 (repeatable)")
    parser.add_argument("--data", help="dataset directory (shortcut for --set data.dataset_dir=...)")


def _config(args: argparse.Namespace, base: dict[str, Any]) -> TrainConfig:
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.dataset_dir={args.data}")
    return build_config(base, config_file=args.config, overrides=overrides)


def _add_train_args(p: argparse.ArgumentParser, base: dict[str, Any]) -> None:
    _add_config_args(p)
    p.add_argument("--run-dir", required=True, help="output directory (best/, results.json, metrics.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    p.add_argument("--overwrite", action="store_true", help="start over in a non-empty --run-dir")
    p.set_defaults(train_base=base)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    # One training command per registered method (its preset, or the bare method), then the named presets.
    for m in METHODS.values():
        base = PRESETS[m.preset] if m.preset is not None else {"method": m.name}
        _add_train_args(sub.add_parser(m.name, help=m.description, description=m.description), base)
        for alias in m.aliases:  # accepted, but without help= argparse leaves them out of the command list
            _add_train_args(sub.add_parser(alias, description=m.description), base)
    for name, text in STANDALONE_PRESETS.items():
        _add_train_args(sub.add_parser(name, help=text, description=text), PRESETS[name])
    p = sub.add_parser("cache", help="compute the feature cache of a dataset (resumable)")
    _add_config_args(p)
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a split (exact scoring)")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--prune-query", type=int, default=None, help="keep the top-k terms per caption")
    p.add_argument("--prune-doc", type=int, default=None, help="keep the top-k terms per image")
    p.add_argument("--output", help="write the metrics JSON here")
    p = sub.add_parser("speed", help="measure caching throughput and SKD vs dense step time (benchmark)")
    _add_config_args(p)
    p.add_argument("--images", type=int, default=512, help="images for the throughput probe")
    p.add_argument("--steps", type=int, default=20, help="optimiser steps per method")
    p.add_argument("--init-checkpoint", default=LIT_BASE, help="LiT base for the step probe")
    p.add_argument("--epoch-pairs", type=int, default=0,
                   help=f"also time an epoch of this many pairs per method (MSCOCO's: {MSCOCO_TRAIN_PAIRS:,}); 0: not")
    p.add_argument("--align-run", help="first run align for one epoch in this directory (set-up, epoch and final "
                   "evaluation timed); its checkpoint is then the LiT base of the step probe")
    p.add_argument("--compile", default="off", choices=get_args(TrainConfig.model_fields["compile_step"].annotation),
                   help="also time dense, skd and grounded with their step compiled this way (compile_step): the "
                   "first steps (compilation), a step, the epoch and the kernels a step launches")
    p.add_argument("--output", help="write the measurements JSON here")
    p = sub.add_parser("probe", help="the readability ceiling: a linear multi-label word probe on the frozen image "
                       "features (GP@k on val and test)")
    _add_config_args(p)
    p.add_argument("--min-df", type=int, default=2, help="probe words: content pieces (or, with --set "
                   "model.sparse_head.vocabulary=words, words) in at least this many captions")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--output", help="write the probe's figures (JSON) here")
    p = sub.add_parser("report", help="write the results table and the sparsity trade-off (docs/results.md)")
    _add_config_args(p)
    p.add_argument("--runs", default="runs", help="directory holding align/, skd/, dense/, ... run directories")
    p.add_argument("--output", default="docs/results.md")
    p.add_argument("--notes", default="docs/results-notes.md", help="hand-written analysis appended if present")
    p.add_argument("--probe", default="docs/readability-probe.json",
                   help="the word probe's figures (python -m training probe --output ...), shown as the ceiling")
    p.add_argument("--word-probe", default="docs/readability-probe-words.json",
                   help="the probe over whole words (python -m training probe --set model.sparse_head.vocabulary=words "
                   "--set model.sparse_head.inflections=merge --output ...), the ceiling of the word section")
    # the usage line lists the commands shown in the help, not the older spellings
    aliases = {alias for m in METHODS.values() for alias in m.aliases}
    sub.metavar = "{" + ",".join(name for name in sub.choices if name not in aliases) + "}"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    from training import trainer  # heavy imports after argument parsing, so --help stays fast

    try:
        if args.command == "cache":
            config = _config(args, PRESETS["align"])
            ws = trainer.prepare_workspace(config)
            _logger.info("feature cache ready: %s (%d images, %d captions)", ws.cache.directory,
                         len(ws.cache.images.ids), len(ws.cache.texts.ids))
            return 0
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "report":
            return _report(args)
        if args.command == "probe":
            return _probe(args)
        if args.command == "speed":
            return _speed(args)
        config = _config(args, args.train_base)
        results = trainer.train(config, args.run_dir, resume=args.resume, overwrite=args.overwrite)
        summary = {leg: results["test"][leg]["t2i"] for leg in ("dense", "sparse", "integrated")}
        _logger.info("test (val-selected epoch %d): %s", results["best_epoch"], json.dumps(summary))
        return 0
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no traceback
        _logger.error("%s", e)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        _logger.error("interrupted: the feature cache keeps its finished shards, and --resume continues a run from "
                      "its last finished epoch")
        return 130


def _evaluate(args: argparse.Namespace) -> int:
    from core.atomic import write_text_atomic
    from core.checkpoint import load_checkpoint
    from training import trainer
    from training.evaluate import evaluate_model
    from training.features import in_term_space, split_features

    config = _config(args, PRESETS["align"])
    ws = trainer.prepare_workspace(config)
    checkpoint = load_checkpoint(args.checkpoint, expected_fingerprint=ws.backbone.fingerprint)
    terms = ws.backbone.term_space(checkpoint.model.sparse_head.words)
    features = in_term_space(split_features(ws.dataset, ws.cache, args.split, tokenizer=ws.backbone.tokenizer), terms)
    train = in_term_space(split_features(ws.dataset, ws.cache, config.data.train_split,
                                         tokenizer=ws.backbone.tokenizer), terms)
    metrics = evaluate_model(checkpoint.model, features, prune_query=args.prune_query, prune_doc=args.prune_doc,
                             grounding=trainer.grounding_reference(terms, train))
    text = json.dumps(metrics, indent=2)
    if args.output:
        write_text_atomic(args.output, text)
    sys.stdout.write(text + "\n")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from core.atomic import write_text_atomic
    from training import trainer
    from training.features import in_term_space, split_features
    from training.probe import train_probe

    config = _config(args, PRESETS["align"])
    ws = trainer.prepare_workspace(config)
    splits = {name: split_features(ws.dataset, ws.cache, getattr(config.data, f"{name}_split"),
                                   tokenizer=ws.backbone.tokenizer) for name in ("train", "val", "test")}
    # caption pieces, or words with --set model.sparse_head.vocabulary=words (and its inflections option)
    terms = trainer.term_space_for(config, ws.backbone, splits["train"])
    splits = {name: in_term_space(split, terms) for name, split in splits.items()}
    reference = trainer.grounding_reference(terms, splits["train"])
    result = train_probe(reference, splits["train"], splits["val"], splits["test"], min_df=args.min_df,
                         epochs=args.epochs)
    result["frequency_floor"] = {name: reference.floor(split.caption_terms, split.caption_image,
                                                       len(split.image_ids))
                                 for name, split in splits.items() if name != "train"}
    text = json.dumps(result, indent=2)
    if args.output:
        write_text_atomic(args.output, text)
    sys.stdout.write(text + "\n")
    return 0


# Pruning grid of the sparsity trade-off (top-k terms per caption, per image); None keeps every term.
TRADEOFF_GRID: tuple[tuple[int | None, int | None], ...] = (
    (None, None), (64, 256), (40, 200), (40, 100), (32, 100), (20, 64), (16, 50), (10, 32))


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from core.atomic import write_text_atomic
    from core.checkpoint import load_checkpoint
    from training import trainer
    from training.evaluate import encode_split, evaluate_encoded
    from training.features import split_features
    from training.report import (
        GROUNDING_INTRO,
        GROUNDING_RUNS,
        grounding_table,
        readability_table,
        results_table,
        runs_table,
        tradeoff_plot,
        tradeoff_table,
        word_sections,
    )

    runs = Path(args.runs)
    sections = ["# Results on Flickr8k (1K test, val-selected checkpoints)", "",
                "Generated by `python -m training report` from `runs/*/results.json`; every row is reproduced by "
                "`make results` (scripts/reproduce_flickr8k.sh). Recall in percent; exact in-process scoring. "
                "Dense = cosine; sparse = dot product of the term vectors; integrated = w1 * cos / temperature + "
                "w2 * sparse (the training teacher). i2t counts a hit when any of the image's 5 captions is in "
                "the top k. Active terms and FLOPs (expected multiplications per query-document pair) are on the "
                "test split.", "", "## Test", "", results_table(runs, "test"), "",
                "## Val (model selection split)", "", results_table(runs, "val"), ""]
    variants = sorted((runs / "variants").glob("*/")) if (runs / "variants").is_dir() else []
    if variants:
        sections += ["## Official-code options, one SKD run each (val)", "",
                     runs_table([("default: detach, transposed, train steps", runs / "skd"),
                                 *[(v.name, v) for v in variants]], "val"), ""]
    sweeps = sorted((runs / "sparsity").glob("*/")) if (runs / "sparsity").is_dir() else []
    if sweeps:
        rows = [("skd (default eta)", runs / "skd"), *[(s.name, s) for s in sweeps]]
        for split in ("val", "test"):
            sections += [f"## Sparsity regulariser sweep ({split})", "", runs_table(rows, split), ""]
    pruned: dict[str, list[dict[str, object]]] = {}
    skd = runs / "skd" / "best"
    if skd.is_dir():
        config = _config(args, PRESETS["align"])
        ws = trainer.prepare_workspace(config)
        model = load_checkpoint(skd, expected_fingerprint=ws.backbone.fingerprint).model
        for split in ("val", "test"):
            features = split_features(ws.dataset, ws.cache, split, tokenizer=ws.backbone.tokenizer)
            images, texts = encode_split(model, features)
            pruned[split] = [{"prune_query": prune_query, "prune_doc": prune_doc, "metrics": evaluate_encoded(
                images, texts, features.caption_image, w_dense=model.config.fusion_dense_weight,
                w_sparse=model.config.fusion_sparse_weight, temperature=float(model.temperature.detach()),
                prune_query=prune_query, prune_doc=prune_doc)} for prune_query, prune_doc in TRADEOFF_GRID]
    grounding = [(label, runs / "grounding" / name) for name, label in GROUNDING_RUNS
                 if (runs / "grounding" / name / "results.json").is_file()]
    if grounding or (runs / "grounded" / "results.json").is_file():
        rows = [("latent (skd, the paper)", runs / "skd"), *grounding,
                ("grounded (the default preset)", runs / "grounded")]
        probe_path = Path(args.probe)
        probe = json.loads(probe_path.read_text()) if probe_path.is_file() else None
        sections += ["## Grounded sparse terms (`python -m training grounded`, scripts/grounding_sweep.sh)", "",
                     GROUNDING_INTRO, ""]
        plot = Path(args.output).with_name("grounding-tradeoff.png")
        tradeoff_plot(rows, pruned.get("test", []), plot)
        sections += [f"![Sparse and hybrid t2i R@1 against FLOPs and GP@10 (test)]({plot.name})", ""]
        for split in ("test", "val"):
            sections += [f"### Recall, sparsity and GP@10 ({split})", "", grounding_table(rows, split), "",
                         f"### Readability of the image vectors ({split})", "",
                         readability_table(rows, split, probe=probe), ""]
    word_probe_path = Path(args.word_probe)
    sections += word_sections(runs, json.loads(word_probe_path.read_text()) if word_probe_path.is_file() else None)
    for split, points in pruned.items():
        sections += [f"## Sparsity trade-off of SKD by top-k pruning ({split})", "", tradeoff_table(points), ""]
    notes = Path(args.notes)
    if notes.is_file():
        sections += [notes.read_text()]
    write_text_atomic(args.output, "\n".join(sections) + "\n")
    _logger.info("wrote %s", args.output)
    return 0


def _speed(args: argparse.Namespace) -> int:
    import platform

    import torch

    from core.atomic import write_text_atomic
    from training import trainer
    from training.speed import StepRunner, align_run, method_figures, tower_throughput

    base = _config(args, PRESETS["align"])
    ws = trainer.prepare_workspace(base)
    device = trainer.resolve_device(base.device)
    out: dict[str, Any] = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                       "torch_threads": torch.get_num_threads(), "device": device}}
    if device == "cuda":
        out["machine"]["gpu"] = torch.cuda.get_device_name()
    if args.images > 0:
        out["throughput"] = tower_throughput(ws, images=args.images, device=device)
    lit_base = args.init_checkpoint
    if args.align_run:
        out["align_run"] = align_run(base, ws, Path(args.align_run))
        lit_base = str(Path(args.align_run) / "best")
    # grounded_head_on_dense: the grounded preset with the paper's head input (the 256-d dense vector instead of
    # the 1,280-d frozen features), the `always` mode at its cheapest
    variants = {"dense": (PRESETS["dense"], []), "skd": (PRESETS["skd"], []), "grounded": (PRESETS["grounded"], []),
                "grounded_head_on_dense": (PRESETS["grounded"], ["model.sparse_head.head_input=dense",
                                                                 "model.sparse_head.input_dropout=0.0"])}
    if args.align_run:
        variants = {"align": (PRESETS["align"], []), **variants}
    methods: dict[str, dict[str, Any]] = {}
    for name, (preset, extra) in variants.items():
        config = build_config({**preset, "init_checkpoint": lit_base}, overrides=[*extra, *args.overrides])
        methods[name] = method_figures(StepRunner(config, ws), steps=args.steps, epoch_pairs=args.epoch_pairs)
        if args.compile != "off" and name in ("dense", "skd", "grounded"):
            compiled = config.model_copy(update={"compile_step": args.compile})
            try:
                methods[name]["compiled"] = method_figures(StepRunner(compiled, ws), steps=args.steps,
                                                           epoch_pairs=args.epoch_pairs)
            except Exception as error:  # a compiler stack that fails here (no triton, no C++ compiler) costs only these
                _logger.warning("%s: the compiled step failed: %s", name, error)
                methods[name]["compiled"] = {"error": f"{type(error).__name__}: {error}"[:1000]}
    steps = {name: figures["step_seconds"] for name, figures in methods.items()}
    out["methods"] = methods
    out["step_seconds"] = steps
    out["over_dense_step"] = {name: seconds / steps["dense"] for name, seconds in steps.items() if name != "dense"}
    if args.compile != "off":
        compiled_steps = {name: f["compiled"]["step_seconds"] for name, f in methods.items()
                          if "step_seconds" in f.get("compiled", {})}
        out["compiled"] = {"mode": args.compile, "step_seconds": compiled_steps,
                           "over_dense_step": {name: seconds / compiled_steps["dense"]
                                               for name, seconds in compiled_steps.items()
                                               if name != "dense" and "dense" in compiled_steps},
                           "over_eager_step": {name: seconds / steps[name] for name, seconds in compiled_steps.items()}}
    text = json.dumps(out, indent=2)
    if args.output:
        write_text_atomic(args.output, text)
    sys.stdout.write(text + "\n")
    return 0
