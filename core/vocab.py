"""Term vocabulary: maps sparse-vector columns to token ids and readable term strings; the content vocabulary."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from core.stopwords import STOPWORDS


class Vocabulary:
    """The text tower's token strings plus the set of ids that must never carry weight."""

    def __init__(self, tokens: Sequence[str], special_ids: Sequence[int]) -> None:
        self.tokens = list(tokens)
        self.special_ids = frozenset(int(i) for i in special_ids)

    def __len__(self) -> int:
        return len(self.tokens)

    def term(self, token_id: int) -> str:
        return self.tokens[token_id]

    def display(self, token_id: int) -> str:
        """The term as a reader should see it: CLIP's BPE end-of-word marker dropped (BERT's ## kept: it says
        the piece continues a word)."""
        token = self.tokens[token_id]
        return token[:-4] if token.endswith("</w>") and len(token) > 4 else token

    def content_ids(self) -> np.ndarray:
        """Every token id that may carry weight, ascending."""
        return np.array([i for i in range(len(self.tokens)) if i not in self.special_ids], dtype=np.int64)


    def word(self, token_id: int) -> str:
        """The piece without its sub-word markers (BERT's leading ##, CLIP's trailing </w>), lower case."""
        token = self.tokens[token_id]
        if token.startswith("##"):
            token = token[2:]
        if token.endswith("</w>"):
            token = token[:-4]
        return token.lower()

    def is_content(self, token_id: int) -> bool:
        """A piece worth a term: not special, at least two characters, some letter or digit, not a stopword."""
        if token_id in self.special_ids:
            return False
        word = self.word(token_id)
        return len(word) >= 2 and any(c.isalnum() for c in word) and word not in STOPWORDS

    def content_mask(self) -> np.ndarray:
        """(V,) bool: which token ids are content pieces."""
        return np.array([self.is_content(i) for i in range(len(self.tokens))], dtype=bool)


def document_frequency(token_rows: torch.Tensor, vocab_size: int) -> np.ndarray:
    """(V,) int64: in how many rows (captions) each token id occurs at least once."""
    if token_rows.numel() == 0:
        return np.zeros(vocab_size, np.int64)
    ordered = token_rows.clamp(0, vocab_size - 1).sort(dim=1).values
    first = torch.ones_like(ordered, dtype=torch.bool)  # a row's first occurrence of each id: counted once
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return torch.bincount(ordered[first], minlength=vocab_size).numpy().astype(np.int64)


def caption_vocabulary(vocabulary: Vocabulary, df: np.ndarray, *, min_df: int = 1,
                       content_only: bool = True) -> np.ndarray:
    """Token ids that occur in at least ``min_df`` captions (content pieces only, by default), ascending.

    Special ids never qualify, even when they occur in every caption ([CLS], [SEP], padding).
    """
    keep = (df >= min_df) & ~np.isin(np.arange(len(vocabulary)), list(vocabulary.special_ids))
    if content_only:
        keep &= vocabulary.content_mask()
    return np.flatnonzero(keep).astype(np.int64)


def tokenize_in_batches(tokenizer: Callable[[Sequence[str]], torch.Tensor], texts: Sequence[str],
                        batch: int = 4096) -> torch.Tensor:
    """(N, L) term ids of every text; one call per batch keeps it fast (L: the tokenizer's context, or the widest
    batch of a word space's rows, whose shorter batches are padded with 0, the pad of both)."""
    if not texts:
        return torch.zeros(0, 1, dtype=torch.long)
    parts = [tokenizer(list(texts[i:i + batch])) for i in range(0, len(texts), batch)]
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=0) for p in parts])
