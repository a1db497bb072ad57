"""ALS kernel (Lee, Cheung, Zhang, EMNLP 2022): adaptive label smoothing with a self-knowledge prior."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.skd.kernels.als import adaptive_ls_loss, entropy_alpha


def _data(seed: int = 0, n: int = 6, v: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(n, v, generator=g), torch.randint(0, v, (n,), generator=g), torch.randn(n, v, generator=g)


def test_alpha_max_zero_is_cross_entropy() -> None:
    logits, target, prior = _data()
    assert torch.allclose(adaptive_ls_loss(logits, target, prior, alpha_max=0.0)["loss"],
                          F.cross_entropy(logits, target), atol=1e-6)


def test_one_hot_prior_gives_cross_entropy_for_any_alpha() -> None:
    logits, target, _ = _data(1)
    prior = torch.zeros_like(logits).scatter(1, target.unsqueeze(1), 1e4)
    for alpha_fn in ("entropy", "inv_entropy", "constant"):
        out = adaptive_ls_loss(logits, target, prior, alpha_max=0.7, alpha_fn=alpha_fn)
        assert torch.allclose(out["loss"], F.cross_entropy(logits, target), atol=1e-5)


def test_constant_alpha_uniform_prior_is_torch_label_smoothing() -> None:
    logits, target, _ = _data(2)
    out = adaptive_ls_loss(logits, target, None, alpha_max=0.1, alpha_fn="constant")
    assert torch.allclose(out["loss"], F.cross_entropy(logits, target, label_smoothing=0.1), atol=1e-6)


def test_hand_computed_mixture() -> None:
    logits, target = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0])
    prior = torch.tensor([[0.0, 1.0, 0.0]])
    log_p = F.log_softmax(logits, -1)[0]
    p = log_p.exp()
    alpha = 0.3 * (1 - float(-(p * log_p).sum()) / math.log(3))
    q = F.softmax(prior, -1)[0]
    expected = (1 - alpha) * -log_p[0] + alpha * -(q * log_p).sum()
    out = adaptive_ls_loss(logits, target, prior, alpha_max=0.3)
    assert torch.allclose(out["loss"], expected, atol=1e-6)
    assert abs(float(out["alpha"][0]) - alpha) < 1e-6


def test_alpha_bounds_and_direction() -> None:
    peaked, flat = torch.tensor([[8.0, 0.0, 0.0, 0.0]]), torch.zeros(1, 4)
    for fn in ("entropy", "inv_entropy", "constant"):
        a = entropy_alpha(torch.randn(20, 9) * 3, 0.4, fn)
        assert bool(((a >= 0) & (a <= 0.4 + 1e-7)).all())
    assert float(entropy_alpha(peaked, 0.4)) > float(entropy_alpha(flat, 0.4))
    assert float(entropy_alpha(flat, 0.4)) < 1e-6
    assert float(entropy_alpha(peaked, 0.4, "inv_entropy")) < float(entropy_alpha(flat, 0.4, "inv_entropy"))


def test_alpha_and_prior_carry_no_gradient() -> None:
    logits, target, prior = _data(3)
    logits.requires_grad_(True)
    prior.requires_grad_(True)
    out = adaptive_ls_loss(logits, target, prior, alpha_max=0.3)
    out["loss"].backward()
    assert prior.grad is None and not out["alpha"].requires_grad and logits.grad is not None


def test_ignore_index_rows_contribute_nothing() -> None:
    logits, target, prior = _data(4)
    target[[1, 4]] = -100
    base = adaptive_ls_loss(logits, target, prior, alpha_max=0.3)
    perturbed = logits.clone()
    perturbed[[1, 4]] = 1e3
    again = adaptive_ls_loss(perturbed, target, prior, alpha_max=0.3)
    keep = target != -100
    alone = adaptive_ls_loss(logits[keep], target[keep], prior[keep], alpha_max=0.3)
    assert torch.allclose(base["loss"], again["loss"]) and torch.allclose(base["loss"], alone["loss"], atol=1e-6)
    assert float(base["alpha"][1]) == 0.0
