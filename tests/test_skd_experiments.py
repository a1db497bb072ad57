"""The experiment harness and CLI: pass rules on hand-made results, and ``all --smoke`` over every registered one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.experiments.cli import main
from training.experiments.harness import Experiment, SeedResult, required_wins, run_experiment, verdict
from training.experiments.registry import EXPERIMENTS


def _exp(results: list[tuple[float, float]], *, higher: bool = True, paired: bool = False,
         extra_ok: bool | None = None) -> Experiment:
    return Experiment(name="fake", title="Fake", metric="m", higher_is_better=higher, claim="c", in_spirit_of=True,
                      reconstructed=("r",), seeds=len(results), paired_rule=paired,
                      run_seed=lambda seed, _smoke: SeedResult(*results[seed], loss_decreased=True, extra={"x": 1.0}),
                      extra_rule=None if extra_ok is None else (lambda _results: (extra_ok, "extra")))


def test_pass_rules() -> None:
    assert [required_wins(n) for n in (1, 3, 4, 5)] == [1, 3, 3, 4]
    rs = [SeedResult(1.0, 2.0, True), SeedResult(1.0, 2.0, True), SeedResult(1.0, 0.5, True)]
    assert verdict(_exp([(0, 0)] * 3), rs)[:2] == (True, 2)
    assert verdict(_exp([(0, 0)] * 3, paired=True), rs)[0] is False  # 2 of 3 wins < ceil(3/2)+1
    assert verdict(_exp([(0, 0)] * 3, higher=False), rs)[0] is False  # lower is better: the method lost
    assert verdict(_exp([(0, 0)] * 3, extra_ok=False), rs)[0] is False


def test_run_experiment_json(tmp_path: Path) -> None:
    report = run_experiment(_exp([(1.0, 3.0), (2.0, 2.5), (1.0, 1.5)], paired=True), seeds=None, smoke=False,
                            threads=1, out=tmp_path)
    saved = json.loads((tmp_path / "fake.json").read_text())
    assert saved == report and saved["verdict"] == "held" and saved["paired_wins"] == 3
    assert saved["method"]["mean"] == pytest.approx(7 / 3) and saved["difference"]["mean"] == pytest.approx(1.0)
    assert {"name", "title", "claim", "metric", "higher_is_better", "in_spirit_of", "reconstructed", "seeds",
            "per_seed", "baseline", "method", "difference", "paired_wins", "verdict", "smoke", "seconds",
            "torch_version", "threads"} <= set(saved)


def test_all_smoke_and_table(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    assert main(["all", "--smoke", "--threads", "1", "--out", str(out), "--log-level", "WARNING"]) == 0
    reports = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(reports) == set(EXPERIMENTS)
    assert all(r["smoke"] and r["seeds"] == 1 and r["per_seed"][0]["loss_decreased"] for r in reports.values())
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- experiments:start -->\nold\n<!-- experiments:end -->\nrest\n")
    assert main(["table", "--out", str(out), "--readme", str(readme), "--log-level", "WARNING"]) == 0
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert all(f"(`{name}`)" in text for name in EXPERIMENTS)
    assert "Reconstructed details" in (out / "README.md").read_text()
