"""Results table (Markdown) from the runs' results.json files, plus the sparsity trade-off curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROWS = (  # (run directory name, label, legs shown)
    ("align", "LiT base (align)", ("dense",)),
    ("dense", "dense baseline", ("dense",)),
    ("d2s", "D2S (sparse from frozen dense)", ("sparse",)),
    ("no_kd", "no-KD ablation", ("dense", "sparse", "integrated")),
    ("frozen_final", "frozen final layer", ("dense", "sparse", "integrated")),
    ("skd", "SKD (ours)", ("dense", "sparse", "integrated")),
)


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def results_table(runs: Path, split: str = "test") -> str:
    header = ("| model | leg | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 | terms/caption | "
              "terms/image | FLOPs | best epoch | train s |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, label, legs in ROWS:
        path = runs / name / "results.json"
        if not path.is_file():
            lines.append(f"| {label} | (not run: {path} missing) |" + " |" * 11)
            continue
        res = json.loads(path.read_text())
        m = res[split]
        for leg in legs:
            sp = m["sparsity"]
            sparse_cols = (f"{sp['active_terms_query']:.0f} | {sp['active_terms_doc']:.0f} | {sp['flops']:.1f}"
                           if leg != "dense" else "- | - | -")
            t2i, i2t = m[leg]["t2i"], m[leg]["i2t"]
            lines.append(f"| {label} | {leg} | {_fmt(t2i['R@1'])} | {_fmt(t2i['R@5'])} | {_fmt(t2i['R@10'])} | "
                         f"{_fmt(i2t['R@1'])} | {_fmt(i2t['R@5'])} | {_fmt(i2t['R@10'])} | {sparse_cols} | "
                         f"{res['best_epoch']} | {res['train_seconds']:.0f} |")
    return "\n".join(lines)


def tradeoff_table(points: list[dict[str, Any]]) -> str:
    lines = ["| top-k caption | top-k image | terms/caption | terms/image | FLOPs | sparse t2i R@1 | sparse i2t R@1 |"
             " integrated t2i R@1 |", "|---|---|---|---|---|---|---|---|"]
    for p in points:
        m = p["metrics"]
        lines.append(f"| {p['prune_query'] or 'all'} | {p['prune_doc'] or 'all'} | "
                     f"{m['sparsity']['active_terms_query']:.1f} | {m['sparsity']['active_terms_doc']:.1f} | "
                     f"{m['sparsity']['flops']:.2f} | {_fmt(m['sparse']['t2i']['R@1'])} | "
                     f"{_fmt(m['sparse']['i2t']['R@1'])} | {_fmt(m['integrated']['t2i']['R@1'])} |")
    return "\n".join(lines)


def runs_table(run_dirs: list[tuple[str, Path]], split: str) -> str:
    """One line per run: t2i R@1 of each leg, i2t R@1 of sparse, active terms; for option and sweep tables."""
    lines = ["| run | dense t2i R@1 | sparse t2i R@1 | sparse i2t R@1 | integrated t2i R@1 | terms/caption | "
             "terms/image | FLOPs | best epoch |", "|---|---|---|---|---|---|---|---|---|"]
    for label, run in run_dirs:
        path = run / "results.json"
        if not path.is_file():
            lines.append(f"| {label} | (not run) | | | | | | | |")
            continue
        res = json.loads(path.read_text())
        m = res[split]
        sp = m["sparsity"]
        lines.append(f"| {label} | {_fmt(m['dense']['t2i']['R@1'])} | {_fmt(m['sparse']['t2i']['R@1'])} | "
                     f"{_fmt(m['sparse']['i2t']['R@1'])} | {_fmt(m['integrated']['t2i']['R@1'])} | "
                     f"{sp['active_terms_query']:.0f} | {sp['active_terms_doc']:.0f} | {sp['flops']:.1f} | "
                     f"{res['best_epoch']} |")
    return "\n".join(lines)
