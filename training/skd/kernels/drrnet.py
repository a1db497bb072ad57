"""DRRNet-SKD: offline + online self-distillation with adaptive weight assignment (Xu et al., 2023).

Reconstruction [R] (abstract only):
    L = CE(y, p_s) + w_off * tau^2 KL(p_off^tau || p_s^tau) + w_on * tau^2 KL(p_on^tau || p_s^tau)
with T_off a frozen copy of the architecture trained with CE beforehand, T_on the student's own stored predictions
of the previous epoch (a PredictionBank), and AWA 'reverse' weights w_on = beta*perf, w_off = beta*(1 - perf).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from training.skd.core import soft_kl

AWAMode = Literal["reverse", "inverse"]


def awa_weights(perf: float, beta: float = 1.0, mode: AWAMode = "reverse") -> tuple[float, float]:
    """(w_off, w_on) that sum to beta and move in opposite directions with perf in [0, 1].

    'reverse': the offline teacher leads while the student is weak (w_on = beta*perf).
    'inverse': the other ordering (w_off = beta*perf), kept to test the direction [R].
    """
    p = min(max(float(perf), 0.0), 1.0)
    if mode == "reverse":
        return beta * (1.0 - p), beta * p
    if mode == "inverse":
        return beta * p, beta * (1.0 - p)
    raise ValueError(f"unknown AWA mode {mode!r}")


def dual_teacher_skd_loss(student_logits: Tensor, target: Tensor, *, offline_logits: Tensor | None = None,
                          online_probs: Tensor | None = None, online_mask: Tensor | None = None,
                          w_off: float = 0.0, w_on: float = 0.0, tau: float = 4.0,
                          label_smoothing: float = 0.0) -> dict[str, Tensor | float]:
    """CE plus the two weighted KD terms; both teachers are detached here.

    online_probs are probabilities at temperature 1 (what the bank stores); they are re-tempered by
    p^(1/tau) renormalised, i.e. softmax(log p / tau). online_mask (bool [B]) marks rows the bank has seen;
    unseen rows contribute 0 and are left out of the online mean. A term whose weight is 0 is skipped so the loss
    equals CE bit for bit.
    """
    ce = F.cross_entropy(student_logits, target, label_smoothing=label_smoothing)
    loss = ce
    zero = student_logits.new_zeros(())
    kd_off, kd_on = zero, zero
    if offline_logits is not None and w_off != 0.0:
        kd_off = soft_kl(student_logits, teacher_logits=offline_logits.detach(), tau=tau, scale_tau2=True)
        loss = loss + w_off * kd_off
    if online_probs is not None and w_on != 0.0:
        valid = online_mask if online_mask is not None else torch.ones_like(target, dtype=torch.bool)
        if bool(valid.any()):
            # log of stored probs as teacher logits: softmax(log p / tau) is p re-tempered.
            t_logits = online_probs.detach().clamp_min(1e-12).log()
            kd_on = soft_kl(student_logits, teacher_logits=t_logits, tau=tau, mask=valid, scale_tau2=True)
            loss = loss + w_on * kd_on
    return {"loss": loss, "ce": ce.detach(), "kd_off": kd_off.detach(), "kd_on": kd_on.detach(),
            "w_off": float(w_off), "w_on": float(w_on)}
