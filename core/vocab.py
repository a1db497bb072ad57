"""Term vocabulary: maps sparse-vector columns to token ids and readable term strings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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

