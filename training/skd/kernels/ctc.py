"""Frame-level SKD between two CTC heads of one encoder (Kim, Kim, Lee, Interspeech 2024).

The teacher is the top-layer head, the student a head on an intermediate layer of the same encoder:
    L = (1 - alpha) * CTC(teacher) + alpha * [CTC(student) + L_SKD]
    L_SKD = mean over valid frames of KL(stopgrad(p_T,t) || p_S,t), summed over the vocabulary (tau = 1).
Scale note: the third-party code's F.kl_div(reduction='mean') divides by B*T*V; here the KL is summed over V and
averaged over valid frames (so it is V times larger than that code's value). Blank frames are not masked by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.skd.core import soft_kl
from training.skd.weights import clipped_linear

__all__ = ["clipped_linear", "ctc_frame_skd_loss", "greedy_decode", "char_error_rate", "skd_ctc_objective",
           "spike_disagreement", "frame_mask"]


def frame_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, T] bool, True for t < length."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


def ctc_frame_skd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, lengths: torch.Tensor,
                       tau: float = 1.0, blank: int = 0, mask_blank: bool = False) -> torch.Tensor:
    """Frame-level KL(p_T || p_S) over valid frames; ``mask_blank`` also drops frames whose teacher argmax is blank."""
    mask = frame_mask(lengths, student_logits.shape[1])
    if mask_blank:
        mask = mask & (teacher_logits.detach().argmax(-1) != blank)
    return soft_kl(student_logits, teacher_logits, tau=tau, direction="fw", mask=mask, scale_tau2=True)


def _ctc(logits: torch.Tensor, targets: torch.Tensor, in_lens: torch.Tensor, tgt_lens: torch.Tensor,
         blank: int) -> torch.Tensor:
    # F.ctc_loss wants [T, B, V] log-probs; 'mean' divides each utterance by its target length, then averages
    log_probs = F.log_softmax(logits, dim=-1).transpose(0, 1)
    return F.ctc_loss(log_probs, targets, in_lens, tgt_lens, blank=blank, reduction="mean", zero_infinity=True)


def skd_ctc_objective(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      in_lens: torch.Tensor, tgt_lens: torch.Tensor, alpha: float, *, tau: float = 1.0,
                      blank: int = 0, mask_blank: bool = False, distill: bool = True) -> dict[str, torch.Tensor]:
    """{loss, ctc_t, ctc_s, skd, alpha}. ``distill=False`` is the intermediate-CTC baseline (no KL).

    The teacher head is trained by its own CTC; only the KL term sees it detached. alpha = 0 returns exactly the
    teacher's CTC (the student branch is skipped, not multiplied by 0).
    """
    ctc_t = _ctc(teacher_logits, targets, in_lens, tgt_lens, blank)
    ctc_s = _ctc(student_logits, targets, in_lens, tgt_lens, blank)
    skd = (ctc_frame_skd_loss(student_logits, teacher_logits, in_lens, tau, blank, mask_blank) if distill
           else torch.zeros((), device=student_logits.device))
    loss = (1.0 - alpha) * ctc_t
    if alpha != 0.0:
        loss = loss + alpha * (ctc_s + skd)
    return {"loss": loss, "ctc_t": ctc_t.detach(), "ctc_s": ctc_s.detach(), "skd": skd.detach(),
            "alpha": torch.tensor(float(alpha))}


def greedy_decode(logits: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks."""
    best = logits.argmax(-1).tolist()
    out = []
    for row, n in zip(best, lengths.tolist(), strict=True):
        tokens, prev = [], None
        for tok in row[:n]:
            if tok != prev and tok != blank:
                tokens.append(tok)
            prev = tok
        out.append(tokens)
    return out


def _edit_distance(a: list[int], b: list[int]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def char_error_rate(hypotheses: list[list[int]], references: list[list[int]]) -> float:
    """Total edit distance / total reference length."""
    errors = sum(_edit_distance(h, r) for h, r in zip(hypotheses, references, strict=True))
    return errors / max(1, sum(len(r) for r in references))


def spike_disagreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor, lengths: torch.Tensor,
                       blank: int = 0) -> float:
    """1 - Jaccard of the non-blank argmax frame sets, per utterance, averaged (two empty sets agree)."""
    mask = frame_mask(lengths, student_logits.shape[1])
    s = (student_logits.argmax(-1) != blank) & mask
    t = (teacher_logits.argmax(-1) != blank) & mask
    inter, union = (s & t).sum(-1).float(), (s | t).sum(-1).float()
    jaccard = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return float(1.0 - jaccard.mean())
