"""Split-level views of cached features: image rows, caption rows, and which image each caption belongs to."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.data import KarpathyDataset
from core.feature_cache import CachedFeatures
from core.terms import TermSpace


@dataclass(frozen=True)
class SplitFeatures:
    name: str
    image_ids: np.ndarray  # (N_img,)
    caption_ids: np.ndarray  # (N_txt,)
    image_features: torch.Tensor  # (N_img, D_img)
    text_features: torch.Tensor  # (N_txt, D_txt)
    caption_image: torch.Tensor  # (N_txt,) row of each caption's image in image_features
    caption_texts: list[str]  # raw caption texts, aligned with caption_ids
    # (N_txt, L) each caption's term ids in the model's term space (core/terms.py): the tokenizer's output when a
    # tokenizer was given, a word vocabulary's rows after ``in_term_space``
    caption_terms: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return int(self.caption_ids.shape[0])


def split_features(dataset: KarpathyDataset, cache: CachedFeatures, split: str, *,
                   tokenizer: Callable[[Sequence[str]], torch.Tensor] | None = None) -> SplitFeatures:
    """Rows of ``split`` in dataset order; images skipped as corrupt drop out with their captions.

    With a tokenizer, the captions' token ids come too (models that score texts on their own terms need them,
    and so do the readability figures), from the cache's token table (tokenised once per cache).
    """
    cached_images = {int(i) for i in cache.images.ids}
    records = [r for r in dataset.split(split) if r.image_id in cached_images]
    image_ids = np.array([r.image_id for r in records], dtype=np.int64)
    caption_ids, caption_image, texts = [], [], []
    for row, record in enumerate(records):
        for caption in record.captions:
            caption_ids.append(caption.caption_id)
            caption_image.append(row)
            texts.append(caption.text)
    return SplitFeatures(
        name=split,
        image_ids=image_ids,
        caption_ids=np.array(caption_ids, dtype=np.int64),
        image_features=cache.images.rows(image_ids),
        text_features=cache.texts.rows(caption_ids),
        caption_image=torch.tensor(caption_image, dtype=torch.long),
        caption_texts=texts,
        caption_terms=cache.caption_tokens(np.asarray(caption_ids, np.int64), texts, tokenizer)
        if tokenizer is not None else None,
    )


def in_term_space(split: SplitFeatures, terms: TermSpace) -> SplitFeatures:
    """The split with its captions' term ids in ``terms`` (a word space analyses the texts; pieces are the tokens
    the split already holds)."""
    if not terms.is_words:
        return split
    return dataclasses.replace(split, caption_terms=terms.rows(split.caption_texts))
