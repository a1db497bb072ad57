"""Frame-level CTC SKD (Kim, Kim, Lee, Interspeech 2024): kernel, objective, schedule and metrics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.skd.kernels.ctc import (
    char_error_rate,
    clipped_linear,
    ctc_frame_skd_loss,
    greedy_decode,
    skd_ctc_objective,
    spike_disagreement,
)


def _logits(seed: int = 0, b: int = 2, t: int = 6, v: int = 4) -> torch.Tensor:
    return torch.randn(b, t, v, generator=torch.Generator().manual_seed(seed))


def test_equal_logits_zero_and_teacher_detached() -> None:
    student = _logits().requires_grad_(True)
    teacher = student.detach().clone().requires_grad_(True)
    loss = ctc_frame_skd_loss(student, teacher, torch.tensor([6, 4]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    (loss + ctc_frame_skd_loss(student, _logits(1), torch.tensor([6, 4]))).backward()
    assert teacher.grad is None and student.grad is not None


def test_frames_beyond_length_ignored() -> None:
    s, t, lengths = _logits(0), _logits(1), torch.tensor([6, 3])
    s2, t2 = s.clone(), t.clone()
    s2[1, 3:] += 100.0
    t2[1, 3:] -= 100.0
    torch.testing.assert_close(ctc_frame_skd_loss(s2, t2, lengths), ctc_frame_skd_loss(s, t, lengths))


def test_mask_blank_excludes_teacher_blank_frames() -> None:
    s, t = _logits(0, b=1, t=4), torch.zeros(1, 4, 4)
    t[0, 0, 0] = t[0, 2, 0] = 5.0  # frames 0 and 2: teacher argmax is blank
    t[0, 1, 2] = t[0, 3, 1] = 5.0
    per = [ctc_frame_skd_loss(s[:, f: f + 1], t[:, f: f + 1], torch.tensor([1])) for f in range(4)]
    expected = (per[1] + per[3]) / 2
    torch.testing.assert_close(ctc_frame_skd_loss(s, t, torch.tensor([4]), mask_blank=True), expected)
    torch.testing.assert_close(ctc_frame_skd_loss(s, t, torch.tensor([4])), torch.stack(per).mean())


def test_clipped_linear_range_and_ends() -> None:
    values = [clipped_linear(e, 20) for e in range(1, 21)]
    assert all(0.3 <= a <= 0.7 for a in values) and values == sorted(values)
    assert values[0] == 0.3 and values[-1] == pytest.approx(0.7)


def test_alpha_zero_is_teacher_ctc() -> None:
    s, t = _logits(0, t=8, v=5), _logits(1, t=8, v=5)
    targets, in_lens, tgt_lens = torch.tensor([[1, 2, 3], [4, 1, 0]]), torch.tensor([8, 7]), torch.tensor([3, 2])
    out = skd_ctc_objective(s, t, targets, in_lens, tgt_lens, alpha=0.0)
    ref = F.ctc_loss(F.log_softmax(t, -1).transpose(0, 1), targets, in_lens, tgt_lens, zero_infinity=True)
    assert torch.equal(out["loss"], ref)
    mixed = skd_ctc_objective(s, t, targets, in_lens, tgt_lens, alpha=0.5)
    torch.testing.assert_close(mixed["loss"], 0.5 * mixed["ctc_t"] + 0.5 * (mixed["ctc_s"] + mixed["skd"]))


def test_skd_gradient_reaches_shared_layers_only_via_student_head() -> None:
    torch.manual_seed(0)
    lower, upper = nn.Linear(3, 3), nn.Linear(3, 3)
    student_head, teacher_head = nn.Linear(3, 4), nn.Linear(3, 4)
    x = torch.randn(2, 5, 3)
    h1 = lower(x)
    h2 = upper(torch.tanh(h1))
    loss = ctc_frame_skd_loss(student_head(h1), teacher_head(h2), torch.tensor([5, 3]))
    loss.backward()
    assert lower.weight.grad is not None and student_head.weight.grad is not None
    assert upper.weight.grad is None and teacher_head.weight.grad is None


def test_greedy_cer_and_spike_disagreement() -> None:
    logits = torch.full((1, 6, 4), -5.0)
    for f, tok in enumerate([1, 1, 0, 2, 2, 3]):
        logits[0, f, tok] = 5.0
    assert greedy_decode(logits, torch.tensor([6])) == [[1, 2, 3]]
    assert greedy_decode(logits, torch.tensor([4])) == [[1, 2]]
    assert char_error_rate([[1, 2]], [[1, 2, 3]]) == pytest.approx(1 / 3)
    other = logits.clone()
    other[0, 5] = torch.tensor([5.0, -5.0, -5.0, -5.0])  # frame 5 becomes blank
    # non-blank frames {0,1,3,4,5} vs {0,1,3,4}: Jaccard 4/5
    assert spike_disagreement(logits, other, torch.tensor([6])) == pytest.approx(0.2)
    assert spike_disagreement(logits, logits, torch.tensor([6])) == 0.0
