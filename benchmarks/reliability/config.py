"""What the reliability harness runs against, and how much of each part: the full run (``python -m benchmarks
reliability``) or the short one the test suite runs."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class ReliabilityBudget(BaseModel):
    """Counts and durations of each part; every part is bounded by them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    examples_per_operation: int = Field(1000, gt=0, description="schemathesis examples generated per API operation")
    hostile_repeats: int = Field(1, gt=0, description="times the hostile image and text corpora are sent")
    build_kills: int = Field(20, ge=0, description="SIGKILLs at random points of an index build")
    write_kills: int = Field(5, ge=0, description="SIGKILLs at random points of each write operation")
    load_seconds: float = Field(60.0, gt=0, description="seconds of fixed-rate load at half the maximum rate")
    overload_seconds: float = Field(20.0, gt=0, description="seconds of load at twice the maximum rate")
    overload_growth_s_per_s: float = Field(0.25, gt=0, lt=1, description="the most the accepted latency may grow "
                                           "per second over the overload's second half (an unbounded queue at twice "
                                           "its rate gains about 1 s/s, a full bounded one about 0)")
    max_rate_seconds: float = Field(10.0, gt=0, description="seconds of closed-loop load measuring the maximum rate")
    bad_requests: int = Field(10_000, gt=0, description="bad requests sent between the two RSS readings")
    concurrency_seconds: float = Field(20.0, gt=0, description="seconds of searches during swaps and writes")
    slow_seconds: float = Field(30.0, gt=0, description="seconds of searches beside each set of trickling sockets "
                                "(longer than the body rate's grace, so that every trickler is cut off within it)")


FULL = ReliabilityBudget()
SHORT = ReliabilityBudget(examples_per_operation=60, build_kills=2, write_kills=1, load_seconds=4.0,
                          overload_seconds=4.0, max_rate_seconds=3.0,
                          # 2 s of slope, the client in the same process on 2 shared cores: noisier than the full 10 s
                          overload_growth_s_per_s=0.5, bad_requests=300, concurrency_seconds=4.0,
                          slow_seconds=8.0)


class ReliabilityConfig(BaseModel):
    """``python -m benchmarks reliability``: the harness against real ``python -m service`` processes on 127.0.0.1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: Path = Field(description="a built index to serve (never changed: the parts that write work on copies)")
    build_folder: Path = Field(description="a folder of images (metadata.jsonl optional) the build-kill part indexes "
                               "again and again")
    checkpoint: Path = Field(description="the checkpoint the index was built from (the build-kill part builds with it)")
    out: Path = Field(Path("docs/reliability"), description="where README.md and report.json go")
    work: Path = Field(Path("artifacts/reliability"), description="scratch space (index copies, logs, the corpora)")
    short: bool = Field(False, description="the short run (what the test suite runs), not the full one")
    seed: int = Field(0, description="seed of every random choice (kill points, generated input)")

    @property
    def budget(self) -> ReliabilityBudget:
        return SHORT if self.short else FULL
