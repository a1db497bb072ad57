"""Losses of Song et al. (CIKM 2025), spec section 2, as functions of score matrices.

Every score matrix is image-to-text: row i = image i, column j = caption j, the diagonal holds the pairs.
The text-to-image direction is always derived with ``.T``. Each loss returns a dict of named tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

TeacherGrad = Literal["detach", "through"]
T2ITeacher = Literal["transposed", "untransposed"]


def info_nce(scores_i2t: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: 0.5 * (CE(S, diag) + CE(S^T, diag))."""
    targets = torch.arange(scores_i2t.shape[0], device=scores_i2t.device)
    return 0.5 * (F.cross_entropy(scores_i2t, targets) + F.cross_entropy(scores_i2t.T, targets))


def soft_cross_entropy(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """-mean_i sum_j P_ij log softmax(S)_ij; equals CE against one-hot targets when P is one-hot."""
    return -(teacher_probs * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


def teacher_distributions(teacher_i2t: torch.Tensor, *, grad: TeacherGrad,
                          t2i: T2ITeacher) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-softmax teachers for both directions.

    grad='through' keeps the teacher in the graph (official code); 'detach' stops its gradient (BGE-M3).
    t2i='untransposed' reuses the image-row distribution for the text rows (official code's quirk);
    'transposed' takes softmax over images for each caption.
    """
    source = teacher_i2t.detach() if grad == "detach" else teacher_i2t
    p_i2t = torch.softmax(source, dim=1)  # (B_img, B_txt)
    p_t2i = torch.softmax(source.T, dim=1) if t2i == "transposed" else p_i2t  # (B_txt, B_img)
    return p_i2t, p_t2i


def distill(student_i2t: torch.Tensor, p_i2t: torch.Tensor, p_t2i: torch.Tensor) -> torch.Tensor:
    """0.5 * (KD(S, P_i2t) + KD(S^T, P_t2i))."""
    return 0.5 * (soft_cross_entropy(student_i2t, p_i2t) + soft_cross_entropy(student_i2t.T, p_t2i))


@dataclass(frozen=True)
class JointLossWeights:
    w_dense: float  # w1: dense weight inside the integrated score
    w_sparse: float  # w2: sparse weight inside the integrated score
    lambda_dense: float  # lam1
    lambda_sparse: float  # lam2
    distill: bool = True  # False: the no-KD ablation (L' = 0)
    teacher_grad: TeacherGrad = "detach"
    t2i_teacher: T2ITeacher = "transposed"


def joint_loss(dense_i2t: torch.Tensor, sparse_i2t: torch.Tensor, weights: JointLossWeights) -> dict[str, torch.Tensor]:
    """Relevance loss of the joint model (code normalisation, spec section 2).

    dense_i2t: cosine / temperature (B, B); sparse_i2t: raw sparse dot products (B, B).
    L  = (lam1 * L_dense + lam2 * L_sparse + L_integrated) / 2
    L' = (lam1 * KD_dense + lam2 * KD_sparse) / 2,  teacher = softmax(w1 * dense + w2 * sparse)
    relevance = (L + L') / 2
    """
    integrated_i2t = weights.w_dense * dense_i2t + weights.w_sparse * sparse_i2t  # (B, B)
    out = {
        "dense_loss": info_nce(dense_i2t),
        "sparse_loss": info_nce(sparse_i2t),
        "integrated_loss": info_nce(integrated_i2t),
    }
    contrastive = (weights.lambda_dense * out["dense_loss"] + weights.lambda_sparse * out["sparse_loss"]
                   + out["integrated_loss"]) / 2
    if weights.distill:
        p_i2t, p_t2i = teacher_distributions(integrated_i2t, grad=weights.teacher_grad, t2i=weights.t2i_teacher)
        out["distill_dense_loss"] = distill(dense_i2t, p_i2t, p_t2i)
        out["distill_sparse_loss"] = distill(sparse_i2t, p_i2t, p_t2i)
        self_distill = (weights.lambda_dense * out["distill_dense_loss"]
                        + weights.lambda_sparse * out["distill_sparse_loss"]) / 2
    else:
        self_distill = torch.zeros((), device=dense_i2t.device)
    out["relevance"] = 0.5 * (contrastive + self_distill)
    return out


def d2s_loss(teacher_dense_i2t: torch.Tensor, sparse_i2t: torch.Tensor) -> dict[str, torch.Tensor]:
    """D2S (Nguyen et al., ECIR 2024): sparse scores distilled from a frozen dense teacher, both directions."""
    p_i2t, p_t2i = teacher_distributions(teacher_dense_i2t, grad="detach", t2i="transposed")
    loss = distill(sparse_i2t, p_i2t, p_t2i)
    return {"distill_sparse_loss": loss, "relevance": loss}


def l1_regularizer(weights: torch.Tensor) -> torch.Tensor:
    """Mean L1 norm of the rows (spec: mean_i ||z_i||_1)."""
    return weights.abs().sum(dim=1).mean()


def flops_regularizer(weights: torch.Tensor) -> torch.Tensor:
    """FLOPS regulariser (Paria et al. 2020): sum_j (mean_i |z_ij|)^2."""
    return (weights.abs().mean(dim=0) ** 2).sum()


def sparsity_loss(text_sparse: torch.Tensor, image_sparse: torch.Tensor, *, eta_text: float, eta_image: float,
                  kind: Literal["l1", "flops"]) -> dict[str, torch.Tensor]:
    """0.5 * (eta_text * R(z_text) + eta_image * R(z_image)); etas already include their warm-up."""
    reg = l1_regularizer if kind == "l1" else flops_regularizer
    text_term, image_term = reg(text_sparse.float()), reg(image_sparse.float())
    return {"text_reg": text_term.detach(), "image_reg": image_term.detach(),
            "regularizer": 0.5 * (eta_text * text_term + eta_image * image_term)}
