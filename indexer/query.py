"""A query as every searcher sees it: the encoder's dense unit vector and its sparse terms."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.encoder import EncodedItems


@dataclass(frozen=True)
class Query:
    dense: np.ndarray  # (D,) float32 unit vector
    term_ids: np.ndarray  # (T,) int32 token ids
    term_weights: np.ndarray  # (T,) float32 > 0

    @classmethod
    def from_encoded(cls, encoded: EncodedItems, row: int = 0) -> Query:
        ids, values = encoded.sparse.row(row)
        return cls(np.asarray(encoded.dense[row], np.float32), ids, values)

    def strongest_terms(self, limit: int | None) -> Query:
        """The same query with only its ``limit`` heaviest terms (in their original order); None keeps all."""
        if limit is None or self.term_ids.size <= limit:
            return self
        keep = np.sort(np.argsort(-self.term_weights, kind="stable")[:limit])
        return Query(self.dense, self.term_ids[keep], self.term_weights[keep])
