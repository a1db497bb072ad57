from __future__ import annotations

import pytest
import torch

from core.config import SparseHeadConfig
from core.sparse_head import SparseHead, log1p_relu, top_k_prune


def _head(vocab: int = 50, width: int = 8, embed: int = 4,
          config: SparseHeadConfig | None = None) -> tuple[SparseHead, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    embedding = torch.randn(vocab, width, generator=g)
    special = torch.tensor([0, 1, 2, 49])
    term_ids = torch.tensor([i for i in range(vocab) if i not in set(special.tolist())])
    head = SparseHead(config or SparseHeadConfig(), embed_dim=embed, image_feature_dim=6, text_feature_dim=5,
                      token_embedding=embedding, term_ids=term_ids)
    return head, embedding, special


def test_weights_are_non_negative() -> None:
    head, _, _ = _head()
    z = head.image(torch.nn.functional.normalize(torch.randn(32, 4), dim=-1))
    assert (z >= 0).all()
    assert (z > 0).any()


def test_special_tokens_never_carry_weight() -> None:
    head, _, special = _head()
    z = head.expanded_text(torch.randn(16, 4) * 10)
    full = head.to_vocabulary_space(z, 50)
    assert full[:, special].abs().sum() == 0
    assert full.shape == (16, 50)


def test_projector_is_initialised_from_the_token_embedding() -> None:
    head, embedding, _ = _head()
    assert torch.equal(head.vocab_projector.weight, embedding[head.term_ids])
    # a copy, not a tie: training the head leaves the embedding untouched
    head.vocab_projector.weight.data.add_(1.0)
    assert not torch.equal(head.vocab_projector.weight, embedding[head.term_ids])


def test_top_k_prune_keeps_the_largest() -> None:
    z = torch.tensor([[0.1, 0.5, 0.0, 0.9], [0.3, 0.2, 0.4, 0.0]])
    pruned = top_k_prune(z, 2)
    assert torch.equal(pruned, torch.tensor([[0.0, 0.5, 0.0, 0.9], [0.3, 0.0, 0.4, 0.0]]))
    assert torch.equal(top_k_prune(z, None), z)


def test_softplus_images_fill_their_budget_and_relu_images_may_not() -> None:
    import pytest
    from pydantic import ValidationError

    logits = -1.0 - torch.rand(32, 46, generator=torch.Generator().manual_seed(1))  # every logit negative
    relu, _, _ = _head()
    assert (relu.image_weights(logits, keep=8) == 0).all()  # a relu image has no term at all
    softplus, _, _ = _head(config=SparseHeadConfig(image_activation="softplus", image_terms=8))
    z = softplus.image_weights(logits, keep=8)
    assert ((z > 0).sum(dim=1) == 8).all()  # the same logits still rank 8 terms, the strongest
    assert torch.equal(z.topk(8, dim=1).indices.sort(dim=1).values, logits.topk(8, dim=1).indices.sort(dim=1).values)
    with pytest.raises(ValidationError, match="image_terms"):
        SparseHeadConfig(image_activation="softplus")


def test_hub_floors_keep_each_term_on_at_most_its_share_of_the_images() -> None:
    from core.sparse_head import hub_floor

    weights = torch.tensor([[0.9, 0.0], [0.5, 0.2], [0.7, 0.0], [0.1, 0.4]])  # term 0 active on 4 images, term 1 on 2
    floors = hub_floor(weights, allowed=2)
    assert torch.allclose(floors, torch.tensor([0.5, 0.0]))  # term 0 stays on its two strongest images
    assert ((weights > floors).sum(dim=0) <= 2).all()
    assert torch.equal(hub_floor(weights, allowed=4), torch.zeros(2))


def test_a_head_with_hub_floors_drops_image_weights_at_or_under_them() -> None:
    head, _, _ = _head(config=SparseHeadConfig(image_activation="softplus", image_terms=8, image_term_max_share=0.5))
    logits = torch.randn(16, head.num_terms, generator=torch.Generator().manual_seed(2))
    assert head.image_term_floor is not None
    assert torch.equal(head.image_weights(logits, keep=8), top_k_prune(torch.log1p(torch.nn.functional.softplus(
        logits)), 8))  # an uncalibrated floor (zeros) changes nothing
    head.image_term_floor[3] = 10.0  # no weight reaches it: the term is never active
    z = head.image_weights(logits, keep=8)
    assert (z[:, 3] == 0).all() and ((z > 0).sum(dim=1) <= 8).all()
    assert "image_term_floor" in head.state_dict()
    assert "image_term_floor" not in _head()[0].state_dict()  # heads without the option keep their checkpoints


@pytest.mark.parametrize("activation", ["relu", "softplus"])
def test_a_budgeted_image_equals_the_whole_activation_cut_to_its_budget_with_its_gradient(activation: str) -> None:
    head, _, _ = _head(config=SparseHeadConfig(image_activation=activation, image_terms=8, image_term_max_share=0.5))
    assert head.image_term_floor is not None
    head.image_term_floor.uniform_(0.0, 1.0, generator=torch.Generator().manual_seed(4))
    logits = (torch.randn(16, head.num_terms, generator=torch.Generator().manual_seed(3)) * 2).requires_grad_(True)
    positive = torch.nn.functional.softplus(logits) if activation == "softplus" else torch.relu(logits)
    whole = top_k_prune(torch.log1p(positive), 8)
    expected = whole * (whole > head.image_term_floor)
    budgeted = head.image_weights(logits, keep=8)
    assert torch.equal(budgeted, expected)
    upstream = torch.randn(budgeted.shape, generator=torch.Generator().manual_seed(5))
    (expected_grad,) = torch.autograd.grad(expected, logits, upstream)
    (got_grad,) = torch.autograd.grad(budgeted, logits, upstream)
    assert torch.equal(got_grad, expected_grad)


@pytest.mark.parametrize("shape", [(64, 700), (3, 5, 7), (0, 9)])
def test_the_activation_skips_the_non_positive_logits_with_the_same_values_and_gradients(shape: tuple[int, ...],
                                                                                          ) -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(shape, generator=g) * 3 - 2  # about a quarter positive
    if logits.numel():
        flat = logits.view(-1)
        flat[:6] = torch.tensor([0.0, -0.0, float("nan"), 1e-30, 88.0, -float("inf")])
    logits = logits.transpose(0, -1) if len(shape) == 3 else logits  # not contiguous
    leaf = logits.detach().requires_grad_(True)
    reference = torch.log1p(torch.relu(leaf))
    skipping = log1p_relu(leaf)
    assert skipping.grad_fn is not None and "Log1pOfPositive" in type(skipping.grad_fn).__name__
    assert torch.equal(skipping.nan_to_num(-1.0), reference.nan_to_num(-1.0))  # NaN stays NaN, as relu leaves it
    upstream = torch.randn(skipping.shape, generator=g)
    (expected,) = torch.autograd.grad(reference, leaf, upstream)
    (got,) = torch.autograd.grad(skipping, leaf, upstream)
    assert torch.equal(got.nan_to_num(-1.0), expected.nan_to_num(-1.0))


def test_a_device_or_a_compiled_step_gets_the_plain_activation(monkeypatch: pytest.MonkeyPatch) -> None:
    from core import sparse_head
    from tests.conftest import host_read_back_operators

    logits = torch.randn(8, 30)
    assert "aten.nonzero.default" in host_read_back_operators(log1p_relu, logits)  # eager on a CPU: skips zeros
    monkeypatch.setattr(sparse_head, "data_sized_ops_pay", lambda _tensor: False)
    assert not host_read_back_operators(log1p_relu, logits)
    monkeypatch.undo()
    compiled = torch.compile(log1p_relu, fullgraph=True)  # a data-sized operator would break the graph
    assert torch.allclose(compiled(logits), torch.log1p(torch.relu(logits)))
