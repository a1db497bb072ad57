"""Divergences and the one training-loop integration point (SKDObjective) shared by every SKD method.

Conventions of every kernel: class axis last; the teacher is detached inside every function; a bool mask (True = valid)
is aligned with the leading dims; reduction 'mean' averages over valid positions, 'none' returns per-position
values with zeros at masked positions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from training.skd.transforms import align_mask, apply_mask

Direction = Literal["fw", "rv", "sym"]
Reduction = Literal["mean", "none"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the valid entries; 0 (still in the graph) when nothing is valid."""
    if mask is None:
        return values.mean()
    full = align_mask(mask, values)
    total = torch.where(full, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    return total / full.sum().clamp_min(1).to(values.dtype)


def _reduce(values: torch.Tensor, mask: torch.Tensor | None, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return masked_mean(values, mask)
    if reduction == "none":
        return apply_mask(values, mask, 0.0)
    raise ValueError(f"unknown reduction {reduction!r}")


def soft_cross_entropy_rows(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """``-sum_k p_k log softmax(student)_k`` per position (class axis last): the one soft cross-entropy.

    Whether the teacher's gradient flows is the caller's choice (``soft_ce`` detaches; the joint loss may not).
    """
    return -(teacher_probs * F.log_softmax(student_logits, dim=-1)).sum(dim=-1)


def _teacher_log_probs(teacher_logits: torch.Tensor | None, teacher_probs: torch.Tensor | None,
                       tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_t, log p_t), detached. Given probabilities are used as they are (tau applies to logits only)."""
    if (teacher_logits is None) == (teacher_probs is None):
        raise ValueError("pass exactly one of teacher_logits / teacher_probs")
    if teacher_logits is not None:
        log_p = F.log_softmax(teacher_logits.detach() / tau, dim=-1)
        return log_p.exp(), log_p
    probs = teacher_probs.detach()  # type: ignore[union-attr]
    # clamp only inside the log: zero-probability classes contribute 0 to sum p log p (xlogy below)
    return probs, probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None = None,
            teacher_probs: torch.Tensor | None = None, *, tau: float = 1.0, direction: Direction = "fw",
            mask: torch.Tensor | None = None, reduction: Reduction = "mean", scale_tau2: bool = True) -> torch.Tensor:
    """KL between softmax(teacher/tau) and softmax(student/tau), summed over classes.

    'fw' = KL(p_t || p_s) = sum p_t (log p_t - log p_s); 'rv' = KL(p_s || p_t); 'sym' = (fw + rv) / 2.
    scale_tau2 multiplies by tau^2 (Hinton) so gradient magnitudes do not shrink with the temperature.
    """
    if tau <= 0:
        raise ValueError(f"temperature must be > 0, got {tau}")
    log_q = F.log_softmax(student_logits / tau, dim=-1)
    p, log_p = _teacher_log_probs(teacher_logits, teacher_probs, tau)
    if direction not in ("fw", "rv", "sym"):
        raise ValueError(f"unknown direction {direction!r}")
    per_pos = torch.zeros((), dtype=log_q.dtype, device=log_q.device)
    if direction in ("fw", "sym"):
        fw = (torch.xlogy(p, p) - p * log_q).sum(dim=-1)
        per_pos = per_pos + (fw if direction == "fw" else 0.5 * fw)
    if direction in ("rv", "sym"):
        q = log_q.exp()
        rv = (q * (log_q - log_p)).sum(dim=-1)
        per_pos = per_pos + (rv if direction == "rv" else 0.5 * rv)
    if scale_tau2:
        per_pos = per_pos * tau**2
    return _reduce(per_pos, mask, reduction)


def soft_ce(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None = None,
            teacher_probs: torch.Tensor | None = None, *, tau: float = 1.0, mask: torch.Tensor | None = None,
            reduction: Reduction = "mean", scale_tau2: bool = False) -> torch.Tensor:
    """-sum_k p_t,k log softmax(student/tau)_k; equals soft_kl('fw') + H(p_t)."""
    if tau <= 0:
        raise ValueError(f"temperature must be > 0, got {tau}")
    p, _ = _teacher_log_probs(teacher_logits, teacher_probs, tau)
    per_pos = soft_cross_entropy_rows(student_logits / tau, p)
    if scale_tau2:
        per_pos = per_pos * tau**2
    return _reduce(per_pos, mask, reduction)


Weight = float | Callable[[int], float]


@dataclass
class SKDTerm:
    """One distillation term: w(step) * divergence(student, stopgrad(teacher))."""

    name: str
    divergence: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    weight: Weight = 1.0

    def weight_at(self, step: int) -> float:
        return float(self.weight(step) if callable(self.weight) else self.weight)


class SKDObjective:
    """L = task(*task_args) + sum_j w_j(step) * D_j(student_j, stopgrad(teacher_j)), the form every method takes."""

    RESERVED = frozenset({"loss", "task"})

    def __init__(self, task_loss: Callable[..., torch.Tensor], terms: Sequence[SKDTerm]) -> None:
        names = [t.name for t in terms]
        if len(set(names)) != len(names) or self.RESERVED & set(names) or any(n.endswith("_weight") for n in names):
            raise ValueError(f"term names must be unique, not 'loss'/'task', not end in '_weight': {names}")
        self.task_loss = task_loss
        self.terms = tuple(terms)

    def __call__(self, task_args: tuple, term_inputs: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                 step: int = 0) -> dict[str, torch.Tensor]:
        task = self.task_loss(*task_args)
        out: dict[str, torch.Tensor] = {"task": task}
        loss = task
        for term in self.terms:
            w = term.weight_at(step)
            out[f"{term.name}_weight"] = torch.tensor(w)
            if w == 0.0:
                # skipped, not multiplied by 0: loss stays bit-for-bit the task loss and a missing teacher is fine
                pair = term_inputs.get(term.name)
                with torch.no_grad():
                    out[term.name] = (term.divergence(pair[0], pair[1]) if pair is not None
                                      else torch.zeros((), device=task.device))
                continue
            student, teacher = term_inputs[term.name]
            value = term.divergence(student, teacher.detach())
            out[term.name] = value
            loss = loss + w * value
        out["loss"] = loss
        return out
