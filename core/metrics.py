"""Retrieval metrics over scores, and sparsity statistics. Pure torch/numpy, no I/O.

Duet's R@k is Success@k (the hit rate): a query succeeds at k when a relevant item ranks within its first k.
One tie rule, pessimistic: an item scoring equal to the best relevant item ranks ahead of it, so a degenerate scorer
(all scores equal) never scores well. The same rule applies to full score matrices (training evaluation) and to
the scored lists searchers return (the benchmarks, through the real index): both go through ``ranks_of_relevant``,
and an item a list does not contain is not found. It equals trec_eval's (ir_measures) Success@k on a run whose
relevant items sort after the items they tie with (tests/test_metrics.py checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

DEFAULT_KS = (1, 5, 10)
NOT_FOUND = torch.iinfo(torch.int64).max  # the rank of a query whose list holds no relevant item


class ScoredList(Protocol):
    """What a searcher returns for one query (indexer.searchers.Ranking): rows best first and their scores."""

    rows: np.ndarray
    scores: np.ndarray


def _pessimistic_ranks(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    best = scores.masked_fill(~relevant, float("-inf")).max(dim=1, keepdim=True).values  # (Q, 1)
    ranks = ((scores >= best) & ~relevant).sum(dim=1)
    return torch.where(relevant.any(dim=1), ranks, torch.full_like(ranks, NOT_FOUND))


def ranks_of_relevant(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """Rank (0 = first) of the best relevant item per query row.

    scores: (Q, N); relevant: (Q, N) bool with at least one True per row. The rank is the number of
    non-relevant items scoring >= the best relevant score (pessimistic on ties).
    """
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and relevant {tuple(relevant.shape)} differ in shape")
    if not bool(relevant.any(dim=1).all()):
        raise ValueError("every query needs at least one relevant item")
    return _pessimistic_ranks(scores, relevant)


def ranks_in_lists(lists: Sequence[ScoredList], relevant: Sequence[set[int]]) -> torch.Tensor:
    """``ranks_of_relevant`` for the top-k lists a searcher returned: each list is a row of its scores, so the
    same tie rule holds; a query whose list holds none of its relevant items gets NOT_FOUND."""
    if len(lists) != len(relevant):
        raise ValueError(f"{len(lists)} rankings but {len(relevant)} relevance sets")
    if not lists:
        raise ValueError("no queries")
    if any(not rel for rel in relevant):
        raise ValueError("every query needs at least one relevant item")
    width = max(1, max(len(found.rows) for found in lists))
    scores = torch.full((len(lists), width), float("-inf"), dtype=torch.float64)
    mask = torch.zeros((len(lists), width), dtype=torch.bool)
    for q, (found, rel) in enumerate(zip(lists, relevant, strict=True)):
        n = len(found.rows)
        scores[q, :n] = torch.from_numpy(np.asarray(found.scores, np.float64))
        mask[q, :n] = torch.from_numpy(np.isin(np.asarray(found.rows, np.int64), np.fromiter(rel, np.int64)))
    return _pessimistic_ranks(scores, mask)


def success_at_k(ranks: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Success@k in percent, keyed R@k: the share of queries whose best relevant item ranks within the top k."""
    return {f"R@{k}": 100.0 * float((ranks < k).float().mean()) for k in ks}


def success_of_lists(lists: Sequence[ScoredList], relevant: Sequence[set[int]],
                     ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Success@k of searchers' top-k lists (the benchmarks' R@k through the real index)."""
    return success_at_k(ranks_in_lists(lists, relevant), ks)


def bidirectional_recall(scores_t2i: torch.Tensor, caption_image: torch.Tensor,
                         ks: Sequence[int] = DEFAULT_KS, chunk: int = 2048) -> dict[str, dict[str, float]]:
    """Text-to-image and image-to-text recall from one (num_captions, num_images) score matrix.

    caption_image[i] is the column of caption i's image. Image-to-text counts a hit when any of the image's
    captions is in the top k (the standard protocol). Ranks are computed where the scores are, ``chunk`` queries
    at a time (the relevance masks stay small on a device)."""
    num_captions, num_images = scores_t2i.shape
    device = scores_t2i.device
    caption_image = caption_image.to(device)
    t2i_ranks = []
    for start in range(0, num_captions, chunk):
        block = scores_t2i[start:start + chunk]
        relevant = torch.zeros_like(block, dtype=torch.bool)
        relevant[torch.arange(block.shape[0], device=device), caption_image[start:start + chunk]] = True
        t2i_ranks.append(ranks_of_relevant(block, relevant))
    i2t_ranks = []
    for start in range(0, num_images, chunk):
        block = scores_t2i[:, start:start + chunk].T  # (images in the chunk, num_captions)
        relevant = caption_image[None, :] == torch.arange(start, start + block.shape[0], device=device)[:, None]
        i2t_ranks.append(ranks_of_relevant(block, relevant))
    t2i = success_at_k(torch.cat(t2i_ranks), ks)
    i2t = success_at_k(torch.cat(i2t_ranks), ks)
    t2i["RSUM"] = sum(t2i[f"R@{k}"] for k in ks)
    i2t["RSUM"] = sum(i2t[f"R@{k}"] for k in ks)
    return {"t2i": t2i, "i2t": i2t}


def sparsity_stats(query_weights: torch.Tensor, doc_weights: torch.Tensor) -> dict[str, float]:
    """Mean active terms per vector and FLOPs (expected multiplications per query-document pair).

    FLOPs = sum_j p_q(j) * p_d(j), p(j) = share of vectors where term j is non-zero (D2S / SPLADE formula).
    """
    q_active = query_weights > 0
    d_active = doc_weights > 0
    p_q = q_active.float().mean(dim=0)
    p_d = d_active.float().mean(dim=0)
    q_terms, d_terms = q_active.sum(dim=1).float(), d_active.sum(dim=1).float()
    return {
        "active_terms_query": float(q_terms.mean()),
        "active_terms_doc": float(d_terms.mean()),
        "max_terms_query": float(q_terms.max()) if q_terms.numel() else 0.0,
        "max_terms_doc": float(d_terms.max()) if d_terms.numel() else 0.0,
        "distinct_terms_query": int((p_q > 0).sum()),
        "distinct_terms_doc": int((p_d > 0).sum()),
        "flops": float((p_q * p_d).sum()),
    }
