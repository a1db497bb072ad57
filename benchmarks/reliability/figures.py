"""One shape for what each part of the reliability harness found: its figures, and its goals met or missed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Goal(BaseModel):
    """One of the service's reliability goals (each part states its own), with the number measured against it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="what is checked, e.g. '5xx responses to generated input'")
    target: str = Field(description="the goal as written, e.g. '0' or '<= 3'")
    value: Any = Field(description="what was measured")
    met: bool


class PartResult(BaseModel):
    """One part (fuzz, faults, load, concurrency, access): its goals, its figures, the seconds it took."""

    model_config = ConfigDict(extra="forbid")

    part: str
    goals: list[Goal]
    figures: dict[str, Any] = Field(default_factory=dict, description="every number the part measured, by name")
    findings: list[str] = Field(default_factory=list, description="each failure seen, with what reproduces it")
    seconds: float = 0.0

    @property
    def met(self) -> bool:
        return all(g.met for g in self.goals)
