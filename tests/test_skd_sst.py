"""SST kernels (Kwak, Kweon, Shin 2022): class-balanced batches and the view-consistency SKD loss."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from training.skd.kernels.sst import ClassBalancedBatchSampler, sst_loss, view_consistency_skd_loss

LABELS = [0] * 40 + [1] * 3 + [2] * 10 + [3] * 7 + [4] * 12  # class 1 has only 3 examples


def _sampler(seed: int = 0, **kwargs: object) -> ClassBalancedBatchSampler:
    return ClassBalancedBatchSampler(LABELS, 12, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_every_batch_holds_each_class_floor_or_ceil_times() -> None:
    batches = list(_sampler())
    assert len(batches) > 0
    lo, hi = 12 // 5, math.ceil(12 / 5)
    for batch in batches:
        assert len(batch) == 12
        counts = Counter(LABELS[i] for i in batch)
        assert set(counts) == set(range(5))
        assert all(lo <= c <= hi for c in counts.values())


def test_majority_class_visited_at_most_once_per_epoch() -> None:
    sampler = _sampler()
    majority = Counter(i for batch in sampler for i in batch if LABELS[i] == 0)
    assert max(majority.values()) == 1
    assert len(sampler) == 40 // math.ceil(12 / 5)


def test_without_replacement_no_index_repeats() -> None:
    seen = [i for batch in _sampler(replacement_for_minority=False) for i in batch]
    assert len(seen) == len(set(seen)) > 0


def test_same_seed_same_batches_and_other_seed_differs() -> None:
    assert list(_sampler(3)) == list(_sampler(3))
    assert list(_sampler(3)) != list(_sampler(4))


def test_explicit_num_batches() -> None:
    assert len(list(_sampler(num_batches=50))) == 50


def test_view_loss_hand_computed() -> None:
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    tau = 2.0
    p_t, p_s = F.softmax(b / tau, -1), F.softmax(a / tau, -1)
    expected = tau**2 * (p_t * (p_t.log() - p_s.log())).sum()
    assert torch.allclose(view_consistency_skd_loss(a, b, tau=tau)["loss"], expected, atol=1e-6)


def test_symmetric_loss_is_swap_invariant_and_one_sided_is_not() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g), 3 * torch.randn(6, 5, generator=g)
    sym = view_consistency_skd_loss(a, b, symmetric=True)["loss"]
    assert torch.allclose(sym, view_consistency_skd_loss(b, a, symmetric=True)["loss"], atol=1e-6)
    assert not torch.allclose(view_consistency_skd_loss(a, b)["loss"], view_consistency_skd_loss(b, a)["loss"])


def test_teacher_branch_and_ema_teacher_get_no_gradient() -> None:
    a = torch.randn(4, 5, requires_grad=True)
    b = torch.randn(4, 5, requires_grad=True)
    ema = torch.randn(4, 5, requires_grad=True)
    view_consistency_skd_loss(a, b)["loss"].backward()
    assert b.grad is None and a.grad is not None
    out = view_consistency_skd_loss(a, b, ema_teacher=ema)
    out["loss"].backward()
    assert ema.grad is None and b.grad is None
    assert torch.allclose(out["loss"], view_consistency_skd_loss(a, ema)["loss"])


def test_symmetric_with_ema_teacher_is_rejected() -> None:
    with pytest.raises(ValueError):
        view_consistency_skd_loss(torch.zeros(1, 2), torch.zeros(1, 2), symmetric=True, ema_teacher=torch.zeros(1, 2))


def test_sst_loss_lam_zero_is_two_view_ce() -> None:
    g = torch.Generator().manual_seed(1)
    a, b, y = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    out = sst_loss(a, b, y, lam=0.0)
    assert torch.equal(out["loss"], 0.5 * (F.cross_entropy(a, y) + F.cross_entropy(b, y)))
    assert float(sst_loss(a, b, y, lam=1.0)["loss"]) > float(out["loss"])
