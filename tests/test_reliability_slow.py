"""The reliability harness's slow-client part (benchmarks/reliability/slow.py) on its short budget against a real
``python -m service`` over the tiny index: 16 and then 64 sockets trickle a body beside ordinary searches."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reliability.config import ReliabilityConfig
from benchmarks.reliability.slow import TRICKLERS, run_slow

pytestmark = pytest.mark.java  # it serves a Lucene index


def test_trickling_sockets_leave_searches_answering_and_are_cut_off(tiny_index: Path, tmp_path: Path) -> None:
    config = ReliabilityConfig(index=tiny_index, build_folder=tmp_path, checkpoint=tiny_index / "current" /
                               "checkpoint", work=tmp_path / "work", out=tmp_path / "out", short=True)
    result = run_slow(config)
    goals = {goal.name: goal for goal in result.goals}
    for count in TRICKLERS:
        window = result.figures[f"tricklers_{count}"]
        assert goals[f"searches answered beside {count} trickling sockets"].met, window
        assert goals[f"trickling sockets cut off with 408 (of {count})"].met, window
        assert window["probe_statuses"] == {"200": window["probes"]}
    # a latency ratio on a loaded 2-core machine is the full run's to judge, not a test's: measured here, not judged
    assert all(result.figures[f"tricklers_{c}"]["p50_vs_baseline"] > 0 for c in TRICKLERS)
