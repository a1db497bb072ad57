"""Shared SKD core (training.skd.core/transforms/weights/teachers) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.skd import SKDObjective, SKDTerm, apply_mask, masked_mean, soft_ce, soft_kl, zscore
from training.skd.teachers import (
    DetachedHead,
    EMATeacher,
    EmbeddingPrior,
    IntegratedScore,
    PredictionBank,
    SnapshotTeacher,
    ema_update_,
)
from training.skd.weights import clipped_linear, cosine_schedule, cosine_value, linear_ramp

UNIFORM = torch.zeros(1, 2)  # student logits: q = (0.5, 0.5)
TEACHER = torch.tensor([[math.log(3.0), 0.0]])  # p = (0.75, 0.25)
FW = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL(p||q) = 0.130812
RV = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(q||p) = 0.143841


@pytest.mark.parametrize(("direction", "expected"), [("fw", FW), ("rv", RV), ("sym", (FW + RV) / 2)])
def test_soft_kl_hand_values(direction: str, expected: float) -> None:
    assert soft_kl(UNIFORM, TEACHER, direction=direction).item() == pytest.approx(expected, abs=1e-6)  # type: ignore[arg-type]


def test_soft_kl_temperature_and_tau2_scale() -> None:
    # tau=2 halves the teacher logits back to (ln 3, 0); the tau^2 factor multiplies by 4
    assert soft_kl(UNIFORM, 2 * TEACHER, tau=2.0).item() == pytest.approx(4 * FW, abs=1e-6)
    assert soft_kl(UNIFORM, 2 * TEACHER, tau=2.0, scale_tau2=False).item() == pytest.approx(FW, abs=1e-6)


def test_soft_kl_teacher_probs_with_zeros() -> None:
    assert soft_kl(UNIFORM, teacher_probs=torch.tensor([[1.0, 0.0]])).item() == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(ValueError):
        soft_kl(UNIFORM)
    with pytest.raises(ValueError):
        soft_kl(UNIFORM, TEACHER, teacher_probs=torch.tensor([[1.0, 0.0]]))


def test_mask_mean_and_none_reduction() -> None:
    student = torch.zeros(1, 3, 2)
    teacher = torch.cat([TEACHER, TEACHER, torch.tensor([[50.0, -50.0]])])[None]  # position 2 is padding
    mask = torch.tensor([[True, True, False]])
    assert soft_kl(student, teacher, mask=mask).item() == pytest.approx(FW, abs=1e-6)
    per = soft_kl(student, teacher, mask=mask, reduction="none")
    assert per.shape == (1, 3) and per[0, 2] == 0 and per[0, 0].item() == pytest.approx(FW, abs=1e-6)
    assert masked_mean(torch.tensor([1.0, 2.0]), torch.tensor([False, False])).item() == 0.0


def test_soft_ce_hand_value_and_large_logits() -> None:
    assert soft_ce(UNIFORM, TEACHER).item() == pytest.approx(math.log(2), abs=1e-6)
    big = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    loss = soft_kl(big, torch.tensor([[-1e4, 1e4, 0.0]])) + soft_ce(big, torch.tensor([[-1e4, 1e4, 0.0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()  # type: ignore[arg-type]


def test_zscore_rows_and_apply_mask_alignment() -> None:
    z = zscore(torch.tensor([[1.0, 2.0, 3.0], [10.0, 30.0, 20.0]]))
    torch.testing.assert_close(z, torch.tensor([[-1.0, 0.0, 1.0], [-1.0, 1.0, 0.0]]), atol=1e-5, rtol=0)
    assert torch.isfinite(zscore(torch.tensor([[4.0]]))).all()
    values = torch.ones(2, 3, 4)
    out = apply_mask(values, torch.tensor([True, False]), fill=-1.0)  # left-aligned: masks batch row 1
    assert (out[0] == 1).all() and (out[1] == -1).all()


def test_objective_sum_zero_weight_and_schedule() -> None:
    student, target = torch.tensor([[0.2, -0.3, 1.0]]), torch.tensor([2])
    teacher = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    kd = SKDTerm("kd", lambda s, t: soft_kl(s, t), weight=lambda step: 0.5 * step)
    objective = SKDObjective(F.cross_entropy, [kd])
    out = objective((student, target), {"kd": (student, teacher)}, step=1)
    expected = F.cross_entropy(student, target) + 0.5 * soft_kl(student, teacher)
    torch.testing.assert_close(out["loss"], expected)
    assert out["kd_weight"].item() == 0.5 and set(out) == {"loss", "task", "kd", "kd_weight"}
    zero = objective((student, target), {"kd": (student, teacher)}, step=0)
    assert torch.equal(zero["loss"], F.cross_entropy(student, target))
    missing = objective((student, target), {}, step=0)  # a teacher that does not exist yet, weight 0
    assert torch.equal(missing["loss"], zero["loss"])
    with pytest.raises(ValueError):
        SKDObjective(F.cross_entropy, [SKDTerm("loss", soft_kl)])


def test_weight_schedules() -> None:
    assert clipped_linear(1, 10) == 0.3 and clipped_linear(10, 10) == pytest.approx(0.7)
    assert clipped_linear(5, 10) == pytest.approx(4 / 9)
    assert linear_ramp(5, 10, 0.0, 0.5) == 0.25 and linear_ramp(20, 10, 0.0, 0.5) == 0.5
    sched = cosine_schedule(0.99, 1.0, epochs=3, iters_per_epoch=4)
    assert len(sched) == 12 and sched[0] == pytest.approx(0.99) and sched[-1] < 1.0 and (sched[1:] >= sched[:-1]).all()
    assert cosine_value(0, 10, 0.99, 1.0) == pytest.approx(0.99) and cosine_value(10, 10, 0.99, 1.0) == 1.0


def test_ema_and_snapshot_teachers() -> None:
    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    ema = EMATeacher(student, momentum=0.5)
    before = ema.module.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    ema.on_step_end(student)
    torch.testing.assert_close(ema.module.weight, 0.5 * before + 0.5 * student.weight)
    assert not ema.logits(torch.ones(1, 3)).requires_grad
    teacher = nn.Linear(3, 2)
    ema_update_(teacher, student, 0.0)
    torch.testing.assert_close(teacher.weight, student.weight)
    best = SnapshotTeacher(student, keep="best")
    best.on_epoch_end(student, 0.8)
    kept = best.module.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    best.on_epoch_end(student, 0.7)  # worse: the snapshot stays
    torch.testing.assert_close(best.module.weight, kept)
    best.on_epoch_end(student, 0.9)
    torch.testing.assert_close(best.module.weight, student.weight)


def test_bank_prior_and_score_teachers() -> None:
    bank = PredictionBank(4, 3)
    bank.update(torch.tensor([1, 3]), torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]))
    probs, seen = bank.get(torch.tensor([3, 0, 1]))
    assert seen.tolist() == [True, False, True] and probs[0].tolist() == [1.0, 0.0, 0.0] and (probs[1] == 0).all()
    prior = EmbeddingPrior(torch.randn(6, 4), tau=1.0, top_k=2).probs(torch.tensor([0, 5]))
    assert ((prior > 0).sum(-1) == 3).all() and torch.allclose(prior.sum(-1), torch.ones(2))
    a, b = torch.randn(2, 2, requires_grad=True), torch.randn(2, 2)
    torch.testing.assert_close(IntegratedScore([0.3, 0.7]).logits(a, b), 0.3 * a.detach() + 0.7 * b)
    assert not DetachedHead(lambda x: 2 * x).logits(a).requires_grad
