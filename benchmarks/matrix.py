"""The results matrix: expected scores per condition with tolerances, checked against a fresh run.

A matrix file (JSON) names the dataset, split and checkpoint it was recorded with, and rows of
``{"condition": "...", "path": "quality/t2i/hybrid/R@1", "expected": 20.9, "tolerance": 1.0}``; a path walks the
run report (dict keys, or list positions as numbers). ``python -m benchmarks check`` re-runs the stages the rows
need and prints OK or FAIL per row; any FAIL (or a missing value) makes the command fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from benchmarks.datasets import PRESETS
from indexer.params import MODES

# which runner stage produces each top-level report key
STAGE_OF = {"quality": "quality", "headline": "quality", "sizes": "quality", "build": "quality",
            "weight_sweep": "sweeps", "pruning": "sweeps", "encoding": "efficiency", "batched": "efficiency",
            "latency": "efficiency", "peers": "peers", "scale": "scale", "readability": "readability"}


class MatrixRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    condition: str
    path: str
    expected: float
    tolerance: float = Field(ge=0)


class ResultsMatrix(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    split: str
    checkpoint: str = Field(description="the checkpoint the expectations were recorded with (default for check)")
    recorded: str = Field(description="where the expectations come from (report and date)")
    rows: list[MatrixRow] = Field(min_length=1)

    @classmethod
    def load(cls, path: str | Path) -> ResultsMatrix:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"results matrix not found: {file}")
        matrix = cls.model_validate_json(file.read_text())
        if matrix.dataset not in PRESETS:
            raise ValueError(f"{file}: unknown dataset {matrix.dataset!r}")
        for row in matrix.rows:
            if row.path.split("/")[0] not in STAGE_OF:
                raise ValueError(f"{file}: row {row.condition!r} path {row.path!r} starts with an unknown key")
        return matrix

    def stages(self) -> tuple[str, ...]:
        return tuple(sorted({"quality", *(STAGE_OF[row.path.split("/")[0]] for row in self.rows)}))


def lookup(report: dict[str, Any], path: str) -> float | None:
    node: Any = report
    for part in path.split("/"):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return float(node) if isinstance(node, int | float) else None


def check(matrix: ResultsMatrix, report: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per row: OK when |measured - expected| <= tolerance."""
    verdicts = []
    for row in matrix.rows:
        measured = lookup(report, row.path)
        ok = measured is not None and abs(measured - row.expected) <= row.tolerance
        verdicts.append({"condition": row.condition, "path": row.path, "expected": row.expected,
                         "tolerance": row.tolerance, "measured": measured, "status": "OK" if ok else "FAIL"})
    return verdicts


def render(verdicts: list[dict[str, Any]]) -> str:
    width = max(len(v["condition"]) for v in verdicts)
    lines = []
    for v in verdicts:
        measured = "missing" if v["measured"] is None else f"{v['measured']:.2f}"
        lines.append(f"{v['status']:<4}  {v['condition']:<{width}}  measured {measured:>8}  expected "
                     f"{v['expected']:.2f} ± {v['tolerance']:.2f}")
    failed = sum(v["status"] == "FAIL" for v in verdicts)
    lines.append(f"{len(verdicts) - failed}/{len(verdicts)} OK" + (f", {failed} FAIL" if failed else ""))
    return "\n".join(lines)


def dump_rows(report: dict[str, Any], paths: list[tuple[str, str, float]]) -> list[dict[str, Any]]:
    """Matrix rows recorded from a report: (condition, path, tolerance) -> row with the measured value."""
    rows = []
    for condition, path, tolerance in paths:
        value = lookup(report, path)
        if value is None:
            raise KeyError(f"{path} not in the report")
        rows.append({"condition": condition, "path": path, "expected": round(value, 2), "tolerance": tolerance})
    return rows


def default_paths(report: dict[str, Any] | None = None) -> list[tuple[str, str, float]]:
    """The rows a matrix records by default: R@1/5/10 both directions per mode, RSUM, Lucene vs exact, and the
    sparse terms' readability and sparsity when ``report`` measured them."""
    paths = []
    for direction in ("t2i", "i2t"):
        for mode in (*MODES, "sparse_exact"):
            for k in (1, 5, 10):
                paths.append((f"{direction} {mode} R@{k}", f"quality/{direction}/{mode}/R@{k}", 1.0))
    for mode in MODES:
        paths.append((f"RSUM {mode}", f"quality/rsum/{mode}", 3.0))
    for direction in ("t2i", "i2t"):
        paths.append((f"{direction} Lucene minus exact sparse R@10", f"quality/{direction}/lucene_minus_exact_R@10",
                      0.5))
    if report is not None and "readability" in report:
        paths += [(f"image terms GP@{k}", f"readability/images/GP@{k}", 0.02) for k in (5, 10, 20)]
        paths += [("FLOPs per caption-image pair", "readability/flops", 0.2),
                  ("terms per caption", "readability/texts/mean_terms", 0.5)]
    return paths


def record(report: dict[str, Any], *, source: str) -> str:
    """A matrix file (JSON text) with the default rows measured in ``report``."""
    matrix = {"dataset": report["dataset"]["name"], "split": report["dataset"]["split"],
              "checkpoint": report["checkpoint"]["path"], "recorded": source,
              "rows": dump_rows(report, default_paths(report))}
    ResultsMatrix.model_validate(matrix)
    return json.dumps(matrix, indent=2) + "\n"
