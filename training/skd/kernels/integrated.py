"""The paper's self-distillation (Song et al., CIKM 2025, "Sparse and Dense Retrievers Learn Better Together") in
the shared SKD form, for the property tests every SKD kernel passes.

Teacher: the integrated score of the same model, P = softmax(stopgrad(w_d S_d + w_s S_s) / tau) row-wise.
Students: the dense and the sparse score rows. This is a view of the training loss, not a second implementation:
the teacher is training/losses.py's ``teacher_distributions`` (detached, transposed for t2i) and the soft
cross-entropy is its ``soft_cross_entropy``/``distill``, so with directions='both' and tau = 1 it is exactly the
KD terms of ``joint_loss`` with a detached, transposed teacher. The options the training loss does not have
(tau, i2t only, KL) are applied around those functions. The trainer itself calls ``joint_loss``.
"""

from __future__ import annotations

from typing import Literal

import torch

from core.fusion import integrated_score
from training.losses import distill, soft_cross_entropy, teacher_distributions
from training.skd.core import soft_kl

Directions = Literal["i2t", "both"]
Divergence = Literal["ce", "kl"]


def integrated_score_skd_loss(s_dense: torch.Tensor, s_sparse: torch.Tensor, w_dense: float, w_sparse: float,
                              tau: float = 1.0, directions: Directions = "i2t", lambda_dense: float = 1.0,
                              lambda_sparse: float = 1.0, divergence: Divergence = "ce") -> dict[str, torch.Tensor]:
    """lambda_d CE(P_int, softmax(S_d / tau)) + lambda_s CE(P_int, softmax(S_s / tau)); scores [B, B], rows = images.

    directions='i2t': the row softmax only (the paper's formula, image rows); 'both' averages i2t with t2i, where
    the t2i teacher is softmax over images for each caption (the transposed integrated score), as the training
    loss does. divergence='kl' subtracts the teacher's entropy (same gradient as 'ce', but 0 when student ==
    teacher).
    """
    if divergence not in ("ce", "kl"):
        raise ValueError(f"unknown divergence {divergence!r}")
    if directions not in ("i2t", "both"):
        raise ValueError(f"unknown directions {directions!r}")
    if tau <= 0:
        raise ValueError(f"temperature must be > 0, got {tau}")
    # the training loss's teacher, detached here whatever the training loss's teacher_grad
    integrated = integrated_score(s_dense, s_sparse, w_dense=w_dense, w_sparse=w_sparse)
    p_i2t, p_t2i = teacher_distributions(integrated / tau, grad="detach", t2i="transposed")

    def kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return soft_kl(student, teacher_probs=teacher, scale_tau2=False)

    def distilled(student: torch.Tensor) -> torch.Tensor:
        scaled = student / tau
        if divergence == "ce":
            return soft_cross_entropy(scaled, p_i2t) if directions == "i2t" else distill(scaled, p_i2t, p_t2i)
        return kl(scaled, p_i2t) if directions == "i2t" else 0.5 * (kl(scaled, p_i2t) + kl(scaled.T, p_t2i))

    dense, sparse = distilled(s_dense), distilled(s_sparse)
    return {"loss": lambda_dense * dense + lambda_sparse * sparse, "dense": dense.detach(), "sparse": sparse.detach()}
