"""Adaptive label smoothing with self-knowledge (Lee, Cheung, Zhang, EMNLP 2022).

Per token, the one-hot target is mixed with a prior q from the best-so-far snapshot of the model (uniform before the
first snapshot), with a per-token smoothing weight alpha computed, detached, from the current model's entropy:

    y~ = (1 - alpha) onehot(y) + alpha q,   L = (1 - alpha) NLL + alpha CE(q, p).

The exact alpha(H) formula and its direction are reconstructed [R]; ``alpha_fn`` keeps them pluggable.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from training.skd.core import masked_mean, soft_ce

AlphaFn = Literal["entropy", "inv_entropy", "constant"]


def entropy_alpha(logits: torch.Tensor, alpha_max: float, alpha_fn: AlphaFn = "entropy") -> torch.Tensor:
    """Per-row smoothing weight in [0, alpha_max], detached.

    'entropy' = alpha_max (1 - H/log V): peaked (over-confident) rows get more smoothing [R];
    'inv_entropy' = alpha_max H/log V; 'constant' = alpha_max.
    """
    logits = logits.detach()
    if alpha_fn == "constant":
        return torch.full(logits.shape[:-1], float(alpha_max), dtype=logits.dtype, device=logits.device)
    num_classes = logits.shape[-1]
    if num_classes == 1:  # log V = 0: a single class is maximally peaked
        ratio = torch.zeros(logits.shape[:-1], dtype=logits.dtype, device=logits.device)
    else:
        log_p = F.log_softmax(logits, dim=-1)
        ratio = (-(log_p.exp() * log_p).sum(-1) / math.log(num_classes)).clamp(0.0, 1.0)
    if alpha_fn == "entropy":
        return alpha_max * (1.0 - ratio)
    if alpha_fn == "inv_entropy":
        return alpha_max * ratio
    raise ValueError(f"unknown alpha_fn {alpha_fn!r}")


def adaptive_ls_loss(logits: torch.Tensor, target: torch.Tensor, prior_logits: torch.Tensor | None = None,
                     alpha_max: float = 0.2, tau: float = 1.0, alpha_fn: AlphaFn = "entropy",
                     ignore_index: int = -100) -> dict[str, torch.Tensor]:
    """Mean over non-ignored rows of (1 - alpha) NLL + alpha CE(q, p); logits [N, V], target [N].

    q = softmax(prior_logits / tau) (detached; the best-past snapshot), or uniform when ``prior_logits`` is None.
    With alpha_fn='constant' and no prior this is exactly F.cross_entropy(..., label_smoothing=alpha_max).
    Returns {"loss", "nll", "alpha" [N] (0 at ignored rows)}.
    """
    valid = target != ignore_index
    log_p = F.log_softmax(logits, dim=-1)
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    nll = -log_p.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)
    if prior_logits is None:
        prior_ce = -log_p.mean(dim=-1)  # CE(uniform, p)
    else:
        # tau sharpens/flattens the prior only; the student stays at temperature 1
        q = F.softmax(prior_logits.detach() / tau, dim=-1)
        prior_ce = soft_ce(logits, teacher_probs=q, reduction="none")
    alpha = torch.where(valid, entropy_alpha(logits, alpha_max, alpha_fn), torch.zeros((), dtype=logits.dtype))
    per_row = (1.0 - alpha) * nll + alpha * prior_ce
    return {"loss": masked_mean(per_row, valid), "nll": masked_mean(nll, valid).detach(), "alpha": alpha}
