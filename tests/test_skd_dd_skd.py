"""SKD-DD (Li et al., ICASSP 2025): logit-standardised KD for generative dataset distillation (hand-computed values)."""

from __future__ import annotations

import math

import pytest
import torch

from training.skd.kernels.dd_skd import class_mean_logits, dd_match_loss, logit_mse_match, standardized_logit_kd
from training.skd.transforms import zscore


def _logits(seed: int, shape: tuple[int, ...] = (4, 5)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_zscore_rows_have_zero_mean_unit_std() -> None:
    z = zscore(_logits(0) * 7 + 3)
    assert torch.allclose(z.mean(-1), torch.zeros(4), atol=1e-6)
    assert torch.allclose(z.std(-1), torch.ones(4), atol=1e-5)


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_affine_invariance_per_row(side: str) -> None:
    s, t = _logits(1), _logits(2)
    a = torch.tensor([[0.5], [2.0], [3.0], [10.0]])
    b = torch.tensor([[-4.0], [0.0], [1.5], [100.0]])
    ref = standardized_logit_kd(s, t, tau=2.0)["loss"]
    moved = standardized_logit_kd(a * s + b, t, tau=2.0) if side == "student" else \
        standardized_logit_kd(s, a * t + b, tau=2.0)
    assert torch.allclose(moved["loss"], ref, atol=1e-5)
    assert float(ref) > 0


def test_scaled_copy_is_zero_only_with_standardisation() -> None:
    t = _logits(3)
    s = 3 * t + 1
    assert float(standardized_logit_kd(s, t)["loss"]) == pytest.approx(0.0, abs=1e-6)
    assert float(standardized_logit_kd(s, t, standardize=False)["loss"]) > 1e-3


def test_no_gradient_reaches_teacher() -> None:
    s = _logits(4).requires_grad_(True)
    t = _logits(5).requires_grad_(True)
    standardized_logit_kd(s, t, tau=2.0)["loss"].backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_unstandardised_tau1_is_plain_kl_by_hand() -> None:
    # one row, 2 classes: p_t = (3/4, 1/4), p_s = (1/2, 1/2)
    t = torch.tensor([[math.log(3.0), 0.0]])
    s = torch.zeros(1, 2)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(standardized_logit_kd(s, t, standardize=False)["loss"]) == pytest.approx(expected, rel=1e-6)


def test_tau_squared_scaling_by_hand() -> None:
    # z-score of (a, -a) with unbiased std is (1/sqrt2, -1/sqrt2) for any a > 0
    s, t = torch.tensor([[1.0, -1.0]]), torch.tensor([[-2.0, 2.0]])
    tau = 2.0
    zs = 1 / math.sqrt(2) / tau
    q1 = 1 / (1 + math.exp(-2 * zs))  # student softmax((zs, -zs))[0]
    p1 = 1 - q1  # teacher is the mirror image
    kl = p1 * math.log(p1 / q1) + q1 * math.log(q1 / p1)
    assert float(standardized_logit_kd(s, t, tau=tau)["loss"]) == pytest.approx(tau**2 * kl, rel=1e-5)


def test_logit_mse_match_by_hand() -> None:
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    d0 = math.log(0.5) - math.log(0.75)
    d1 = math.log(0.5) - math.log(0.25)
    assert float(logit_mse_match(s, t)["loss"]) == pytest.approx(0.01 * (d0**2 + d1**2) / 2, rel=1e-6)


def test_class_mean_logits_and_mask() -> None:
    logits = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    labels = torch.tensor([0, 0, 2])
    means, present = class_mean_logits(logits, labels, 3)
    assert torch.equal(present, torch.tensor([True, False, True]))
    assert torch.allclose(means[0], torch.tensor([2.0, 3.0]))
    assert torch.allclose(means[2], torch.tensor([10.0, 0.0]))


@pytest.mark.parametrize("variant", ["mse", "kl", "skd"])
@pytest.mark.parametrize("level", ["sample", "class_mean"])
def test_match_loss_zero_on_identical_logits(variant: str, level: str) -> None:
    x = _logits(6, (6, 10))
    labels = torch.tensor([0, 1, 1, 3, 3, 3])
    out = dd_match_loss(x, x.clone(), labels, variant=variant, tau=2.0, level=level, num_classes=10)  # type: ignore[arg-type]
    assert float(out["loss"]) == pytest.approx(0.0, abs=1e-6)
