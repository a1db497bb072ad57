"""Runs an SKD mini-experiment over seeds, applies the pass rule and writes its JSON atomically.

The pass rule: the method beats its plain baseline on the seed mean; where the experiment asks, also in
>= ceil(n/2)+1 paired seeds, and further clauses of its claim (``ExtraRule``)."""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.atomic import write_text_atomic

_logger = logging.getLogger("training.experiments")


@dataclass(frozen=True)
class SeedResult:
    baseline: float  # the plain baseline's metric on this seed (same data, same budget, no SKD)
    method: float  # the SKD method's metric on this seed
    loss_decreased: bool  # first vs last training loss of the method run (what --smoke checks)
    extra: dict[str, float] = field(default_factory=dict)


# Extra pass conditions beyond "method beats baseline" (claims with several clauses): given the per-seed
# results, return (held, one line saying which clauses held). The verdict needs the main rule AND this one.
ExtraRule = Callable[[Sequence[SeedResult]], tuple[bool, str]]


@dataclass(frozen=True)
class Experiment:
    name: str  # CLI name, e.g. "als"
    title: str  # "Adaptive label smoothing with self-knowledge (Lee et al., EMNLP 2022)"
    metric: str  # e.g. "test accuracy (%)"
    higher_is_better: bool
    claim: str  # the paper's claimed direction, in words
    in_spirit_of: bool  # True when the experiment rests on reconstructed details ([R])
    reconstructed: tuple[str, ...]  # which details are reconstructed (shown in the README)
    seeds: int  # default number of seeds (>= 3)
    paired_rule: bool  # True: also needs wins in >= ceil(n/2)+1 paired seeds
    run_seed: Callable[[int, bool], SeedResult]  # (seed, smoke) -> result; smoke = a few steps only
    extra_rule: ExtraRule | None = None  # optional further clauses of the claim's pass rule


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample std (0 for a single value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def seed_mean(results: Sequence[SeedResult], key: str) -> float:
    """Seed mean of one ``extra`` value (for extra rules)."""
    return statistics.fmean(r.extra[key] for r in results)


def all_clauses(clauses: dict[str, bool]) -> tuple[bool, str]:
    """An extra rule's result from named clauses: (all held, "clause: yes; clause: no; ...")."""
    return all(clauses.values()), "; ".join(f"{text}: {'yes' if held else 'no'}" for text, held in clauses.items())


def required_wins(n: int) -> int:
    return math.ceil(n / 2) + 1 if n > 1 else 1


def verdict(exp: Experiment, results: Sequence[SeedResult]) -> tuple[bool, int, list[str]]:
    """(held, paired wins, reasons). 'Better' is strict in the claimed direction, on the seed mean."""
    sign = 1.0 if exp.higher_is_better else -1.0
    diffs = [sign * (r.method - r.baseline) for r in results]
    wins = sum(d > 0 for d in diffs)
    reasons = [f"seed-mean difference {'favours' if statistics.fmean(diffs) > 0 else 'does not favour'} the method"]
    held = statistics.fmean(diffs) > 0
    if exp.paired_rule:
        need = required_wins(len(results))
        reasons.append(f"paired wins {wins}/{len(results)} (need {need})")
        held = held and wins >= need
    if exp.extra_rule is not None:
        extra_held, text = exp.extra_rule(results)
        reasons.append(text)
        held = held and extra_held
    return held, wins, reasons


def run_experiment(exp: Experiment, *, seeds: int | None, smoke: bool, threads: int, out: Path) -> dict[str, Any]:
    """Run the seeds (0..n-1), write ``out/<name>.json`` and return its content."""
    n = 1 if smoke else (seeds or exp.seeds)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    results: list[SeedResult] = []
    for seed in range(n):
        t0 = time.perf_counter()
        result = exp.run_seed(seed, smoke)
        results.append(result)
        _logger.info("%s seed %d: baseline %.4f, method %.4f, loss decreased %s (%.1f s)", exp.name, seed,
                     result.baseline, result.method, result.loss_decreased, time.perf_counter() - t0)
    held, wins, reasons = verdict(exp, results)
    extra_keys = sorted({k for r in results for k in r.extra})
    report: dict[str, Any] = {
        "name": exp.name, "title": exp.title, "claim": exp.claim, "metric": exp.metric,
        "higher_is_better": exp.higher_is_better, "in_spirit_of": exp.in_spirit_of,
        "reconstructed": list(exp.reconstructed), "seeds": n,
        "per_seed": [{"seed": i, "baseline": r.baseline, "method": r.method, "loss_decreased": r.loss_decreased,
                      "extra": r.extra} for i, r in enumerate(results)],
        "baseline": mean_std([r.baseline for r in results]),
        "method": mean_std([r.method for r in results]),
        "difference": mean_std([r.method - r.baseline for r in results]),
        "extra": {k: mean_std([r.extra[k] for r in results if k in r.extra]) for k in extra_keys},
        "paired_wins": wins,
        "verdict": "held" if held else "did not hold",
        "verdict_reasons": reasons,
        "smoke": smoke,
        "seconds": round(time.perf_counter() - start, 2),
        "torch_version": torch.__version__,
        "threads": threads,
    }
    write_text_atomic(Path(out) / f"{exp.name}.json", json.dumps(report, indent=2) + "\n")
    _logger.info("%s: %s (%s)", exp.name, report["verdict"], "; ".join(reasons))
    return report


# ---- the verdict table (docs/experiments/README.md and the README block) ----------------------------------------

START, END = "<!-- experiments:start -->", "<!-- experiments:end -->"


def _fmt(stats: dict[str, float]) -> str:
    digits = 3 if abs(stats["mean"]) < 10 else 2  # small metrics (NLL, ECE) need the third decimal to differ
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def verdict_table(reports: Sequence[dict[str, Any]]) -> str:
    lines = ["| method | metric | baseline | SKD | claim | held? | in the spirit of |",
             "|---|---|---|---|---|---|---|"]
    for r in reports:
        held = "yes" if r["verdict"] == "held" else "**no**"
        if r.get("smoke"):
            held += " (smoke run)"
        lines.append(f"| {r['title']} (`{r['name']}`) | {r['metric']} | {_fmt(r['baseline'])} | "
                     f"{_fmt(r['method'])} | {r['claim']} | {held} | {'yes' if r['in_spirit_of'] else 'no'} |")
    return "\n".join(lines)


def reconstructed_list(reports: Sequence[dict[str, Any]]) -> str:
    lines = []
    for r in reports:
        for detail in r["reconstructed"]:
            lines.append(f"- `{r['name']}`: {detail}")
    return "\n".join(lines) if lines else "- none"


def load_reports(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.json"))]


def write_table(out: Path, readme: Path | None) -> str:
    """Regenerate ``out/README.md``; replace the marked block of ``readme`` when both markers are there."""
    reports = load_reports(out)
    table = verdict_table(reports)
    reasons = "\n".join(f"- `{r['name']}`: {r['verdict']}: {'; '.join(r.get('verdict_reasons', []))} "
                        f"({r['seeds']} seeds, {r['seconds']:.0f} s, {r['threads']} threads)" for r in reports)
    doc = ("# SKD mini-experiments\n\n"
           "Generated by `python -m training.experiments table` from the JSON files in this directory; each row is "
           "reproduced by `python -m training.experiments NAME`. Metrics are seed means ± sample std; 'held?' "
           "applies the method's pass rule, including paired-seed wins and extra clauses where the rule states "
           "them.\n\n"
           f"{table}\n\n## Why each verdict\n\n{reasons}\n\n"
           "## Reconstructed details (experiments marked 'in the spirit of')\n\n"
           f"{reconstructed_list(reports)}\n")
    write_text_atomic(Path(out) / "README.md", doc)
    if readme is not None and readme.exists():
        text = readme.read_text()
        if START in text and END in text and text.index(START) < text.index(END):
            head, rest = text.split(START, 1)
            _, tail = rest.split(END, 1)
            write_text_atomic(readme, f"{head}{START}\n{table}\n{END}{tail}")
            _logger.info("updated the experiments block of %s", readme)
    return doc
