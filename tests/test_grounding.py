"""Grounded sparse terms: content vocabulary, expansion control, inference-free texts, image budget, the
thresholded regulariser, the bag-of-words loss, readability figures and selection with a readability floor."""

from __future__ import annotations

import pytest
import torch

from core.config import ModelConfig, SparseHeadConfig
from core.model import DuetModel
from core.readability import caption_word_targets, frequency_floor, grounding_precision, readability
from core.sparse_head import OwnTerms
from core.vocab import Vocabulary, caption_vocabulary, document_frequency
from training import schedules
from training.losses import (
    flops_regularizer,
    l1_regularizer,
    multi_positive_info_nce,
    word_loss,
)
from training.trainer import selection_value

TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[unused0]", "dog", "the", "a", "##s", "!", "beach", "runs", "##ing", "on",
          "x", "10", "red"]
SPECIAL = [0, 1, 2, 3]


def _vocabulary() -> Vocabulary:
    return Vocabulary(TOKENS, SPECIAL)


def _model(head: SparseHeadConfig, term_ids: torch.Tensor, *, idf: torch.Tensor | None = None) -> DuetModel:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the head's own layers draw from the global generator
    return DuetModel(ModelConfig(sparse_head=head), image_projection=torch.randn(8, 12, generator=g),
                     text_projection=torch.randn(8, 6, generator=g),
                     token_embedding=torch.randn(len(TOKENS), 6, generator=g), term_ids=term_ids, term_idf=idf)


def test_content_pieces_exclude_special_stopword_punctuation_and_single_characters() -> None:
    vocabulary = _vocabulary()
    content = [TOKENS[i] for i in range(len(TOKENS)) if vocabulary.is_content(i)]
    assert content == ["dog", "beach", "runs", "##ing", "10", "red"]


def test_caption_vocabulary_keeps_pieces_above_the_document_frequency_floor() -> None:
    vocabulary = _vocabulary()
    # [CLS] dog runs on the beach [SEP] / [CLS] red dog [SEP] [PAD]: dog in 2 captions, the rest in 1
    rows = torch.tensor([[1, 4, 10, 12, 5, 9, 2], [1, 15, 4, 2, 0, 0, 0]])
    df = document_frequency(rows, len(TOKENS))
    assert df[4] == 2 and df[9] == 1 and df[13] == 0
    assert [TOKENS[i] for i in caption_vocabulary(vocabulary, df)] == ["dog", "beach", "runs", "red"]
    assert [TOKENS[i] for i in caption_vocabulary(vocabulary, df, min_df=2)] == ["dog"]
    # without the content filter the stopwords stay, special tokens never do (even at df 2)
    assert [TOKENS[i] for i in caption_vocabulary(vocabulary, df, content_only=False)] == \
        ["dog", "the", "beach", "runs", "on", "red"]


def test_masked_text_has_no_weight_outside_its_own_content_tokens() -> None:
    term_ids = torch.tensor([4, 7, 9, 10, 11, 14, 15])  # content-ish columns; no special token is a column
    model = _model(SparseHeadConfig(expansion="always"), term_ids)
    tokens = torch.tensor([[1, 4, 10, 12, 5, 9, 2, 0], [1, 15, 15, 4, 2, 0, 0, 0]])  # repeated 'red', [CLS]/[SEP]
    encoded = model.encode_text(torch.randn(2, 6), term_rows=tokens)
    own = [{4, 9, 10}, {4, 15}]
    for row, allowed in enumerate(own):
        active = {int(term_ids[c]) for c in torch.nonzero(encoded.sparse[row]).flatten()}
        assert active <= allowed
        assert not active & {0, 1, 2, 3}
    # only the logits at the caption's own columns are computed, and they equal the expanded head's there
    expanded = model.sparse_head.expanded_text(model.embed_text(torch.ones(2, 6)))
    masked = model.encode_text(torch.ones(2, 6), term_rows=tokens).sparse
    for row, allowed in enumerate(own):
        for token in allowed:
            column = int((term_ids == token).nonzero())
            assert torch.allclose(masked[row, column], expanded[row, column])


def test_columns_are_distinct_and_never_special() -> None:
    model = _model(SparseHeadConfig(expansion="always"), torch.tensor([4, 9, 15]))
    columns = model.text_columns(torch.tensor([[1, 15, 15, 4, 2], [1, 2, 0, 0, 0]]))
    assert sorted(c for c in columns[0].tolist() if c >= 0) == [0, 2]
    assert all(c < 0 for c in columns[1].tolist())  # a text with no in-vocabulary token has no terms


def test_max_text_terms_keeps_the_strongest() -> None:
    model = _model(SparseHeadConfig(expansion="always", max_text_terms=2), torch.arange(4, 16))
    tokens = torch.tensor([[1, 4, 9, 10, 14, 15, 2]])
    capped = model.encode_text(torch.ones(1, 6), term_rows=tokens).sparse
    uncapped = _model(SparseHeadConfig(expansion="always"), torch.arange(4, 16)).encode_text(
        torch.ones(1, 6), term_rows=tokens).sparse
    assert int((capped > 0).sum()) <= 2
    assert set(torch.nonzero(capped[0]).flatten().tolist()) <= set(uncapped[0].topk(2).indices.tolist())


def test_inference_free_text_equals_its_lookup_and_ignores_the_features() -> None:
    term_ids = torch.tensor([4, 9, 10, 15])
    idf = torch.tensor([0.5, 2.0, 1.5, 0.25])
    model = _model(SparseHeadConfig(expansion="always", query_encoder="inference_free"), term_ids, idf=idf)
    tokens = torch.tensor([[1, 4, 10, 12, 5, 9, 2], [1, 15, 4, 4, 2, 0, 0]])
    one = model.encode_text(torch.randn(2, 6), term_rows=tokens).sparse
    two = model.encode_text(torch.randn(2, 6), term_rows=tokens).sparse
    assert torch.equal(one, two)  # no tower features involved
    # each own token once, weight = the lookup (started at the IDF scaled to a maximum of 1)
    expected = torch.tensor([[0.5, 2.0, 1.5, 0.0], [0.5, 0.0, 0.0, 0.25]]) / 2.0
    assert torch.allclose(one, expected)


def test_inference_free_needs_own_terms() -> None:
    with pytest.raises(ValueError, match="expansion='always'"):
        SparseHeadConfig(query_encoder="inference_free")


def test_own_terms_scores_equal_the_dense_dot_product() -> None:
    g = torch.Generator().manual_seed(1)
    docs = torch.rand(5, 7, generator=g)
    terms = OwnTerms(columns=torch.tensor([[0, 3, -1], [6, -1, -1], [2, 1, 5]]),
                     weights=torch.tensor([[0.5, 1.0, 0.0], [2.0, 0.0, 0.0], [0.1, 0.2, 0.3]]))
    expected = docs @ terms.to_dense(7).T
    assert torch.allclose(terms.scores(docs), expected)  # on a CPU: over the used columns only
    assert torch.allclose(terms.restricted_scores(docs), expected)
    assert torch.allclose(terms.full_scores(docs), expected)  # an accelerator's: the whole vocabulary, static shapes


def test_both_score_products_give_the_same_gradients() -> None:
    columns = torch.tensor([[4, 1, -1, -1], [0, 9, 3, -1], [7, -1, -1, -1]])
    upstream = torch.rand(6, 3, generator=torch.Generator().manual_seed(2))
    grads = []
    for product in ("restricted_scores", "full_scores"):
        docs = torch.rand(6, 10, generator=torch.Generator().manual_seed(3)).requires_grad_()
        weights = torch.rand(3, 4, generator=torch.Generator().manual_seed(4)).requires_grad_()
        scores = getattr(OwnTerms(columns, weights), product)(docs)
        (scores * upstream).sum().backward()
        grads.append((docs.grad, weights.grad))
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1])
    assert bool((grads[1][1][columns < 0] == 0).all())  # pads learn nothing


def test_d2s_mask_probability_by_epoch() -> None:
    assert [schedules.text_mask_probability("off", e, 10) for e in (0, 5)] == [0.0, 0.0]
    assert [schedules.text_mask_probability("always", e, 10) for e in (0, 9)] == [1.0, 1.0]
    d2s = [schedules.text_mask_probability("d2s", e, 20) for e in range(20)]
    assert d2s[0] == 1.0
    assert d2s[1] == pytest.approx(1 - 1 / 19)  # falls by 1 / (0.95 * epochs) each epoch
    assert d2s[10] == pytest.approx(1 - 10 / 19)
    assert d2s[19] == 0.0 and all(a > b or b == 0.0 for a, b in zip(d2s, d2s[1:], strict=False))


def test_image_top_k_anneals_to_the_budget() -> None:
    k = [schedules.annealed_top_k(s, 100, start=256, budget=64, anneal_ratio=0.5) for s in (0, 25, 50, 99)]
    assert k == [256, 160, 64, 64]
    assert schedules.annealed_top_k(10, 100, start=256, budget=None, anneal_ratio=0.5) == 0


def test_teacher_sparse_weight_ramps_up() -> None:
    assert [schedules.linear_ramp(s, 10) for s in (0, 5, 10, 20)] == [0.0, 0.5, 1.0, 1.0]
    assert schedules.linear_ramp(0, 0) == 1.0


def test_image_budget_caps_active_terms_at_inference() -> None:
    model = _model(SparseHeadConfig(image_terms=3), torch.arange(4, 16))
    sparse = model.encode_image(torch.randn(6, 12) * 5).sparse
    assert int((sparse > 0).sum(dim=1).max()) <= 3


def test_thresholded_regularisers_are_zero_under_the_threshold() -> None:
    weights = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]], requires_grad=True)  # 2 and 1 active
    assert float(flops_regularizer(weights, threshold=2).detach()) == 0.0
    assert float(l1_regularizer(weights, threshold=2).detach()) == 0.0
    above = flops_regularizer(weights, threshold=1)  # only the first row counts
    assert float(above.detach()) == pytest.approx((1.0 / 2) ** 2 + (2.0 / 2) ** 2)
    above.backward()
    assert weights.grad is not None and float(weights.grad[1].abs().sum()) == 0.0
    assert float(flops_regularizer(weights.detach())) == pytest.approx(0.75 ** 2 + 1.0 ** 2)


def test_multi_positive_info_nce_counts_every_positive() -> None:
    scores = torch.tensor([[2.0, 2.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    one_positive = multi_positive_info_nce(scores, torch.eye(3, dtype=torch.bool))
    both = multi_positive_info_nce(scores, torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool))
    assert float(both) < float(one_positive)
    perfect = multi_positive_info_nce(torch.eye(3) * 50, torch.eye(3, dtype=torch.bool))
    assert float(perfect) < 1e-6


def test_grounding_precision_and_readability_on_a_hand_built_case() -> None:
    # 2 images x 6 terms; image 0's captions use terms {0, 1, 2}, image 1's {3}
    targets = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    weights = torch.tensor([[0.9, 0.0, 0.5, 0.7, 0.0, 0.1],  # top-2: terms 0, 3 -> 1 hit
                            [0.0, 0.0, 0.0, 0.2, 0.0, 0.0]])  # one active term, a hit; missing ones are misses
    assert grounding_precision(weights, targets, 2) == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert grounding_precision(weights, targets, 1) == pytest.approx((1 + 1) / 2)
    vocabulary = torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.bool)  # terms 4, 5 are outside the caption vocabulary
    stats = readability(weights, targets, vocabulary, ks=(1, 2))
    assert stats["grounded_mass"] == pytest.approx(((0.9 + 0.5) / 2.2 + 1.0) / 2)
    assert stats["junk_rate@10"] == pytest.approx(1 / 5)  # 5 active top terms, one (term 5) is junk
    assert stats["distinct_terms"] == 4
    assert stats["hub_max_df"] == 1.0 and stats["hub_median_df"] == pytest.approx(0.5)


def test_frequency_floor_predicts_the_most_frequent_pieces() -> None:
    targets = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    floor = frequency_floor(torch.tensor([10, 3, 5]), targets, ks=(1, 2))
    assert floor == {"GP@1": 1.0, "GP@2": pytest.approx((1.0 + 0.5) / 2)}


def test_caption_word_targets_union_an_images_captions() -> None:
    content = _vocabulary().content_mask()
    rows = torch.tensor([[1, 4, 5, 2], [1, 9, 2, 0], [1, 15, 8, 2]])  # captions 0 and 1 are of image 0
    targets = caption_word_targets(rows, torch.tensor([0, 0, 1]), 2, content)
    assert set(torch.nonzero(targets[0]).flatten().tolist()) == {4, 9}  # 'the' is a stopword
    assert set(torch.nonzero(targets[1]).flatten().tolist()) == {15}  # '!' is punctuation


def test_selection_with_a_readability_floor() -> None:
    def metrics(r1: float, gp: float) -> dict:
        return {"sparse": {"t2i": {"R@1": r1}}, "readability": {"GP@10": gp}}

    assert selection_value(metrics(12.0, 0.1), "sparse", None) == 12.0
    latent, grounded = metrics(19.0, 0.05), metrics(9.0, 0.42)
    assert selection_value(grounded, "sparse", 0.4) > selection_value(latent, "sparse", 0.4)
    # under the floor, more readable wins; above it, recall decides
    assert selection_value(metrics(1.0, 0.3), "sparse", 0.4) > selection_value(metrics(30.0, 0.2), "sparse", 0.4)
    assert selection_value(metrics(10.0, 0.5), "sparse", 0.4) > selection_value(grounded, "sparse", 0.4)


def _caption_words(dense: torch.Tensor) -> OwnTerms:
    """Dense (B, num_terms) caption word weights as the trainer holds them: compact, strongest first, -1 pads."""
    values, columns = dense.topk(dense.shape[1], dim=1)
    return OwnTerms(torch.where(values > 0, columns, torch.full_like(columns, -1)), values)


@pytest.mark.parametrize("kind", ["softmax", "bce"])
def test_word_loss_is_lowest_when_the_logits_pick_the_caption_words(kind: str) -> None:
    words = _caption_words(torch.tensor([[0.0, 2.0, 1.0, 0.0]]))  # the image's IDF-weighted caption words
    right = word_loss(torch.tensor([[-5.0, 5.0, 4.0, -5.0]]), words, kind=kind)["word_loss"]
    wrong = word_loss(torch.tensor([[5.0, -5.0, -5.0, 4.0]]), words, kind=kind)["word_loss"]
    assert float(right) < float(wrong)


def test_word_loss_values() -> None:
    words = _caption_words(torch.tensor([[0.0, 2.0, 1.0, 0.0]]))
    logits = torch.tensor([[0.3, -0.2, 1.0, 0.0]])
    # bce: binary cross-entropy summed over the vocabulary, per caption word
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.tensor([[0.0, 1.0, 1.0, 0.0]]), reduction="sum") / 2
    assert float(word_loss(logits, words, kind="bce")["word_loss"]) == pytest.approx(float(expected))
    # softmax: at logits = log(target) the loss is the target's entropy
    target = torch.tensor([[0.0, 2.0, 1.0, 0.0]]) / 3
    entropy = -(target[target > 0] * target[target > 0].log()).sum()
    exact = word_loss(torch.log(target.clamp_min(1e-30)), words, kind="softmax")["word_loss"]
    assert float(exact) == pytest.approx(float(entropy), abs=1e-4)


@pytest.mark.parametrize("kind", ["softmax", "bce"])
def test_the_compact_word_loss_equals_its_dense_definition_with_its_gradient(kind: str) -> None:
    generator = torch.Generator().manual_seed(5)
    dense = torch.rand(6, 40, generator=generator) * (torch.rand(6, 40, generator=generator) < 0.2)
    dense[3] = 0.0  # an image without caption words counts as nothing in the softmax loss
    logits = (torch.randn(6, 40, generator=generator) * 3).requires_grad_(True)
    if kind == "softmax":
        target = dense / dense.sum(dim=1, keepdim=True).clamp_min(1e-12)
        expected = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    else:
        targets = (dense > 0).float()
        expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum") \
            / targets.sum()
    (expected_grad,) = torch.autograd.grad(expected, logits)
    got = word_loss(logits, _caption_words(dense), kind=kind)["word_loss"]
    (got_grad,) = torch.autograd.grad(got, logits)
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert torch.allclose(got_grad, expected_grad, atol=1e-6)


def test_hub_floors_calibrated_on_the_training_images_cap_every_terms_share() -> None:
    from training.hub_floor import calibrate_hub_floor

    head = SparseHeadConfig(image_activation="softplus", image_terms=6, image_term_max_share=0.3)
    model = _model(head, torch.tensor([4, 9, 10, 11, 14, 15, 7, 13, 12, 8]))
    images = torch.randn(200, 12, generator=torch.Generator().manual_seed(3))
    before = (model.encode_image(images).sparse > 0).float().mean(dim=0)
    assert before.max() > 0.3  # 6 of 10 terms per image: hubs on most images
    figures = calibrate_hub_floor(model, images, 0.3)
    after = model.encode_image(images).sparse
    assert (after > 0).float().mean(dim=0).max() <= 0.3
    assert figures["hub_terms"] == int((before > 0.3).sum())
    assert figures["largest_share_before"] == pytest.approx(float(before.max()))
    kept = after > 0  # a term keeps its strongest images: every kept weight beats every dropped one of that term
    full = model.sparse_head.image_weights(model.sparse_head.image_logits(model.embed_image(images)), keep=6)
    for term in range(10):
        dropped = full[:, term][(full[:, term] > 0) & ~kept[:, term]]
        if dropped.numel():
            assert full[:, term][kept[:, term]].min() > dropped.max()
    assert model.training  # calibration leaves the mode as it found it
