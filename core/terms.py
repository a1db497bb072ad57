"""What a model's sparse terms are: the text tower's word pieces, or whole words (core/words.py).

A term space names term ids (its ``vocabulary``), turns texts into rows of term ids (a text's own terms, for
models that score texts on their own words), says which of a text's words it has no term for, and gives each term
a starting embedding for the sparse head's projector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from core.vocab import Vocabulary
from core.words import WordVocabulary


class TermSpace:
    """The pieces of the text tower's tokenizer (``words`` None) or a vocabulary of whole words."""

    def __init__(self, pieces: Vocabulary, tokenizer: Callable[[Sequence[str]], torch.Tensor],
                 words: WordVocabulary | None = None) -> None:
        self.pieces, self.tokenizer, self.words = pieces, tokenizer, words
        self.vocabulary = pieces if words is None else words.vocabulary

    @property
    def is_words(self) -> bool:
        return self.words is not None

    def rows(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, L) int64 term ids of each text: the tokenizer's output for pieces (special ids pad), the known
        content words for words (0 pads). Ids that are not head terms carry no weight either way."""
        if self.words is None:
            return self.tokenizer(list(texts))
        return self.words.rows(texts)

    def unmatched(self, text: str) -> list[str]:
        """The text's content words that have no term (a word vocabulary's; every word has pieces)."""
        return [] if self.words is None else self.words.unmatched(text)

    def embedding(self, token_embedding: torch.Tensor) -> torch.Tensor:
        """(len(vocabulary), width): the text tower's token embedding for pieces; for a word, the mean of its
        pieces' embeddings (the sparse head's projector starts from these rows)."""
        if self.words is None:
            return token_embedding
        words = self.vocabulary.tokens
        tokens = self.tokenizer(words).clamp(0, token_embedding.shape[0] - 1)
        special = torch.tensor(sorted(self.pieces.special_ids), dtype=torch.long)
        rows, places = torch.nonzero(~torch.isin(tokens, special), as_tuple=True)  # each word's own pieces only
        summed = token_embedding.new_zeros(len(words), token_embedding.shape[1])
        summed.index_add_(0, rows, token_embedding[tokens[rows, places]])
        counts = torch.bincount(rows, minlength=len(words)).clamp_min(1)
        return summed / counts[:, None].to(summed.dtype)
