"""Hahn & Choi kernels (RANLP 2019): the embedding-similarity prior and the SKD loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.skd.kernels.hahn_choi import embedding_prior, embedding_skd_loss


def _emb(seed: int = 0, v: int = 12, d: int = 5) -> torch.Tensor:
    return torch.randn(v, d, generator=torch.Generator().manual_seed(seed))


def test_prior_rows_sum_to_one_with_k_plus_one_nonzeros() -> None:
    emb, target = _emb(), torch.tensor([0, 3, 11, 3])
    for k, expected in ((3, 4), (20, 12), (11, 12)):
        prior = embedding_prior(target, emb, topk=k)
        assert torch.allclose(prior.sum(-1), torch.ones(4))
        assert ((prior > 0).sum(-1) == expected).all()
        assert (prior.gather(1, target.unsqueeze(1)) > 0).all()  # the target is always kept


def test_cosine_prior_gives_the_target_the_maximal_mass() -> None:
    emb, target = _emb(1), torch.arange(12)
    prior = embedding_prior(target, emb, sim="cos", tau=0.5, topk=4)
    assert torch.equal(prior.argmax(-1), target)


def test_hand_computed_dot_prior() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    prior = embedding_prior(torch.tensor([2]), emb, tau=1.0)
    assert torch.allclose(prior, F.softmax(torch.tensor([[1.0, 1.0, 2.0]]), -1))


def test_out_emb_gets_no_gradient_through_the_prior() -> None:
    emb = _emb(2).requires_grad_(True)
    logits = torch.randn(5, 12, requires_grad=True)
    embedding_skd_loss(logits, torch.tensor([1, 2, 3, 4, 5]), emb, alpha=0.5)["loss"].backward()
    assert emb.grad is None and logits.grad is not None


def test_alpha_zero_is_cross_entropy() -> None:
    logits, target = torch.randn(5, 12), torch.tensor([1, 2, 3, 4, -100])
    out = embedding_skd_loss(logits, target, _emb(), alpha=0.0)
    assert torch.allclose(out["loss"], F.cross_entropy(logits, target), atol=1e-6)


def test_orthonormal_embeddings_and_small_tau_give_cross_entropy() -> None:
    emb = torch.eye(12)
    logits, target = torch.randn(5, 12), torch.tensor([0, 2, 4, 6, 8])
    assert torch.allclose(embedding_prior(target, emb, tau=1e-3, topk=3), F.one_hot(target, 12).float())
    out = embedding_skd_loss(logits, target, emb, alpha=0.7, tau=1e-3, topk=3)
    assert torch.allclose(out["loss"], F.cross_entropy(logits, target), atol=1e-5)


def test_identical_embeddings_get_identical_mass() -> None:
    emb = _emb(3)
    emb[7] = emb[4]
    prior = embedding_prior(torch.tensor([0, 4, 9]), emb, sim="dot", topk=None)
    assert torch.allclose(prior[:, 4], prior[:, 7])


def test_ignored_rows_do_not_change_the_loss() -> None:
    emb, target = _emb(4), torch.tensor([1, -100, 3])
    logits = torch.randn(3, 12)
    base = embedding_skd_loss(logits, target, emb, alpha=0.4)["loss"]
    logits[1] = 1e3
    assert torch.allclose(base, embedding_skd_loss(logits, target, emb, alpha=0.4)["loss"])
