"""MeDiVLAD (Guo et al., ISBI 2025): DINO loss (center / sharpen, cross-view pairs), EMA update, DualVLAD,
multi-crop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.skd.kernels.medivlad import DualVLAD, dino_loss, ema_update_, multi_crop


def _ce(t_logits: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
    return -(F.softmax(t_logits, -1) * F.log_softmax(s_logits, -1)).sum(-1).mean()


def test_dino_hand_case_excludes_same_view_pairs() -> None:
    # K=3, B=1, n_t=n_s=2: pairs (t0, s1) and (t1, s0) only
    s = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    t = torch.tensor([[0.5, 0.1, 0.0], [0.0, 0.0, 0.3]])
    c = torch.tensor([[0.1, 0.0, 0.1]])
    out = dino_loss(s, t, c, n_s=2, n_t=2, tau_s=0.1, tau_t=0.04)
    expected = 0.5 * (_ce((t[0] - c[0]) / 0.04, s[1] / 0.1) + _ce((t[1] - c[0]) / 0.04, s[0] / 0.1))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert int(out["pairs"]) == 2 * 2 - 2
    assert int(dino_loss(torch.randn(12 * 2, 3), torch.randn(2 * 2, 3), c, n_s=12)["pairs"]) == 22


def test_teacher_equal_to_center_gives_uniform_target() -> None:
    c = torch.tensor([[0.3, -0.2, 0.5]])
    teacher = c.repeat(4, 1)  # n_t=2, B=2
    student = torch.randn(6, 3)  # n_s=3
    out = dino_loss(student, teacher, c, n_s=3)
    assert out["loss"].item() >= math.log(3) - 1e-6
    flat = dino_loss(torch.zeros(6, 3), teacher, c, n_s=3)
    assert flat["loss"].item() == pytest.approx(math.log(3), abs=1e-6)


def test_center_update_is_pure_and_teacher_detached() -> None:
    c = torch.zeros(1, 4)
    student = torch.randn(8, 4, requires_grad=True)
    teacher = torch.randn(4, 4, requires_grad=True)
    out = dino_loss(student, teacher, c, n_s=4)
    torch.testing.assert_close(out["center"], 0.9 * c + 0.1 * teacher.detach().mean(0, keepdim=True))
    assert (c == 0).all()
    out["loss"].backward()
    assert teacher.grad is None and student.grad is not None


def test_ema_update_extremes() -> None:
    torch.manual_seed(0)
    teacher, student = nn.Linear(3, 3), nn.Linear(3, 3)
    before = teacher.weight.clone()
    ema_update_(teacher, student, 1.0)
    torch.testing.assert_close(teacher.weight, before)
    ema_update_(teacher, student, 0.0)
    torch.testing.assert_close(teacher.weight, student.weight)


def test_dualvlad_norm_permutation_gradients_single_frame() -> None:
    torch.manual_seed(0)
    vlad = DualVLAD(3, 5)
    x = torch.randn(2, 7, 5)
    out = vlad(x)
    assert out.shape == (2, 15)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(vlad(x[:, torch.randperm(7)]), out, atol=1e-5, rtol=1e-5)
    (out * torch.randn_like(out)).sum().backward()  # a plain sum of unit rows has tiny gradients
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (vlad.centroids, vlad.V.weight, vlad.w.weight))
    _, weights = vlad(x[:, :1], return_weights=True)
    assert torch.equal(weights, torch.ones(2, 1))
    plain = DualVLAD(3, 5, frame_attention=False)
    torch.testing.assert_close(plain(x).norm(dim=-1), torch.ones(2))


def test_multi_crop_shapes_and_determinism() -> None:
    images = torch.rand(5, 12, 12)
    a = multi_crop(images, torch.Generator().manual_seed(1), n_global=2, n_local=4)
    b = multi_crop(images, torch.Generator().manual_seed(1), n_global=2, n_local=4)
    assert len(a) == 6 and all(v.shape == images.shape for v in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
