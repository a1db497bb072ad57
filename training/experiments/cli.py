"""``python -m training.experiments NAME|all|table [--seeds N] [--smoke] [--threads T] [--out DIR]``."""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from core.progress import setup_logging

_logger = logging.getLogger("training.experiments")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "docs" / "experiments"


def build_parser(names: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.experiments", description=__doc__)
    parser.add_argument("target", choices=[*names, "all", "table"],
                        help="an experiment, 'all' of them, or 'table' (regenerate the verdict table)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the experiment's)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 seed, a few steps; exit 1 if a method's training loss did not decrease")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON directory (default {DEFAULT_OUT}; a temporary one for --smoke)")
    parser.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md",
                        help="README whose '<!-- experiments:start/end -->' block 'table' replaces")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from training.experiments.harness import run_experiment, write_table
    from training.experiments.registry import EXPERIMENTS

    args = build_parser(list(EXPERIMENTS)).parse_args(argv)
    setup_logging(args.log_level)
    if args.target == "table":
        write_table(args.out or DEFAULT_OUT, args.readme)
        return 0
    if args.seeds is not None and args.seeds < 1:
        _logger.error("--seeds must be >= 1")
        return 2
    out = args.out or (Path(tempfile.mkdtemp(prefix="skd-smoke-")) if args.smoke else DEFAULT_OUT)
    names = list(EXPERIMENTS) if args.target == "all" else [args.target]
    failed = []
    for name in names:
        report = run_experiment(EXPERIMENTS[name], seeds=args.seeds, smoke=args.smoke, threads=args.threads, out=out)
        if args.smoke and not all(s["loss_decreased"] for s in report["per_seed"]):
            failed.append(name)
    _logger.info("wrote %d result file(s) to %s", len(names), out)
    if failed:
        _logger.error("training loss did not decrease in: %s", ", ".join(failed))
        return 1
    return 0
