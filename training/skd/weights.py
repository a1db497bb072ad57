"""General weight schedules w(step) / w(epoch). Method-specific coefficients live in the method modules."""

from __future__ import annotations

import math

import numpy as np


def constant(value: float) -> float:
    return float(value)


def linear_ramp(step: int, total: int, start: float = 0.0, end: float = 1.0) -> float:
    """start -> end linearly over ``total`` steps, then ``end``."""
    if total <= 0:
        return float(end)
    frac = min(max(step / total, 0.0), 1.0)
    return float(start + (end - start) * frac)


def clipped_linear(epoch: int, total: int, t: float = 0.3) -> float:
    """CTC SKD alpha(e) = min(max((e - 1) / (E - 1), t), 1 - t) for 1-based epochs e = 1..E (Kim, Kim, Lee,
Interspeech 2024)."""
    ramp = (epoch - 1) / (total - 1) if total > 1 else 1.0
    return float(min(max(ramp, t), 1.0 - t))


def cosine_schedule(base: float, final: float, epochs: int, iters_per_epoch: int,
                    warmup_epochs: int = 0, start_warmup: float = 0.0) -> np.ndarray:
    """Per-iteration values: linear warm-up start_warmup -> base, then a half cosine base -> final (DINO)."""
    warmup_iters = warmup_epochs * iters_per_epoch
    warmup = np.linspace(start_warmup, base, warmup_iters) if warmup_iters > 0 else np.array([])
    steps = np.arange(epochs * iters_per_epoch - warmup_iters)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * iters_per_epoch
    return schedule


def cosine_value(step: int, total: int, base: float, final: float) -> float:
    """One value of the half cosine base -> final at ``step`` of ``total`` (no table)."""
    frac = min(max(step / max(total, 1), 0.0), 1.0)
    return float(final + 0.5 * (base - final) * (1 + math.cos(math.pi * frac)))
