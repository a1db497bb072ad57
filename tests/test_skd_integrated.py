"""The paper's integrated-score self-distillation (Song et al., CIKM 2025) in the shared SKD form: a view of the
training loss's own teacher and distillation (training/losses.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.losses import JointLossWeights, joint_loss
from training.skd.kernels.integrated import integrated_score_skd_loss


def _scores(seed: int, b: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(b, b, generator=g), torch.rand(b, b, generator=g) * 5


def test_hand_computed_rows() -> None:
    s_d, s_s = _scores(0)
    tau = 0.5
    p = F.softmax((0.3 * s_d + 0.7 * s_s) / tau, 1)
    expected = -(p * F.log_softmax(s_d / tau, 1)).sum(1).mean() - (p * F.log_softmax(s_s / tau, 1)).sum(1).mean()
    assert torch.allclose(integrated_score_skd_loss(s_d, s_s, 0.3, 0.7, tau=tau)["loss"], expected, atol=1e-5)


def test_matches_the_training_loss_kd_terms_with_a_detached_transposed_teacher() -> None:
    s_d, s_s = _scores(1)
    w = JointLossWeights(w_dense=0.2, w_sparse=0.5, lambda_dense=0.9, lambda_sparse=0.3,
                         teacher_grad="detach", t2i_teacher="transposed")
    ref = joint_loss(s_d, s_s, w)
    ours = integrated_score_skd_loss(s_d, s_s, 0.2, 0.5, directions="both", lambda_dense=0.9, lambda_sparse=0.3)
    expected = 0.9 * ref["distill_dense_loss"] + 0.3 * ref["distill_sparse_loss"]
    assert torch.allclose(ours["loss"], expected, atol=1e-6)


def test_teacher_is_detached_and_kl_is_zero_at_the_teacher() -> None:
    s_d, s_s = (t.requires_grad_(True) for t in _scores(2))
    out = integrated_score_skd_loss(s_d, s_s, 1.0, 0.0, divergence="kl")
    assert float(out["dense"]) < 1e-6  # dense student == teacher when w = (1, 0)
    # the dense KL has zero gradient at S_d == teacher; the sparse term reaches S_d only through the detached teacher
    (grad,) = torch.autograd.grad(out["loss"], s_d)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-6)


def test_ce_and_kl_differ_by_the_teacher_entropy() -> None:
    s_d, s_s = _scores(3)
    ce = integrated_score_skd_loss(s_d, s_s, 0.4, 0.6, tau=2.0)
    kl = integrated_score_skd_loss(s_d, s_s, 0.4, 0.6, tau=2.0, divergence="kl")
    p = F.softmax((0.4 * s_d + 0.6 * s_s) / 2.0, 1)
    entropy = -(p * p.log()).sum(1).mean()
    assert torch.allclose(ce["dense"] - kl["dense"], entropy, atol=1e-5)
