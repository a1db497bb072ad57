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


# D2S (Nguyen et al., ECIR 2024): the masking probability reaches 0 after 95% of the epochs.
D2S_DECAY_SHARE = 0.95


def text_mask_probability(expansion: str, epoch: int, epochs: int) -> float:
    """Probability that a batch's captions are masked to their own terms in (0-based) ``epoch``.

    'off': 0; 'always': 1; 'd2s': 1 at the first epoch, falling by 1 / (0.95 * epochs) after each epoch, 0 from
    95% of the epochs on (the decay the official code computes but never applies).
    """
    if expansion == "off":
        return 0.0
    if expansion == "always":
        return 1.0
    if expansion != "d2s":
        raise ValueError(f"unknown expansion control {expansion!r}")
    return max(0.0, 1.0 - epoch / (D2S_DECAY_SHARE * epochs))


def annealed_top_k(step: int, total_steps: int, *, start: int, budget: int | None, anneal_ratio: float) -> int:
    """Image top-k for ``step``: ``start`` falling linearly to ``budget`` over ``anneal_ratio`` of the steps,
    then the budget (0 = keep everything when there is no budget)."""
    if budget is None:
        return 0
    if start <= budget:
        return budget
    span = anneal_ratio * total_steps
    progress = 1.0 if span <= 0 else min(1.0, step / span)
    return int(round(start - (start - budget) * progress))


def linear_ramp(step: int, ramp_steps: int) -> float:
    """0 -> 1 linearly over ``ramp_steps`` (1 throughout when there is no ramp)."""
    return 1.0 if ramp_steps <= 0 else min(1.0, step / ramp_steps)
