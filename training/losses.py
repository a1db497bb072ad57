"""Losses of Song et al. (CIKM 2025, "Sparse and Dense Retrievers Learn Better Together"), as functions of score
matrices.

Every score matrix is image-to-text: row i = image i, column j = caption j, the diagonal holds the pairs.
The text-to-image direction is always derived with ``.T``. Each loss returns a dict of named tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from core.fusion import integrated_score
from core.sparse_head import OwnTerms
from training.skd.core import soft_cross_entropy_rows

TeacherGrad = Literal["detach", "through"]
T2ITeacher = Literal["transposed", "untransposed"]


def info_nce(scores_i2t: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: 0.5 * (CE(S, diag) + CE(S^T, diag))."""
    targets = torch.arange(scores_i2t.shape[0], device=scores_i2t.device)
    return 0.5 * (F.cross_entropy(scores_i2t, targets) + F.cross_entropy(scores_i2t.T, targets))


def soft_cross_entropy(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """-mean_i sum_j P_ij log softmax(S)_ij; equals CE against one-hot targets when P is one-hot. The teacher is
    not detached here (teacher_distributions decides)."""
    return soft_cross_entropy_rows(student_logits, teacher_probs).mean()


def teacher_distributions(teacher_i2t: torch.Tensor, *, grad: TeacherGrad,
                          t2i: T2ITeacher) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-softmax teachers for both directions.

    grad='through' keeps the teacher in the graph (official code); 'detach' stops its gradient (BGE-M3).
    t2i='untransposed' reuses the image-row distribution for the text rows (official code's quirk);
    'transposed' takes softmax over images for each caption.
    """
    source = teacher_i2t.detach() if grad == "detach" else teacher_i2t
    p_i2t = torch.softmax(source, dim=1)  # (B_img, B_txt)
    p_t2i = torch.softmax(source.T, dim=1) if t2i == "transposed" else p_i2t  # (B_txt, B_img)
    return p_i2t, p_t2i


def distill(student_i2t: torch.Tensor, p_i2t: torch.Tensor, p_t2i: torch.Tensor) -> torch.Tensor:
    """0.5 * (KD(S, P_i2t) + KD(S^T, P_t2i))."""
    return 0.5 * (soft_cross_entropy(student_i2t, p_i2t) + soft_cross_entropy(student_i2t.T, p_t2i))


@dataclass(frozen=True)
class JointLossWeights:
    w_dense: float  # w1: dense weight inside the integrated score
    w_sparse: float  # w2: sparse weight inside the integrated score
    lambda_dense: float  # lam1
    lambda_sparse: float  # lam2
    distill: bool = True  # False: the no-KD ablation (L' = 0)
    teacher_grad: TeacherGrad = "detach"
    t2i_teacher: T2ITeacher = "transposed"


def joint_loss(dense_i2t: torch.Tensor, sparse_i2t: torch.Tensor, weights: JointLossWeights) -> dict[str, torch.Tensor]:
    """Relevance loss of the paper's joint model, normalised as its official code does.

    dense_i2t: cosine / temperature (B, B); sparse_i2t: raw sparse dot products (B, B).
    L  = (lam1 * L_dense + lam2 * L_sparse + L_integrated) / 2
    L' = (lam1 * KD_dense + lam2 * KD_sparse) / 2,  teacher = softmax(w1 * dense + w2 * sparse)
    relevance = (L + L') / 2
    """
    # dense_i2t is already divided by the temperature
    integrated_i2t = integrated_score(dense_i2t, sparse_i2t, w_dense=weights.w_dense, w_sparse=weights.w_sparse)
    out = {
        "dense_loss": info_nce(dense_i2t),
        "sparse_loss": info_nce(sparse_i2t),
        "integrated_loss": info_nce(integrated_i2t),
    }
    contrastive = (weights.lambda_dense * out["dense_loss"] + weights.lambda_sparse * out["sparse_loss"]
                   + out["integrated_loss"]) / 2
    if weights.distill:
        p_i2t, p_t2i = teacher_distributions(integrated_i2t, grad=weights.teacher_grad, t2i=weights.t2i_teacher)
        out["distill_dense_loss"] = distill(dense_i2t, p_i2t, p_t2i)
        out["distill_sparse_loss"] = distill(sparse_i2t, p_i2t, p_t2i)
        self_distill = (weights.lambda_dense * out["distill_dense_loss"]
                        + weights.lambda_sparse * out["distill_sparse_loss"]) / 2
    else:
        self_distill = torch.zeros((), device=dense_i2t.device)
    out["relevance"] = 0.5 * (contrastive + self_distill)
    return out


def d2s_loss(teacher_dense_i2t: torch.Tensor, sparse_i2t: torch.Tensor) -> dict[str, torch.Tensor]:
    """D2S (Nguyen et al., ECIR 2024): sparse scores distilled from a frozen dense teacher, both directions."""
    p_i2t, p_t2i = teacher_distributions(teacher_dense_i2t, grad="detach", t2i="transposed")
    loss = distill(sparse_i2t, p_i2t, p_t2i)
    return {"distill_sparse_loss": loss, "relevance": loss}


def multi_positive_info_nce(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where row i may have several positives: -log sum_{j in P(i)} softmax(S_i)_j.

    scores: (B, B); positives: (B, B) bool with at least one True per row and per column.
    """
    def one_side(s: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(s, dim=1)
        return -torch.logsumexp(log_p.masked_fill(~p, float("-inf")), dim=1).mean()

    return 0.5 * (one_side(scores, positives) + one_side(scores.T, positives.T))


def bow_grounding_loss(bow_scores: torch.Tensor, same_image: torch.Tensor) -> dict[str, torch.Tensor]:
    """VDR-style bag-of-words grounding: image sparse vectors scored against the IDF-weighted words of the
    batch images' captions (bow_scores[i, j] = z_img_i . bow_j); every row of the same image is a positive."""
    return {"bow_loss": multi_positive_info_nce(bow_scores, same_image)}


def word_loss(image_logits: torch.Tensor, caption_words: OwnTerms, *,
              kind: Literal["softmax", "bce"] = "softmax") -> dict[str, torch.Tensor]:
    """Word-classifier grounding of the head's image logits (one per vocabulary term) on the image's caption words.

    caption_words: each image's IDF-weighted caption words, compact (a column per word, > 0; -1 pads).
    'softmax': soft cross-entropy of softmax over the vocabulary against the normalised word weights; it ranks
    caption words first and leaves the rest of the vector free (the image budget stays in use). 'bce': binary
    cross-entropy per term (the readability probe's loss) summed over the vocabulary and divided by the number
    of caption words; it also pushes words no caption uses below zero, so image vectors get shorter.

    Both are computed without a (B, num_terms) target: the caption words' logits are gathered, and the vocabulary
    enters only through a log-sum-exp (softmax) or a sum of softplus (bce: log(1 + e^x) - t * x summed).
    """
    logits = image_logits.float()
    share = caption_words.present_weights().float()
    words = share > 0
    picked = logits.gather(1, caption_words.columns.clamp(min=0))  # (B, L): each caption word's logit
    if kind == "softmax":
        total = share.sum(dim=1, keepdim=True)
        target = share / total.clamp_min(1e-12)
        # -sum_j t_j log softmax(x)_j = logsumexp(x) - sum_j t_j x_j (the target sums to 1; a row without words: 0)
        rows = (total.squeeze(1) > 0) * torch.logsumexp(logits, dim=1) - (target * picked).sum(dim=1)
        return {"word_loss": rows.mean()}
    positives = torch.where(words, picked, torch.zeros((), device=logits.device)).sum()
    bce = F.softplus(logits).sum() - positives
    return {"word_loss": bce / words.sum().clamp_min(1).float()}


def hub_loss(image_sparse: torch.Tensor, max_share: float,
             caption_words: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Hub control: each term active in more than ``max_share`` of the batch's images pays, on its mean weight, for
    how far over that share it is: sum_t max(0, share_t - max_share) * mean_i z_it (the shares detached). A term
    in most images tells a reader nothing and makes the longest posting list; under a term budget, pushing its
    weaker occurrences down gives their places to words particular to the image.

    caption_words: (B, T) bool, the words of each image's captions; when given, only a term's activations on images
    whose captions do not use it pay (a word in 30% of the captions may stay in those 30% of the images).

    Returns ``hub_loss`` and ``hub_max_share``, the largest share of the batch's images a term is active in."""
    weights = image_sparse.float()
    share = (weights > 0).float().mean(dim=0)  # (T,)
    excess = (share - max_share).clamp_min(0).detach()
    charged = weights if caption_words is None else weights * ~caption_words
    return {"hub_loss": (excess * charged.mean(dim=0)).sum(), "hub_max_share": share.max().detach()}


Weights = torch.Tensor | OwnTerms  # (B, num_terms), or each row's weights on its own columns (compact)


def _row_values(weights: Weights) -> torch.Tensor:
    """(B, width) float values of each row, zero at a compact row's pads."""
    return (weights.present_weights() if isinstance(weights, OwnTerms) else weights).float()


def _row_mask(values: torch.Tensor, threshold: int | None) -> torch.Tensor | None:
    """(B, 1) 1.0 for rows the regulariser applies to (more than ``threshold`` active terms); None: every row."""
    if threshold is None:
        return None
    return ((values > 0).sum(dim=1, keepdim=True) > threshold).to(values.dtype)


def l1_regularizer(weights: Weights, threshold: int | None = None) -> torch.Tensor:
    """Mean L1 norm of the rows, mean_i ||z_i||_1; with a threshold, rows at or under it count as 0."""
    values = _row_values(weights)
    norms = values.abs().sum(dim=1, keepdim=True)
    mask = _row_mask(values, threshold)
    return (norms if mask is None else norms * mask).mean()


def flops_regularizer(weights: Weights, threshold: int | None = None) -> torch.Tensor:
    """FLOPS regulariser (Paria et al. 2020): sum_j (mean_i |z_ij|)^2; with a threshold (OpenSearch's
    flops_threshold), only rows with more active terms than it contribute."""
    values = _row_values(weights)
    mask = _row_mask(values, threshold)
    magnitudes = values.abs() if mask is None else values.abs() * mask
    if not isinstance(weights, OwnTerms):
        return (magnitudes.mean(dim=0) ** 2).sum()
    # compact rows: each column's mean over the rows gathers from wherever that column appears. The columns are
    # sorted and each run of one column summed into its own slot (as many slots as entries, the spare ones 0), so
    # the shapes never depend on the data: no count read back to the host, one graph when compiled. Pads add 0.
    columns = weights.columns.clamp(min=0).reshape(-1)
    order = columns.argsort()
    ordered = columns[order]
    starts = torch.cat([torch.ones(1, dtype=torch.bool, device=ordered.device), ordered[1:] != ordered[:-1]])
    slots = starts.cumsum(0) - 1
    sums = magnitudes.new_zeros(ordered.numel()).index_add_(0, slots, magnitudes.reshape(-1)[order])
    return ((sums / values.shape[0]) ** 2).sum()


def sparsity_loss(text_sparse: Weights, image_sparse: Weights, *, eta_text: float, eta_image: float,
                  kind: Literal["l1", "flops"], image_threshold: int | None = None) -> dict[str, torch.Tensor]:
    """0.5 * (eta_text * R(z_text) + eta_image * R(z_image)); etas already include their warm-up.

    Either side may be compact (texts scored on their own terms). ``image_threshold``: the image term applies only
    to vectors with more active terms than this.
    """
    reg = l1_regularizer if kind == "l1" else flops_regularizer
    text_term, image_term = reg(text_sparse), reg(image_sparse, image_threshold)
    return {"text_reg": text_term.detach(), "image_reg": image_term.detach(),
            "regularizer": 0.5 * (eta_text * text_term + eta_image * image_term)}
