from __future__ import annotations

import pytest
import torch

from core.metrics import bidirectional_recall, ranks_of_relevant, recall_at_k, sparsity_stats


def test_perfect_ranking_gives_full_recall() -> None:
    # 3 images, 2 captions each; caption i belongs to image i // 2
    caption_image = torch.tensor([0, 0, 1, 1, 2, 2])
    scores = torch.full((6, 3), -1.0)
    scores[torch.arange(6), caption_image] = 1.0
    r = bidirectional_recall(scores, caption_image, ks=(1, 2))
    assert r["t2i"]["R@1"] == 100.0 and r["i2t"]["R@1"] == 100.0


def test_reversed_ranking() -> None:
    caption_image = torch.tensor([0, 1, 2, 3])
    scores = torch.eye(4) * -1.0  # the relevant image scores lowest
    r = bidirectional_recall(scores, caption_image, ks=(1, 3, 4))
    assert r["t2i"]["R@1"] == 0.0 and r["t2i"]["R@3"] == 0.0 and r["t2i"]["R@4"] == 100.0


def test_ties_count_against_the_query() -> None:
    scores = torch.zeros(4, 5)  # everything ties
    relevant = torch.zeros(4, 5, dtype=torch.bool)
    relevant[torch.arange(4), torch.arange(4)] = True
    ranks = ranks_of_relevant(scores, relevant)
    assert ranks.tolist() == [4, 4, 4, 4]
    assert recall_at_k(ranks, (1, 5)) == {"R@1": 0.0, "R@5": 100.0}


def test_image_to_text_hits_when_any_caption_is_in_top_k() -> None:
    caption_image = torch.tensor([0, 0, 0, 1, 1, 1])
    scores = torch.zeros(6, 2)
    scores[0, 0] = 0.1  # only one caption of image 0 is close; others far
    scores[1, 0] = -5
    scores[2, 0] = -5
    scores[3:, 1] = 1.0
    scores[3:, 0] = 0.5  # image 0 also likes image 1's captions more than its own
    r = bidirectional_recall(scores, caption_image, ks=(1, 4))
    # image 0: its best caption scores 0.1 < 0.5 (three captions of image 1 ahead) -> rank 3
    assert r["i2t"]["R@1"] == 50.0 and r["i2t"]["R@4"] == 100.0


def test_shuffled_scores_give_chance_level_recall() -> None:
    g = torch.Generator().manual_seed(0)
    n = 400
    scores = torch.rand(n, n, generator=g)
    r = bidirectional_recall(scores, torch.arange(n), ks=(10,))
    assert r["t2i"]["R@10"] == pytest.approx(100 * 10 / n, abs=2.0)


def test_sparsity_stats() -> None:
    q = torch.tensor([[1.0, 0, 0], [1.0, 1.0, 0]])
    d = torch.tensor([[1.0, 0, 1.0], [0, 0, 1.0]])
    s = sparsity_stats(q, d)
    assert s["active_terms_query"] == 1.5 and s["active_terms_doc"] == 1.5
    assert s["flops"] == pytest.approx(1.0 * 0.5 + 0.5 * 0 + 0 * 1.0)
