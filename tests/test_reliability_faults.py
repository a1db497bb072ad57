"""The fault-injection part of the reliability harness (benchmarks/reliability/faults.py) in its short budget over
the tiny index: builds killed at random moments, the service killed during each kind of write, the CLI killed
during add and compact, a build into a full disk. And its checkers, fed a broken result, say so."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks.reliability.config import ReliabilityConfig
from benchmarks.reliability.faults import (
    ABSENT,
    CLEAR_DISK,
    SAFE_DISK,
    ItemState,
    judge,
    observed_state,
    ranking_differences,
    result_differences,
    run_faults,
)
from benchmarks.reliability.figures import PartResult
from tests.conftest import noise_png


@pytest.fixture(scope="module")
def build_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain folder of four distinct images with two captions each (both sides of an index)."""
    folder = tmp_path_factory.mktemp("folder")
    lines = []
    for n in range(4):
        (folder / f"noise_{n}.png").write_bytes(noise_png(200 + n))
        lines.append(json.dumps({"file": f"noise_{n}.png", "captions": [f"a red square number {n}", f"green dot {n}"]}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def short_run(tiny_checkpoint: Path, tiny_index: Path, build_folder: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[ReliabilityConfig, PartResult, str]:
    """One short run (about two minutes on two cores): the tests below read its result."""
    work = tmp_path_factory.mktemp("reliability")
    config = ReliabilityConfig(index=tiny_index, build_folder=build_folder, checkpoint=tiny_checkpoint,
                               work=work / "work", out=work / "out", short=True, seed=3)
    published = os.readlink(tiny_index / "current")
    return config, run_faults(config), published


def test_the_short_run_meets_every_goal(short_run: tuple[ReliabilityConfig, PartResult, str],
                                        tiny_index: Path) -> None:
    config, result, published = short_run
    assert result.part == "faults"
    missed = [g for g in result.goals if not g.met and g.name != CLEAR_DISK]
    assert not missed, (missed, result.findings)
    assert {g.name for g in result.goals} >= {SAFE_DISK, CLEAR_DISK}
    builds, writes = result.figures["builds"], result.figures["writes"]
    assert len(builds["kill_points_s"]) == config.budget.build_kills
    assert all(0 <= at <= builds["build_seconds"] for at in builds["kill_points_s"])
    assert {op: counts["kills"] for op, counts in writes["per_op"].items()} == {
        "add_image": 1, "add_text": 1, "replace": 1, "delete": 1, "compact": 1, "cli_add_text": 0,
        "cli_add_image": 1, "cli_compact": 1}
    assert writes["writes_kills"] == 7 and writes["writes_verifications"] == 8  # a verify per kill, one per round
    assert os.readlink(tiny_index / "current") == published  # the writes went to copies


def test_a_full_disk_build_says_the_disk_is_full(short_run: tuple[ReliabilityConfig, PartResult, str]) -> None:
    _, result, _ = short_run
    goal = next(g for g in result.goals if g.name == CLEAR_DISK)
    assert goal.met, (goal, [f for f in result.findings if f.startswith("full disk")])


def test_a_changed_result_is_told_apart_from_one_a_write_explains() -> None:
    before = {"q | images | dense": [("a", 0.9), ("b", 0.8), ("c", 0.7)]}
    assert result_differences(before, before) == []
    # a write added x (it pushed c out of the top 3) and deleted nothing else: the rest is as before
    assert result_differences(before, {"q | images | dense": [("x", 0.95), ("a", 0.9), ("b", 0.8)]}, {"x"}) == []
    # a deleted item lets the next one in
    assert ranking_differences([("a", 0.9), ("b", 0.8)], [("b", 0.8), ("c", 0.7)], frozenset({"a"})) == []
    # ties at the cut-off may trade places
    assert ranking_differences([("a", 0.9), ("b", 0.5)], [("a", 0.9), ("c", 0.5)]) == []
    changed = {"score": [("a", 0.9), ("b", 0.81), ("c", 0.7)], "order": [("a", 0.9), ("c", 0.8), ("b", 0.7)],
               "lost": [("a", 0.9), ("b", 0.8)], "other": [("a", 0.9), ("d", 0.8), ("c", 0.7)]}
    for what, ranking in changed.items():
        assert result_differences(before, {"q | images | dense": ranking}), what
    assert result_differences(before, {}), "a query that no longer answers"


def test_half_and_lost_writes_are_told_apart() -> None:
    new = ItemState(True, ("one", "two"))
    # an image read back with its caption items: whole; without one of them, or with a stale third: half
    assert observed_state("image", {"captions": ["one", "two"]}, ("one", "two", None)) == new
    assert observed_state("image", {"captions": ["one", "two"]}, ("one", None, None)) is None
    assert observed_state("image", {"captions": ["one", "two"]}, ("one", "two", "three")) is None
    assert observed_state("image", None, (None, None)) == ABSENT
    assert observed_state("image", None, ("one", None)) is None  # a caption without its image
    assert observed_state("text", {"text": "t"}, ()) == ItemState(True, ("t",))
    assert judge(new, acked=True, before=ABSENT, after=new) == "ok"
    assert judge(ABSENT, acked=True, before=ABSENT, after=new) == "lost"
    assert judge(ABSENT, acked=False, before=ABSENT, after=new) == "ok"  # not acknowledged: may be absent
    assert judge(None, acked=False, before=ABSENT, after=new) == "half"
    assert judge(ItemState(True, ("one",)), acked=False, before=ABSENT, after=new) == "half"
