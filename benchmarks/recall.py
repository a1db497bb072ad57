"""Recall@K over ranked lists, as the runner sees them: each engine returns its top-K rows per query.

A query may have several relevant items (image->text: an image's five captions); it counts as a hit at K when
any relevant item is among the first K returned. Rankings come from the engines, so ties were already broken by
them (Duet: by row; exact scoring here: by row too, see ``top_rows``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KS = (1, 5, 10)


def first_relevant_rank(ranking: Sequence[int], relevant: set[int]) -> int | None:
    """0-based position of the first relevant item in ``ranking``; None when none was returned."""
    for position, row in enumerate(ranking):
        if int(row) in relevant:
            return position
    return None


def recall_at_k(rankings: Sequence[Sequence[int]], relevant: Sequence[set[int]],
                ks: Sequence[int] = KS) -> dict[str, float]:
    """R@k in percent for each k; a ranking shorter than k simply has fewer chances."""
    if len(rankings) != len(relevant):
        raise ValueError(f"{len(rankings)} rankings but {len(relevant)} relevance sets")
    if not rankings:
        raise ValueError("no queries")
    if any(not rel for rel in relevant):
        raise ValueError("every query needs at least one relevant item")
    ranks = [first_relevant_rank(r, rel) for r, rel in zip(rankings, relevant, strict=True)]
    return {f"R@{k}": 100.0 * sum(1 for r in ranks if r is not None and r < k) / len(ranks) for k in ks}


def rsum(t2i: dict[str, float], i2t: dict[str, float], ks: Sequence[int] = KS) -> float:
    return sum(t2i[f"R@{k}"] + i2t[f"R@{k}"] for k in ks)


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) rows of the k best scores per query row; equal scores rank by lower row (Duet's rule)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    # the partition may cut a tie at the k-th score arbitrarily; widen to every row scoring >= the k-th score
    out = np.empty((scores.shape[0], k), np.int64)
    for q in range(scores.shape[0]):
        kth = scores[q, part[q]].min()
        candidates = np.flatnonzero(scores[q] >= kth)
        order = np.lexsort((candidates, -scores[q, candidates]))[:k]
        out[q] = candidates[order]
    return out


def exact_top_k(scores: np.ndarray, k: int = 10) -> list[np.ndarray]:
    """Per query, the rows that count as the exact top k of ``scores`` (Q, N): every row scoring at least the k-th
    score, so an item tied with it is in (a tie broken another way, FAISS vs row order, is not a miss)."""
    k = min(k, scores.shape[1])
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    tolerance = 1e-5 * np.maximum(1.0, np.abs(kth))
    return [np.flatnonzero(row >= kth[q] - tolerance[q]) for q, row in enumerate(scores)]


def overlap_with(found: Sequence[Sequence[int]], truth: Sequence[np.ndarray], k: int = 10) -> list[float]:
    """Per query, the share of an engine's top k that is in the exact top k (``exact_top_k``)."""
    if len(found) != len(truth):
        raise ValueError(f"{len(found)} result lists but {len(truth)} ground-truth lists")
    return [float(np.isin(np.asarray(rows[:k], np.int64), exact).sum()) / k
            for rows, exact in zip(found, truth, strict=True)]

