"""The benchmarks' ranking helpers: the exact top k of score matrices and overlap with it. R@k (Success@k) itself is
core.metrics.success_of_lists, the one recall with the one tie rule that training evaluation uses too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.metrics import DEFAULT_KS as KS


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

