"""Cross-lingual QA SKD (Carrino, Escolano, Fonollosa): span KL, mAP@k / MRR coefficients, the QA SKD objective
and the cross-lingual pair sampler."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

from training.experiments.xlt_qa import (
    FIRST_CONCEPT,
    SEQ_LEN,
    VOCAB,
    SpanQA,
    XLTConfig,
    em_f1,
    make_example,
    make_languages,
    render,
    train_epochs,
)
from training.skd.kernels.xlt_qa import (
    cross_lingual_pairs,
    map_at_k_coefficient,
    mrr_coefficient,
    qa_skd_objective,
    span_ce,
    span_kl,
)
from training.skd.teachers import SnapshotTeacher

L = 30


def _ranked(first: list[int]) -> torch.Tensor:
    """Logits [1, L] whose ranking starts with the positions in `first` (then the rest, in index order)."""
    logits = torch.zeros(1, L)
    for rank, pos in enumerate(first):
        logits[0, pos] = 100.0 - rank
    return logits


def test_teacher_argmax_at_gold_gives_one() -> None:
    gold = torch.tensor([3, 17, 25])
    t = torch.full((3, L), -1.0)
    t[torch.arange(3), gold] = 5.0
    assert map_at_k_coefficient(t, t, gold, gold) == pytest.approx(1.0)
    assert mrr_coefficient(t, t, gold, gold) == pytest.approx(1.0)


@pytest.mark.parametrize("rank", [1, 2, 3, 7])
def test_first_hit_rank_gives_reciprocal(rank: int) -> None:
    gold = torch.tensor([20])
    misses = [0, 1, 2, 3, 4, 5, 6][: rank - 1]  # all far outside [15, 24]
    t = _ranked([*misses, 22, 20])  # first in-window hit at `rank`; a later exact hit is not counted again
    assert map_at_k_coefficient(t, t, gold, gold) == pytest.approx(1.0 / rank)


def test_no_hit_in_top_k_gives_zero() -> None:
    gold = torch.tensor([20])
    t = _ranked(list(range(10)) + [20])  # gold is 11th
    assert map_at_k_coefficient(t, t, gold, gold, k=10) == 0.0
    assert map_at_k_coefficient(t, t, gold, gold, k=11) == pytest.approx(1.0 / 11)


def test_window_edges_match_reference_range() -> None:
    gold = torch.tensor([20])
    assert map_at_k_coefficient(_ranked([15]), _ranked([15]), gold, gold) == pytest.approx(1.0)  # pos - 5: hit
    assert map_at_k_coefficient(_ranked([24]), _ranked([24]), gold, gold) == pytest.approx(1.0)  # pos + 4: hit
    assert map_at_k_coefficient(_ranked([25, 20]), _ranked([25, 20]), gold, gold) == pytest.approx(0.5)  # pos + 5: miss


def test_start_and_end_are_averaged() -> None:
    gold = torch.tensor([20])
    assert map_at_k_coefficient(_ranked([20]), _ranked([0, 1, 20]), gold, gold) == pytest.approx((1 + 1 / 3) / 2)


def test_mrr_needs_exact_position() -> None:
    gold = torch.tensor([20])
    assert mrr_coefficient(_ranked([21, 20]), _ranked([21, 20]), gold, gold) == pytest.approx(0.5)


def test_coefficient_is_teacher_only_and_carries_no_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, L, generator=g, requires_grad=True)
    t = torch.randn(4, L, generator=g, requires_grad=True)
    gold = torch.tensor([1, 5, 9, 28])
    a = qa_skd_objective(s, s, gold, gold, t_start=t, t_end=t, coefficient="map")
    b = qa_skd_objective(s * 3 + 1, -s, gold, gold, t_start=t, t_end=t, coefficient="map")
    assert isinstance(a["coeff"], float) and a["coeff"] == b["coeff"]
    a["loss"].backward()  # type: ignore[union-attr]
    assert t.grad is None


def test_span_kl_zero_on_equal_and_tau_squared_by_hand() -> None:
    x = torch.randn(3, L)
    assert float(span_kl(x, x, x.clone(), x.clone())) == pytest.approx(0.0, abs=1e-6)
    # 2 positions: teacher (2 ln 3, 0), student (0, 0). At T: p = softmax((2 ln 3)/T, 0), q uniform.
    t = torch.tensor([[2 * math.log(3.0), 0.0]])
    s = torch.zeros(1, 2)

    def kl(temp: float) -> float:
        p1 = 1 / (1 + math.exp(-2 * math.log(3.0) / temp))
        return p1 * math.log(2 * p1) + (1 - p1) * math.log(2 * (1 - p1))

    assert float(span_kl(s, s, t, t, tau=1.0)) == pytest.approx(kl(1.0), rel=1e-6)
    assert float(span_kl(s, s, t, t, tau=2.0)) == pytest.approx(4 * kl(2.0), rel=1e-6)  # the T^2 factor


def test_objective_without_teacher_or_zero_coefficient_is_span_ce() -> None:
    g = torch.Generator().manual_seed(1)
    s, e, t = torch.randn(2, L, generator=g), torch.randn(2, L, generator=g), torch.randn(2, L, generator=g)
    gold = torch.tensor([3, 4])
    ce = span_ce(s, e, gold, gold)
    assert torch.equal(qa_skd_objective(s, e, gold, gold)["loss"], ce)  # type: ignore[arg-type]
    far = torch.zeros(2, L)
    far[:, -1] = 10.0  # top-1 at 29, the rest ties: choose k=1 so there is no hit near 3/4
    out = qa_skd_objective(s, e, gold, gold, t_start=far, t_end=far, coefficient="map", k=1)
    assert out["coeff"] == 0.0 and torch.equal(out["loss"], ce)  # type: ignore[arg-type]
    plain = qa_skd_objective(s, e, gold, gold, t_start=t, t_end=t, coefficient="none")
    assert torch.allclose(plain["loss"], ce + span_kl(s, e, t, t))  # type: ignore[arg-type]


def test_masked_positions_are_ignored() -> None:
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, L, generator=g), torch.randn(2, L, generator=g)
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[:, 25:] = False
    gold = torch.tensor([3, 10])
    ref = qa_skd_objective(s, s, gold, gold, t_start=t, t_end=t, mask=mask)
    s2, t2 = s.clone(), t.clone()
    s2[:, 25:] = 1e3
    t2[:, 25:] = -7.0
    moved = qa_skd_objective(s2, s2, gold, gold, t_start=t2, t_end=t2, mask=mask)
    assert torch.equal(ref["loss"], moved["loss"]) and ref["coeff"] == moved["coeff"]  # type: ignore[arg-type]


def test_cross_lingual_pairs() -> None:
    langs = {"q1": {"en", "es", "de", "ar", "vi"}, "q2": {"en", "es"}, "q3": {"es", "de"}}
    pairs = cross_lingual_pairs(langs, n_tgt_langs=3, rng=random.Random(0))
    by_id: dict[str, list[tuple[str, str]]] = {}
    for qid, lq, lc in pairs:
        by_id.setdefault(qid, []).append((lq, lc))
    sizes = {"q1": 4, "q2": 2, "q3": 3}  # min(n_tgt, available non-en) + 1
    for qid, got in by_id.items():
        s = {lq for lq, _ in got}
        assert "en" in s and len(s) == sizes[qid] and len(got) == sizes[qid] ** 2 == len(set(got))
    assert pairs == cross_lingual_pairs(langs, n_tgt_langs=3, rng=random.Random(0))
    assert len(cross_lingual_pairs(langs, n_tgt_langs=0, rng=random.Random(1))) == 25 + 4 + 9


def test_synthetic_languages_and_examples() -> None:
    rng = random.Random(0)
    langs = make_languages(rng)
    for lang, rho in zip(("en", "l1", "l2", "l3", "l4"), (0.0, 0.2, 0.4, 0.6, 0.8), strict=True):
        table = langs[lang]
        assert sorted(table) == sorted(langs["en"])  # a permutation of the concept tokens
        assert sum(t != e for t, e in zip(table, langs["en"], strict=True)) == round(rho * 64)
    ex = make_example(rng)
    q1, q2 = ex.question
    i = ex.context.index(q1)
    assert ex.context[i + 1] == q2 and ex.start == i + 2 and ex.context[ex.end + 1] == -1
    assert -1 not in ex.context[ex.start:ex.end + 1]


def test_em_f1_by_hand() -> None:
    em, f1 = em_f1(torch.tensor([2, 2, 9]), torch.tensor([4, 3, 9]), torch.tensor([2, 3, 2]), torch.tensor([4, 5, 4]))
    assert em.tolist() == [100.0, 0.0, 0.0]
    # predicted {2,3} vs gold {3,4,5}: overlap 1, P = 1/2, R = 1/3, F1 = 0.4
    assert f1.tolist() == pytest.approx([100.0, 40.0, 0.0])


def test_snapshot_teacher_is_the_previous_generation() -> None:
    torch.manual_seed(0)
    student = SpanQA(d=16, heads=2, layers=1)
    teacher = SnapshotTeacher(student, keep="latest")
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    tokens = torch.randint(FIRST_CONCEPT, VOCAB, (3, SEQ_LEN))

    def step() -> None:
        s, e = student(tokens)
        opt.zero_grad()
        (s.logsumexp(-1) + e.logsumexp(-1)).sum().backward()
        opt.step()

    step()
    teacher.on_epoch_end(student)  # generation boundary: teacher <- student
    snapshot = {k: v.clone() for k, v in student.state_dict().items()}
    assert all(torch.equal(v, snapshot[k]) for k, v in teacher.module.state_dict().items())
    step()  # the student moves during the next epoch, the teacher does not
    assert all(torch.equal(v, snapshot[k]) for k, v in teacher.module.state_dict().items())
    assert not all(torch.equal(v, snapshot[k]) for k, v in student.state_dict().items())
    assert all(not p.requires_grad for p in teacher.module.parameters())


def test_train_epochs_skd_smoke() -> None:
    rng = random.Random(0)
    langs = make_languages(rng)
    exs = [make_example(rng) for _ in range(8)]
    tokens, s, e = render(exs, [("en", "l1")] * 8, langs)
    torch.manual_seed(0)
    start = SpanQA(d=16, heads=2, layers=1)
    model = copy.deepcopy(start)
    losses = train_epochs(model, tokens, s, e, epochs=2, lr=1e-3, batch_size=4, seed=0, coefficient="map",
                          cfg=XLTConfig(), start_teacher=start)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert all(p.requires_grad for p in start.parameters())  # the start model itself is left untouched
