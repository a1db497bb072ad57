"""Cross-lingual extractive QA via SKD with mAP@k coefficients (Carrino, Escolano, Fonollosa).

    L = alpha_ce * (CE(start) + CE(end))/2 + c * 1/2 [KL_T(start) + KL_T(end)],   KL_T = T^2 KL(p_t^T || p_s^T)

c is a batch scalar measuring how reliable the teacher (the previous generation of the model) is on this batch:
mAP@k of its top-k start/end positions against a window around the gold position, or MRR with exact hits.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from training.skd.core import soft_kl

Direction = Literal["fw", "rv", "sym"]
Coefficient = Literal["none", "map", "mrr"]


def _mask_positions(logits: Tensor, mask: Tensor | None) -> Tensor:
    """Fill invalid sequence positions (the class axis here) with a large finite negative, same for s and t.

    A constant fill makes the padded values irrelevant; finite (not -inf) keeps 0 * log terms finite.
    """
    if mask is None:
        return logits
    return logits.masked_fill(~mask, -1e9)


def span_kl(s_start: Tensor, s_end: Tensor, t_start: Tensor, t_end: Tensor, *, tau: float = 2.0,
            direction: Direction = "fw", mask: Tensor | None = None) -> Tensor:
    """1/2 [KL_T(start) + KL_T(end)], batch mean, T^2-scaled; logits are [B, L], mask [B, L] True = valid token."""
    kl_start = soft_kl(_mask_positions(s_start, mask), teacher_logits=_mask_positions(t_start.detach(), mask),
                       tau=tau, direction=direction, scale_tau2=True)
    kl_end = soft_kl(_mask_positions(s_end, mask), teacher_logits=_mask_positions(t_end.detach(), mask),
                     tau=tau, direction=direction, scale_tau2=True)
    return 0.5 * (kl_start + kl_end)


def _first_hit_rr(teacher_logits: Tensor, positions: Tensor, *, tau: float, k: int, lo: int, hi: int,
                  mask: Tensor | None) -> Tensor:
    """Per-example 1/rank of the first top-k index in [pos+lo, pos+hi); 0 without a hit."""
    probs = torch.softmax(_mask_positions(teacher_logits.detach(), mask) / tau, dim=-1)
    top = probs.topk(min(k, probs.shape[-1]), dim=-1).indices  # [B, k], best first
    pos = positions.view(-1, 1)
    hits = (top >= pos + lo) & (top < pos + hi)
    ranks = torch.arange(1, top.shape[-1] + 1, device=top.device, dtype=probs.dtype)
    # Only the first hit counts (apk with actual=[1]): the smallest rank among hits.
    first = torch.where(hits, ranks, torch.full_like(ranks, float("inf"))).min(dim=-1).values
    return torch.where(torch.isinf(first), torch.zeros_like(first), 1.0 / first)


def map_at_k_coefficient(t_start: Tensor, t_end: Tensor, start_pos: Tensor, end_pos: Tensor, *, tau: float = 2.0,
                         k: int = 10, window: int = 5, mask: Tensor | None = None) -> float:
    """(mAP_start + mAP_end)/2 with hits in [pos - window, pos + window - 1] (the reference's range())."""
    ap_s = _first_hit_rr(t_start, start_pos, tau=tau, k=k, lo=-window, hi=window, mask=mask)
    ap_e = _first_hit_rr(t_end, end_pos, tau=tau, k=k, lo=-window, hi=window, mask=mask)
    return float(0.5 * (ap_s.mean() + ap_e.mean()))


def mrr_coefficient(t_start: Tensor, t_end: Tensor, start_pos: Tensor, end_pos: Tensor, *, tau: float = 2.0,
                    k: int = 10, mask: Tensor | None = None) -> float:
    """(MRR_start + MRR_end)/2 with exact-position hits within the top k."""
    rr_s = _first_hit_rr(t_start, start_pos, tau=tau, k=k, lo=0, hi=1, mask=mask)
    rr_e = _first_hit_rr(t_end, end_pos, tau=tau, k=k, lo=0, hi=1, mask=mask)
    return float(0.5 * (rr_s.mean() + rr_e.mean()))


def span_ce(s_start: Tensor, s_end: Tensor, start_pos: Tensor, end_pos: Tensor, mask: Tensor | None = None) -> Tensor:
    """The HF QA loss: (CE(start) + CE(end)) / 2."""
    return 0.5 * (F.cross_entropy(_mask_positions(s_start, mask), start_pos)
                  + F.cross_entropy(_mask_positions(s_end, mask), end_pos))


def qa_skd_objective(s_start: Tensor, s_end: Tensor, start_pos: Tensor, end_pos: Tensor, *,
                     t_start: Tensor | None = None, t_end: Tensor | None = None, tau: float = 2.0,
                     alpha_ce: float = 1.0, coefficient: Coefficient = "map", kd_weight: float = 1.0,
                     k: int = 10, window: int = 5, direction: Direction = "fw",
                     mask: Tensor | None = None) -> dict[str, Tensor | float]:
    """alpha_ce * CE_span + kd_weight * c * span_kl; c = 1 ('none'), mAP@k ('map') or MRR ('mrr').

    Without a teacher, or with kd_weight * c == 0, the KD term is skipped so the loss equals alpha_ce * CE_span.
    """
    ce = span_ce(s_start, s_end, start_pos, end_pos, mask)
    loss = alpha_ce * ce
    kl = s_start.new_zeros(())
    coeff = 0.0
    if t_start is not None and t_end is not None:
        if coefficient == "map":
            coeff = map_at_k_coefficient(t_start, t_end, start_pos, end_pos, tau=tau, k=k, window=window, mask=mask)
        elif coefficient == "mrr":
            coeff = mrr_coefficient(t_start, t_end, start_pos, end_pos, tau=tau, k=k, mask=mask)
        else:
            coeff = 1.0
        if kd_weight * coeff != 0.0:
            kl = span_kl(s_start, s_end, t_start, t_end, tau=tau, direction=direction, mask=mask)
            loss = loss + kd_weight * coeff * kl
    return {"loss": loss, "ce": ce.detach(), "kl": kl.detach(), "coeff": coeff}


def cross_lingual_pairs(qid_langs: Mapping[str, set[str]] | Mapping[str, Sequence[str]], *, n_tgt_langs: int = 5,
                        pivot: str = "en", rng: random.Random) -> list[tuple[str, str, str]]:
    """For each id: S = pivot + n_tgt sampled non-pivot languages (0 = all); emit all |S|^2 (q_lang, c_lang) pairs.

    Returns (qid, lq, lc) triples, deterministic for a seeded `rng` (languages are sorted before sampling).
    """
    out: list[tuple[str, str, str]] = []
    for qid in sorted(qid_langs):
        others = sorted(lang for lang in qid_langs[qid] if lang != pivot)
        n = len(others) if n_tgt_langs <= 0 else min(n_tgt_langs, len(others))
        chosen = [pivot, *sorted(rng.sample(others, n))]
        out.extend((qid, lq, lc) for lq in chosen for lc in chosen)
    return out
