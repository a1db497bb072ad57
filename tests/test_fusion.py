"""The one home of score fusion: the integrated score on numpy and torch, and Duet's RRF over one candidate set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.fusion import RRF_K, integrated_score, ranks, reciprocal_rank_fusion


def test_integrated_score_is_the_papers_formula_on_numpy_and_torch() -> None:
    dense, sparse = np.array([0.5, -0.2], np.float32), np.array([3.0, 1.0], np.float32)
    fused = integrated_score(dense, sparse, w_dense=0.1, w_sparse=0.2, temperature=0.05)
    assert fused == pytest.approx([0.1 * 0.5 / 0.05 + 0.2 * 3.0, 0.1 * -0.2 / 0.05 + 0.2 * 1.0])
    assert fused.dtype == np.float32
    as_torch = integrated_score(torch.from_numpy(dense), torch.from_numpy(sparse), w_dense=0.1, w_sparse=0.2,
                                temperature=0.05)
    assert torch.equal(as_torch, torch.from_numpy(fused))
    # logits already divided by the temperature: the default temperature leaves them as they are
    assert integrated_score(dense, sparse, w_dense=1.0, w_sparse=0.0) == pytest.approx(dense)


def test_ranks_break_ties_by_row_order() -> None:
    assert ranks(np.array([0.2, 0.9, 0.2, 0.5])).tolist() == [3, 1, 4, 2]


def test_rrf_ranks_every_candidate_on_both_legs() -> None:
    dense, sparse = np.array([0.9, 0.1, 0.5]), np.array([0.0, 2.0, 1.0])
    fused = reciprocal_rank_fusion(dense, sparse)
    expected = [1 / (RRF_K + 1) + 1 / (RRF_K + 3), 1 / (RRF_K + 3) + 1 / (RRF_K + 1), 2 / (RRF_K + 2)]
    assert fused == pytest.approx(expected)
