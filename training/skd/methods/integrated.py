"""The main paper's self-distillation (Song et al., CIKM 2025) in the shared SKD form (spec 0.2).

Teacher: the integrated score of the same model, P = softmax(stopgrad(w_d S_d + w_s S_s) / tau) row-wise.
Students: the dense and the sparse score rows. Divergence: soft cross-entropy (core.soft_ce).
The full training loss, including the official code's no-detach teacher and its t2i quirk, stays in
training/losses.py; with directions='both' and tau = 1 this kernel equals its detached, transposed KD terms.
"""

from __future__ import annotations

from typing import Literal

import torch

from core.fusion import integrated_score
from training.skd.core import soft_ce, soft_kl

Directions = Literal["i2t", "both"]
Divergence = Literal["ce", "kl"]


def integrated_score_skd_loss(s_dense: torch.Tensor, s_sparse: torch.Tensor, w_dense: float, w_sparse: float,
                              tau: float = 1.0, directions: Directions = "i2t", lambda_dense: float = 1.0,
                              lambda_sparse: float = 1.0, divergence: Divergence = "ce") -> dict[str, torch.Tensor]:
    """lambda_d CE(P_int, softmax(S_d / tau)) + lambda_s CE(P_int, softmax(S_s / tau)); scores [B, B], rows = images.

    directions='i2t' follows spec 0.2 (row softmax only); 'both' averages i2t with t2i, where the t2i teacher is
    softmax over images for each caption (the transposed integrated score). divergence='kl' subtracts the teacher's
    entropy (same gradient as 'ce', but 0 when student == teacher).
    """
    if divergence not in ("ce", "kl"):
        raise ValueError(f"unknown divergence {divergence!r}")
    # the kernel detaches its teacher itself
    integrated = integrated_score(s_dense, s_sparse, w_dense=w_dense, w_sparse=w_sparse).detach()

    def term(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if divergence == "ce":
            return soft_ce(student, teacher, tau=tau)
        return soft_kl(student, teacher, tau=tau, scale_tau2=False)

    def distill(student: torch.Tensor) -> torch.Tensor:
        i2t = term(student, integrated)
        if directions == "i2t":
            return i2t
        if directions == "both":
            return 0.5 * (i2t + term(student.T, integrated.T))
        raise ValueError(f"unknown directions {directions!r}")

    dense, sparse = distill(s_dense), distill(s_sparse)
    return {"loss": lambda_dense * dense + lambda_sparse * sparse, "dense": dense.detach(), "sparse": sparse.detach()}
