from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    JointLossWeights,
    d2s_loss,
    distill,
    flops_regularizer,
    hub_loss,
    info_nce,
    joint_loss,
    l1_regularizer,
    soft_cross_entropy,
    teacher_distributions,
)
from training.schedules import quadratic_warmup


def _scores(seed: int, b: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, b, generator=g) * 3


def test_info_nce_matches_open_clip_clip_loss() -> None:
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    txt = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    expected = ClipLoss()(img, txt, scale)
    assert torch.allclose(info_nce(scale * img @ txt.T), expected, atol=1e-6)


def test_info_nce_symmetric_under_transposition() -> None:
    s = _scores(1)
    assert torch.allclose(info_nce(s), info_nce(s.T))


def test_distillation_gradient_vanishes_when_student_equals_teacher() -> None:
    s = _scores(2).requires_grad_(True)
    p_i2t, p_t2i = teacher_distributions(s, grad="detach", t2i="transposed")
    loss = distill(s, p_i2t, p_t2i)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-6)
    # the cross-entropy then equals the teacher's entropy, i.e. KL = 0
    entropy_i2t = -(p_i2t * p_i2t.log()).sum(1).mean()
    assert torch.allclose(soft_cross_entropy(s.detach(), p_i2t), entropy_i2t, atol=1e-6)


def test_soft_cross_entropy_with_one_hot_teacher_is_cross_entropy() -> None:
    s = _scores(3)
    one_hot = torch.eye(6)
    assert torch.allclose(soft_cross_entropy(s, one_hot), F.cross_entropy(s, torch.arange(6)), atol=1e-6)


@pytest.mark.parametrize("teacher_grad", ["detach", "through"])
def test_teacher_gradient_follows_option(teacher_grad: str) -> None:
    dense = _scores(4).requires_grad_(True)
    sparse = _scores(5).requires_grad_(True)
    w = JointLossWeights(w_dense=0.5, w_sparse=0.5, lambda_dense=1, lambda_sparse=1,
                         teacher_grad=teacher_grad)  # type: ignore[arg-type]
    out = joint_loss(dense, sparse, w)
    # distill_sparse's student is the sparse matrix: dense can only be reached through the teacher
    (grad_dense,) = torch.autograd.grad(out["distill_sparse_loss"], dense, allow_unused=True)
    reached = grad_dense is not None and grad_dense.abs().sum() > 0
    assert reached == (teacher_grad == "through")


def test_zero_lambdas_without_distillation_reduce_to_plain_info_nce() -> None:
    dense, sparse = _scores(6), _scores(7)
    w = JointLossWeights(w_dense=1.0, w_sparse=0.0, lambda_dense=0.0, lambda_sparse=0.0, distill=False)
    out = joint_loss(dense, sparse, w)
    # relevance = 0.5 * (L_integrated / 2) with L_integrated = InfoNCE(dense) when w_sparse = 0
    assert torch.allclose(out["relevance"], info_nce(dense) / 4, atol=1e-6)
    assert "distill_dense_loss" not in out


def test_zero_distillation_weights_leave_only_the_task_loss() -> None:
    dense, sparse = _scores(8), _scores(9)
    with_kd = JointLossWeights(w_dense=0.3, w_sparse=0.7, lambda_dense=0.0, lambda_sparse=0.0, distill=True)
    without = JointLossWeights(w_dense=0.3, w_sparse=0.7, lambda_dense=0.0, lambda_sparse=0.0, distill=False)
    assert torch.allclose(joint_loss(dense, sparse, with_kd)["relevance"],
                          joint_loss(dense, sparse, without)["relevance"], atol=1e-6)


def test_transposed_teacher_makes_directions_agree_under_transposition() -> None:
    student, teacher = _scores(10), _scores(11)
    p, q = teacher_distributions(teacher, grad="detach", t2i="transposed")
    p_t, q_t = teacher_distributions(teacher.T, grad="detach", t2i="transposed")
    assert torch.allclose(distill(student, p, q), distill(student.T, p_t, q_t), atol=1e-6)


def test_untransposed_teacher_is_the_official_quirk() -> None:
    teacher = _scores(12)
    p_i2t, p_t2i = teacher_distributions(teacher, grad="detach", t2i="untransposed")
    assert p_t2i is p_i2t  # text rows get the image-row distribution
    _, correct = teacher_distributions(teacher, grad="detach", t2i="transposed")
    assert not torch.allclose(p_t2i, correct)
    assert torch.allclose(p_t2i.diagonal().sum(), p_i2t.diagonal().sum())


def test_d2s_teacher_receives_no_gradient() -> None:
    teacher = _scores(13).requires_grad_(True)
    sparse = _scores(14).requires_grad_(True)
    out = d2s_loss(teacher, sparse)
    out["relevance"].backward()
    assert teacher.grad is None
    assert sparse.grad is not None and sparse.grad.abs().sum() > 0


def test_regularizers_and_warmup() -> None:
    z = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    assert l1_regularizer(z).item() == pytest.approx(3.0)
    assert flops_regularizer(z).item() == pytest.approx(0.5**2 + 1.5**2 + 1.0**2)
    assert quadratic_warmup(1.0, 0, 10) == 0.0
    assert quadratic_warmup(1.0, 5, 10) == pytest.approx(0.25)
    assert quadratic_warmup(1.0, 50, 10) == 1.0


@pytest.mark.parametrize("threshold", [None, 1])
def test_regularizers_of_compact_rows_equal_those_of_their_dense_rows(threshold: int | None) -> None:
    from core.sparse_head import OwnTerms

    columns = torch.tensor([[4, 1, -1], [1, -1, -1], [0, 2, 4]])
    weights = torch.tensor([[0.5, 2.0, 7.0], [1.5, 0.0, 0.0], [0.25, 1.0, 3.0]], requires_grad=True)  # 7.0: a pad
    compact = OwnTerms(columns, weights)
    for regularizer in (l1_regularizer, flops_regularizer):
        expected, got = regularizer(compact.to_dense(6), threshold), regularizer(compact, threshold)
        assert float(got.detach()) == pytest.approx(float(expected.detach()))
        (expected_grad,) = torch.autograd.grad(expected, weights)
        (got_grad,) = torch.autograd.grad(got, weights)
        assert torch.allclose(got_grad, expected_grad) and float(got_grad[0, 2]) == 0.0


def test_hub_loss_charges_only_terms_over_the_share_by_their_excess() -> None:
    # 4 images, 3 terms: term 0 in every image, term 1 in half, term 2 in one
    weights = torch.tensor([[1.0, 2.0, 0.0], [1.0, 0.0, 0.0], [3.0, 2.0, 0.0], [1.0, 0.0, 4.0]], requires_grad=True)
    out = hub_loss(weights, max_share=0.5)
    # only term 0 is over the share: (1.0 - 0.5) * its mean weight 1.5
    assert out["hub_loss"].item() == pytest.approx(0.5 * 1.5)
    assert out["hub_max_share"].item() == 1.0
    out["hub_loss"].backward()
    assert weights.grad is not None
    assert torch.allclose(weights.grad[:, 0], torch.full((4,), 0.5 / 4)) and weights.grad[:, 1:].abs().sum() == 0
    assert hub_loss(weights.detach(), max_share=1.0)["hub_loss"].item() == 0.0


def test_hub_loss_can_spare_the_images_whose_captions_use_the_word() -> None:
    weights = torch.tensor([[1.0, 2.0], [1.0, 0.0], [3.0, 2.0], [1.0, 0.0]], requires_grad=True)
    captions = torch.tensor([[True, False], [True, False], [False, False], [False, True]])
    out = hub_loss(weights, max_share=0.5, caption_words=captions)
    # term 0 is over the share (1.0 - 0.5); only its activations on images 2 and 3 pay: (3 + 1) / 4
    assert out["hub_loss"].item() == pytest.approx(0.5 * 1.0)
    out["hub_loss"].backward()
    assert weights.grad is not None
    assert weights.grad[:, 0].tolist() == pytest.approx([0.0, 0.0, 0.5 / 4, 0.5 / 4])
    assert weights.grad[:, 1].abs().sum() == 0


def test_the_flops_of_compact_rows_equal_their_dense_rows_with_no_shape_taken_from_the_data() -> None:
    """Columns shared by many rows, pads among them: summed by operators whose output shapes do not depend on the
    data (no unique or nonzero, whose sizes a GPU must read back to the host before it goes on)."""
    from core.sparse_head import OwnTerms
    from tests.conftest import host_read_back_operators

    g = torch.Generator().manual_seed(5)
    columns = torch.stack([torch.randperm(12, generator=g)[:5] for _ in range(16)])
    columns = torch.where(torch.rand(16, 5, generator=g) < 0.2, torch.full_like(columns, -1), columns)
    weights = torch.rand(16, 5, generator=g)
    compact = OwnTerms(columns, weights)
    assert float(flops_regularizer(compact)) == pytest.approx(float(flops_regularizer(compact.to_dense(12))))
    assert not host_read_back_operators(lambda c, w: flops_regularizer(OwnTerms(c, w)), columns, weights)
