"""How Duet fuses its dense and sparse legs: one home for the paper's integrated score and for reciprocal-rank
fusion, shared by training (losses, evaluation), search and the benchmarks' exact ground truth.

The functions take numpy arrays or torch tensors alike (plain arithmetic), so every caller computes the same
expression in the same order.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

RRF_K = 60  # the constant of Cormack et al. (2009)

Scores = TypeVar("Scores")


def integrated_score(dense: Scores, sparse: Scores, *, w_dense: float, w_sparse: float,
                     temperature: float = 1.0) -> Scores:
    """The paper's integrated score ``w_dense * dense / temperature + w_sparse * sparse``.

    ``dense`` is the raw cosine; pass ``temperature=1.0`` when it is already divided by the temperature (the
    training losses' logits).
    """
    return w_dense * dense / temperature + w_sparse * sparse  # type: ignore[operator,return-value]


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks by descending score, ties broken by position (row order)."""
    order = np.lexsort((np.arange(scores.size), -scores))
    out = np.empty(scores.size, np.int64)
    out[order] = np.arange(1, scores.size + 1)
    return out


def reciprocal_rank_fusion(dense: np.ndarray, sparse: np.ndarray, *, k: int = RRF_K) -> np.ndarray:
    """RRF over one candidate set: ``1 / (k + rank_dense) + 1 / (k + rank_sparse)``.

    Duet's variant: both ranks are taken over the union of the legs' candidates by their exact scores on each leg
    (every candidate is rescored on both), not over each leg's own truncated list, so a candidate found by one leg
    only still gets a rank on the other.
    """
    return 1.0 / (k + ranks(dense)) + 1.0 / (k + ranks(sparse))
