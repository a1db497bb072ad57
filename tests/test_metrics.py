from __future__ import annotations

import ir_measures
import numpy as np
import pytest
import torch
from ir_measures import Success

from core.metrics import (
    NOT_FOUND,
    bidirectional_recall,
    ranks_in_lists,
    ranks_of_relevant,
    sparsity_stats,
    success_at_k,
    success_of_lists,
)
from indexer.searchers import Ranking


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
    assert success_at_k(ranks, (1, 5)) == {"R@1": 0.0, "R@5": 100.0}


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


# ----- the same rule over the lists searchers return -----
def _listed(*rows: list[int]) -> list[Ranking]:
    """Rankings with strictly decreasing scores, as a searcher would return them."""
    return [Ranking(np.array(r, np.int64), -np.arange(len(r), dtype=np.float32)) for r in rows]


def test_lists_perfect_shuffled_and_several_relevant() -> None:
    assert success_of_lists(_listed([0, 1, 2], [1, 0, 2], [2, 0, 1]), [{0}, {1}, {2}]) == {
        "R@1": 100.0, "R@5": 100.0, "R@10": 100.0}
    rankings = _listed(*[[(q + shift) % 12 for shift in range(1, 13)] for q in range(12)])  # own item last
    assert success_of_lists(rankings, [{q} for q in range(12)]) == {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0}
    # image -> its five captions: a hit when any of them is in the top k
    lists = _listed([99, 98, 13, 97], [20, 11, 12])
    assert success_of_lists(lists, [{10, 11, 12, 13, 14}, {20, 21, 22, 23, 24}], ks=(1, 3)) == {"R@1": 50.0,
                                                                                                "R@3": 100.0}


def test_lists_without_a_relevant_item_are_never_a_hit() -> None:
    ranks = ranks_in_lists(_listed([5, 6], [1]), [{1}, {1}])
    assert ranks.tolist() == [NOT_FOUND, 0]
    assert success_at_k(ranks, (1, 1000)) == {"R@1": 50.0, "R@1000": 50.0}


def test_ties_in_a_list_count_against_the_query_as_in_a_matrix() -> None:
    """A degenerate searcher (all scores equal) returns rows 0..9 for every query: no hit at R@1 whatever the
    order, exactly like the score matrix it came from."""
    flat = [Ranking(np.arange(10), np.zeros(10, np.float32)) for _ in range(4)]
    relevant = [{9}, {0}, {3}, {20}]
    assert success_of_lists(flat, relevant) == {"R@1": 0.0, "R@5": 0.0, "R@10": 75.0}
    matrix = torch.zeros(4, 50)
    mask = torch.zeros(4, 50, dtype=torch.bool)
    for q, rel in enumerate(relevant):
        mask[q, list(rel)] = True
    assert success_at_k(ranks_of_relevant(matrix, mask)) == {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0}


def test_lists_reject_queries_without_judgements() -> None:
    with pytest.raises(ValueError, match="at least one relevant"):
        ranks_in_lists(_listed([1]), [set()])
    with pytest.raises(ValueError, match="rankings but"):
        ranks_in_lists(_listed([1], [2]), [{1}])


# ----- ir_measures (trec_eval) as the oracle -----
def _oracle(scores: np.ndarray, relevant: list[set[int]], ks: tuple[int, ...]) -> dict[str, float]:
    """trec_eval's Success@k of the same run. trec_eval orders tied documents by descending document id, so
    relevant items are named to sort after everything they tie with: the pessimistic rule."""
    def doc(q: int, row: int) -> str:
        return f"{'a' if row in relevant[q] else 'b'}{row:04d}"

    qrels = [ir_measures.Qrel(str(q), doc(q, r), 1) for q, rel in enumerate(relevant) for r in rel]
    run = [ir_measures.ScoredDoc(str(q), doc(q, r), float(scores[q, r]))
           for q in range(scores.shape[0]) for r in range(scores.shape[1]) if np.isfinite(scores[q, r])]
    found = ir_measures.calc_aggregate([Success @ k for k in ks], qrels, run)
    return {f"R@{k}": 100.0 * found[Success @ k] for k in ks}


@pytest.mark.parametrize("levels", [None, 4])  # continuous scores, and scores on 4 levels (ties everywhere)
def test_success_at_k_agrees_with_ir_measures(levels: int | None) -> None:
    rng = np.random.default_rng(7)
    queries, items, ks = 60, 40, (1, 3, 5, 10)
    scores = rng.random((queries, items))
    if levels:
        scores = np.floor(scores * levels)
    relevant = [set(rng.choice(items, rng.integers(1, 6), replace=False).tolist()) for _ in range(queries)]
    mask = torch.zeros(queries, items, dtype=torch.bool)
    for q, rel in enumerate(relevant):
        mask[q, list(rel)] = True
    expected = _oracle(scores, relevant, ks)
    assert success_at_k(ranks_of_relevant(torch.from_numpy(scores), mask), ks) == pytest.approx(expected)
    # the top-10 lists a searcher would return (ties cut by lower row), judged as trec_eval judges that run
    order = np.lexsort((np.tile(np.arange(items), (queries, 1)), -scores), axis=1)[:, :10]
    lists = [Ranking(order[q], scores[q, order[q]]) for q in range(queries)]
    listed = np.full_like(scores, -np.inf)
    np.put_along_axis(listed, order, np.take_along_axis(scores, order, axis=1), axis=1)
    assert success_of_lists(lists, relevant, ks) == pytest.approx(_oracle(listed, relevant, ks))


def test_recall_is_the_same_whatever_the_chunk_of_queries() -> None:
    """Both directions are ranked a chunk of queries at a time: any chunk gives the figures of one block."""
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(37, 8, generator=generator).round(decimals=1)  # rounded: ties across chunks too
    caption_image = torch.arange(37) % 8
    whole = bidirectional_recall(scores, caption_image, ks=(1, 2, 5), chunk=10_000)
    for chunk in (1, 3, 7):
        assert bidirectional_recall(scores, caption_image, ks=(1, 2, 5), chunk=chunk) == whole
    ranks = [int((scores[caption_image != i, i] >= scores[caption_image == i, i].max()).sum()) for i in range(8)]
    for k in (1, 2, 5):  # image i's rank: the other images' captions scoring at least its best caption
        assert whole["i2t"][f"R@{k}"] == pytest.approx(100 * sum(r < k for r in ranks) / 8)
    assert 0 < whole["i2t"]["R@5"] < 100
