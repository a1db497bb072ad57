"""Schedules stepped by the training loop (never from inside a loss)."""

from __future__ import annotations

import math


def quadratic_warmup(base: float, step: int, warmup_steps: int) -> float:
    """weight * (t / T)^2 for t <= T, then weight (SPLADE / official code)."""
    if warmup_steps <= 0:
        return base
    return base * min(1.0, step / warmup_steps) ** 2


def linear_warmup_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up to 1, then linear decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    remaining = max(1, total_steps - warmup_steps)
    return max(0.0, (total_steps - step) / remaining)


def cosine_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
