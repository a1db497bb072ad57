"""Readability of sparse image vectors: are an image's strongest terms the words of its own captions?

Every function takes weights and targets over one shared term axis (token ids, or a model's head columns) and
returns plain floats, so training evaluation and the benchmark report compute the same figures.

- GP@k (grounding precision): the share of an image's top-k terms that are content pieces of its own captions.
  The denominator is always k: an image with fewer than k active terms counts the missing ones as misses, so a
  vector cannot look grounded by being nearly empty.
- Grounded mass: the weight on the image's caption words over its total weight (mean over images).
- Junk rate: the share of the top-10 active terms that are not content pieces of any training caption.
- Hubs: image document frequency (share of images where a term is active) of the active terms: largest, median.
- Piece rate: the share of shown terms that are not whole words of the training captions (word pieces such as
  ``##board``, or a word's first piece such as ``sl`` of "sledding").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from core.vocab import Vocabulary
from core.words import content_words

GP_KS = (5, 10, 20)


def caption_word_targets(token_rows: torch.Tensor, caption_image: torch.Tensor, num_images: int,
                         content: np.ndarray) -> torch.Tensor:
    """(N_img, V) bool: token ids that are content pieces (``content``, (V,) bool) of each image's captions."""
    vocab_size = int(content.shape[0])
    targets = torch.zeros(num_images, vocab_size, dtype=torch.bool)
    rows = caption_image.to(torch.long)[:, None].expand_as(token_rows)
    targets[rows.reshape(-1), token_rows.clamp(0, vocab_size - 1).reshape(-1)] = True
    return targets & torch.from_numpy(content)[None, :]


def grounding_precision(weights: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """GP@k: mean over images of |top-k active terms that are caption words| / k."""
    k = min(k, weights.shape[1])
    values, top = weights.topk(k, dim=1)
    hits = targets.gather(1, top) & (values > 0)
    return float(hits.float().sum(dim=1).mean() / k)


def readability(weights: torch.Tensor, targets: torch.Tensor, caption_vocabulary: torch.Tensor,
                ks: Sequence[int] = GP_KS, whole_words: torch.Tensor | None = None) -> dict[str, float]:
    """GP@k, grounded mass, junk rate, hub statistics and distinct terms of image vectors (and their piece rate).

    weights: (N_img, T) >= 0; targets: (N_img, T) bool (each image's caption words); caption_vocabulary: (T,)
    bool, the content pieces of the training captions; whole_words: (T,) bool, terms that are whole words of them.
    """
    weights = weights.float()
    out = {f"GP@{k}": grounding_precision(weights, targets, k) for k in ks}
    total = weights.sum(dim=1)
    grounded = (weights * targets).sum(dim=1)
    out["grounded_mass"] = float((grounded / total.clamp_min(1e-12))[total > 0].mean()) if bool((total > 0).any()) \
        else 0.0
    values, top = weights.topk(min(10, weights.shape[1]), dim=1)
    active = values > 0
    junk = ~caption_vocabulary[top] & active
    out["junk_rate@10"] = float(junk.sum() / active.sum().clamp_min(1))
    if whole_words is not None:
        out["piece_rate@10"] = float((~whole_words[top] & active).sum() / active.sum().clamp_min(1))
    image_df = (weights > 0).float().mean(dim=0)  # (T,)
    used = image_df > 0
    out["distinct_terms"] = int(used.sum())
    out["hub_max_df"] = float(image_df.max()) if bool(used.any()) else 0.0
    out["hub_median_df"] = float(image_df[used].median()) if bool(used.any()) else 0.0
    return out


def frequency_floor(caption_df: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = GP_KS) -> dict[str, float]:
    """GP@k of predicting the k most frequent caption pieces (``caption_df``, (T,)) for every image."""
    scores = caption_df.float()[None, :].expand(targets.shape[0], -1)
    return {f"GP@{k}": grounding_precision(scores, targets, k) for k in ks}


class GroundingReference:
    """What readability is measured against: the content pieces and the training captions' vocabulary.

    Built once from the training captions' token ids; ``targets`` then gives any split's per-image caption words.
    """

    def __init__(self, content: np.ndarray, train_token_rows: torch.Tensor,
                 whole_words: np.ndarray | None = None) -> None:
        from core.vocab import document_frequency

        self.content = content  # (V,) bool
        # (V,) bool: term ids that are whole words of the training captions (for the piece rate)
        self.whole_words = None if whole_words is None else torch.from_numpy(whole_words)
        self.caption_df = torch.from_numpy(document_frequency(train_token_rows, int(content.shape[0])))  # (V,)
        self.caption_df[~torch.from_numpy(content)] = 0
        self.caption_vocabulary = self.caption_df > 0  # (V,) content pieces of the training captions

    def targets(self, token_rows: torch.Tensor, caption_image: torch.Tensor, num_images: int) -> torch.Tensor:
        return caption_word_targets(token_rows, caption_image, num_images, self.content)

    def measure(self, image_weights: torch.Tensor, term_ids: torch.Tensor, token_rows: torch.Tensor,
                caption_image: torch.Tensor) -> dict[str, float]:
        """Readability of (N_img, num_terms) head-column weights whose columns are the token ids ``term_ids``."""
        targets = self.targets(token_rows, caption_image, image_weights.shape[0])[:, term_ids]
        whole = None if self.whole_words is None else self.whole_words[term_ids]
        return readability(image_weights, targets, self.caption_vocabulary[term_ids], whole_words=whole)

    def text_piece_rate(self, text_weights: torch.Tensor, term_ids: torch.Tensor) -> float | None:
        """The share of texts' active terms ((N_txt, num_terms) head-column weights) that are not whole words."""
        if self.whole_words is None:
            return None
        active = text_weights > 0
        return float((active & ~self.whole_words[term_ids][None, :]).sum() / active.sum().clamp_min(1))

    def floor(self, token_rows: torch.Tensor, caption_image: torch.Tensor, num_images: int) -> dict[str, float]:
        """The frequency floor on a split: the k most frequent training caption pieces for every image."""
        return frequency_floor(self.caption_df, self.targets(token_rows, caption_image, num_images))


def whole_word_mask(vocabulary: Vocabulary, captions: Iterable[str]) -> np.ndarray:
    """(V,) bool: which term ids, as shown, are whole content words of ``captions`` (the rest are word pieces or
    words of no caption)."""
    words = {word for caption in captions for word in content_words(caption)}
    return np.array([vocabulary.display(i) in words for i in range(len(vocabulary))], dtype=bool)
