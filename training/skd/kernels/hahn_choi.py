"""Self-knowledge distillation from the word-embedding space (Hahn & Choi, RANLP 2019).

The soft target is what the model's own softmax would give if the hidden state pointed exactly at the target's
output embedding: q(j | y) = softmax_j(sim(w_y, w_j) / tau), kept to the top-K most similar words plus y and
renormalised (the cheap approximation) [R]. Loss: (1 - alpha) CE(y, p) + alpha KL(q || p), alpha ramped [R].
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from training.skd.core import masked_mean, soft_kl

Similarity = Literal["dot", "cos"]


@torch.no_grad()
def embedding_prior(target: torch.Tensor, out_emb: torch.Tensor, tau: float = 1.0, topk: int | None = None,
                    sim: Similarity = "dot") -> torch.Tensor:
    """Teacher probabilities [N, V] from the similarity of the (detached) output embeddings to w_target.

    With ``topk`` only the K most similar words besides the target, plus the target itself, keep mass
    (min(K + 1, V) nonzeros per row); the rest is 0.
    """
    if tau <= 0:
        raise ValueError(f"temperature must be > 0, got {tau}")
    emb = out_emb.detach()
    if sim == "cos":
        emb = F.normalize(emb, dim=-1)
    elif sim != "dot":
        raise ValueError(f"unknown similarity {sim!r}")
    scores = emb[target] @ emb.T / tau  # [N, V]
    if topk is not None and topk + 1 < emb.shape[0]:
        # the target always stays in the support, even when another word scores higher under 'dot'
        ranking = scores.scatter(-1, target.unsqueeze(-1), float("inf"))
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep.scatter_(-1, ranking.topk(topk + 1, dim=-1).indices, True)
        scores = scores.masked_fill(~keep, float("-inf"))
    return F.softmax(scores, dim=-1)


def embedding_skd_loss(logits: torch.Tensor, target: torch.Tensor, out_emb: torch.Tensor, alpha: float,
                       tau: float = 1.0, topk: int | None = 10, ignore_index: int = -100,
                       sim: Similarity = "dot") -> dict[str, torch.Tensor]:
    """(1 - alpha) CE(y, p) + alpha KL(q || p) over non-ignored rows; logits [N, V], out_emb [V, d].

    The prior is computed under no_grad, so out_emb receives gradient only through the logits (if at all).
    alpha = 0 returns the plain cross-entropy (the KL is not even evaluated).
    """
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    nll = -F.log_softmax(logits, dim=-1).gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)
    ce = masked_mean(nll, valid)
    if alpha == 0.0:
        return {"loss": ce, "ce": ce.detach(), "kl": torch.zeros((), dtype=logits.dtype)}
    prior = embedding_prior(safe_target, out_emb, tau=tau, topk=topk, sim=sim)
    kl = soft_kl(logits, teacher_probs=prior, mask=valid, scale_tau2=False)  # student at temperature 1
    return {"loss": (1.0 - alpha) * ce + alpha * kl, "ce": ce.detach(), "kl": kl.detach()}
