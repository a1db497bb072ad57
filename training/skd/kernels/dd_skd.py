"""Generative dataset distillation with SKD + logit standardisation (Li et al., ICASSP 2025).

The matching model M sees a real batch O and a synthetic batch S = G(z|y) with the same labels. Its own prediction
on O is the teacher and its prediction on S the student [R]:

    L_SKD = tau^2 * KL( softmax(Z(l_O)/tau) || softmax(Z(l_S)/tau) ),   Z = per-row z-score, l_O detached.

DiM's baseline matching term is 0.01 * mean((log_softmax l_O - log_softmax l_S)^2). Gradients of either term reach
the generator through l_S; M has its own CE optimiser.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from training.skd.core import soft_kl
from training.skd.transforms import zscore

Direction = Literal["fw", "rv", "sym"]
MatchLevel = Literal["sample", "class_mean"]


def class_mean_logits(logits: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Mean logit row per class present in `labels` -> ([C, K] means, [C] bool presence mask).

    Used for "distribution matching" ([R]: the paper may match class means instead of samples).
    """
    onehot = F.one_hot(labels, num_classes).to(logits.dtype)  # [B, C]
    counts = onehot.sum(0)  # [C]
    sums = onehot.T @ logits  # [C, K]
    present = counts > 0
    return sums / counts.clamp_min(1.0).unsqueeze(-1), present


def standardized_logit_kd(student_logits: Tensor, teacher_logits: Tensor, *, tau: float = 1.0,
                          direction: Direction = "fw", standardize: bool = True, eps: float = 1e-7,
                          mask: Tensor | None = None) -> dict[str, Tensor]:
    """tau^2 * KL(softmax(Z(t)/tau) || softmax(Z(s)/tau)); Z = z-score per row (identity if standardize=False).

    The teacher is detached here. Standardisation makes the loss invariant to per-row a*l + b (a > 0), so the
    synthetic logits need only the teacher's shape, not its scale (Sun et al. 2024).
    """
    teacher = teacher_logits.detach()
    s = zscore(student_logits, eps=eps) if standardize else student_logits
    t = zscore(teacher, eps=eps) if standardize else teacher
    loss = soft_kl(s, teacher_logits=t, tau=tau, direction=direction, mask=mask, scale_tau2=True)
    return {"loss": loss}


def logit_mse_match(student_logits: Tensor, teacher_logits: Tensor, *, weight: float = 0.01,
                    mask: Tensor | None = None) -> dict[str, Tensor]:
    """DiM's logit matching: weight * mean over valid rows and classes of (log_softmax s - log_softmax t)^2."""
    diff = F.log_softmax(student_logits, dim=-1) - F.log_softmax(teacher_logits.detach(), dim=-1)
    per_row = diff.pow(2).mean(-1)
    if mask is None:
        return {"loss": weight * per_row.mean()}
    m = mask.to(per_row.dtype).expand_as(per_row)
    return {"loss": weight * (per_row * m).sum() / m.sum().clamp_min(1.0)}


def dd_match_loss(synthetic_logits: Tensor, real_logits: Tensor, labels: Tensor, *,
                  variant: Literal["mse", "kl", "skd"], tau: float = 1.0, mse_weight: float = 0.01,
                  level: MatchLevel = "sample", num_classes: int | None = None) -> dict[str, Tensor]:
    """The three matching terms of the mini-experiment (A: DiM MSE, B: KL, C: z-score + KL) on one batch.

    level='class_mean' first averages logits per class (rows of absent classes are masked out).
    """
    student, teacher, mask = synthetic_logits, real_logits.detach(), None
    if level == "class_mean":
        k = num_classes if num_classes is not None else synthetic_logits.shape[-1]
        student, mask = class_mean_logits(synthetic_logits, labels, k)
        teacher, _ = class_mean_logits(teacher, labels, k)
    if variant == "mse":
        return logit_mse_match(student, teacher, weight=mse_weight, mask=mask)
    return standardized_logit_kd(student, teacher, tau=tau, standardize=variant == "skd", mask=mask)
