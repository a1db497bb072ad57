"""DRRNet-SKD (Xu et al., 2023): dual-teacher loss and AWA weights (hand-computed values)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.skd.core import soft_kl
from training.skd.kernels.drrnet import awa_weights, dual_teacher_skd_loss
from training.skd.teachers import PredictionBank


def _case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 4, generator=g), torch.randint(0, 4, (5,), generator=g), torch.randn(5, 4, generator=g)


def test_zero_weights_give_ce_exactly() -> None:
    s, y, t = _case()
    out = dual_teacher_skd_loss(s, y, offline_logits=t, online_probs=t.softmax(-1), w_off=0.0, w_on=0.0)
    assert torch.equal(out["loss"], F.cross_entropy(s, y))  # type: ignore[arg-type]


def test_same_teacher_twice_adds_weights() -> None:
    s, y, t = _case(1)
    single = soft_kl(s, teacher_logits=t, tau=4.0)
    out = dual_teacher_skd_loss(s, y, offline_logits=t, online_probs=t.softmax(-1), w_off=0.3, w_on=0.5, tau=4.0)
    expected = F.cross_entropy(s, y) + 0.8 * single
    assert torch.allclose(out["loss"], expected, atol=1e-6)  # type: ignore[arg-type]


def test_hand_value_single_teacher() -> None:
    # p_t = (3/4, 1/4) at tau = 1, student uniform; CE with target 0 = log 2
    s = torch.zeros(1, 2)
    t = torch.tensor([[math.log(3.0), 0.0]])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    out = dual_teacher_skd_loss(s, torch.tensor([0]), offline_logits=t, w_off=2.0, tau=1.0)
    assert float(out["loss"]) == pytest.approx(math.log(2.0) + 2.0 * kl, rel=1e-6)  # type: ignore[arg-type]
    assert float(out["kd_off"]) == pytest.approx(kl, rel=1e-6)  # type: ignore[arg-type]


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_awa_weights(beta: float) -> None:
    perfs = [0.0, 0.1, 0.5, 0.9, 1.0]
    pairs = [awa_weights(p, beta) for p in perfs]
    assert all(w_off + w_on == pytest.approx(beta) for w_off, w_on in pairs)
    assert all(a[1] <= b[1] for a, b in zip(pairs, pairs[1:], strict=False))  # w_on non-decreasing in perf
    assert pairs[0] == (beta, 0.0)
    assert awa_weights(0.3, beta, "inverse") == pytest.approx(awa_weights(0.3, beta, "reverse")[::-1])
    assert awa_weights(1.7, beta) == (0.0, beta)  # perf is clipped into [0, 1]


def test_unseen_bank_rows_contribute_nothing() -> None:
    s, y, t = _case(2)
    probs = t.softmax(-1)
    seen = torch.tensor([True, False, True, False, False])
    ref = dual_teacher_skd_loss(s, y, online_probs=probs, online_mask=seen, w_on=0.7)["loss"]
    garbage = probs.clone()
    garbage[~seen] = torch.rand(3, 4)  # whatever an unseen row holds
    moved = dual_teacher_skd_loss(s, y, online_probs=garbage, online_mask=seen, w_on=0.7)["loss"]
    assert torch.equal(ref, moved)  # type: ignore[arg-type]
    # the online mean is over seen rows only
    expected = F.cross_entropy(s, y) + 0.7 * soft_kl(s[seen], teacher_logits=t[seen], tau=4.0)
    assert torch.allclose(ref, expected, atol=1e-6)  # type: ignore[arg-type]
    none_seen = dual_teacher_skd_loss(s, y, online_probs=probs, online_mask=torch.zeros(5, dtype=torch.bool),
                                      w_on=0.7)["loss"]
    assert torch.equal(none_seen, F.cross_entropy(s, y))  # type: ignore[arg-type]


def test_no_gradient_reaches_either_teacher() -> None:
    s, y, t = _case(3)
    s.requires_grad_(True)
    off = t.clone().requires_grad_(True)
    on = t.softmax(-1).clone().requires_grad_(True)
    dual_teacher_skd_loss(s, y, offline_logits=off, online_probs=on, w_off=0.4, w_on=0.6)["loss"].backward()  # type: ignore[union-attr]
    assert off.grad is None and on.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_prediction_bank_returns_last_rows_and_flags_unseen() -> None:
    bank = PredictionBank(4, 3)
    bank.update(torch.tensor([0, 2]), torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]))
    bank.update(torch.tensor([2]), torch.tensor([[0.0, 1.0, 0.0]]))
    assert torch.equal(bank.has(torch.arange(4)), torch.tensor([True, False, True, False]))
    assert torch.equal(bank.lookup(torch.tensor([2, 0])), torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]]))
    probs, seen = bank.get(torch.tensor([1, 2]))
    # an unseen row passed with its flag contributes nothing to the online term
    s, y = torch.randn(2, 3), torch.tensor([0, 1])
    out = dual_teacher_skd_loss(s, y, online_probs=probs, online_mask=seen, w_on=1.0, tau=1.0)
    expected = F.cross_entropy(s, y) + soft_kl(s[1:], teacher_probs=probs[1:].clamp_min(1e-12))
    assert torch.allclose(out["loss"], expected, atol=1e-5)  # type: ignore[arg-type]
