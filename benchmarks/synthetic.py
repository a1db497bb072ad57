"""Synthetic corpora whose vectors follow a trained model's statistics, for latency-versus-size measurements.

From a real index side: the distribution of active terms per item, each term's document frequency (the skew of
the vocabulary), and the distribution of term weights; dense vectors are real item vectors plus Gaussian noise,
re-normalised (clustered like real embeddings, which matters for approximate dense indexes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.encoder import EncodedItems, SparseRows
from indexer.store import SideStore


@dataclass(frozen=True)
class CorpusStatistics:
    terms_per_item: np.ndarray  # (N,) observed active-term counts
    token_ids: np.ndarray  # (T,) tokens that occur
    document_frequency: np.ndarray  # (T,) items containing each token
    weights: np.ndarray  # a sample of observed weights
    dense: np.ndarray  # (N, D) observed dense vectors

    @classmethod
    def of(cls, store: SideStore, *, weight_sample: int = 1_000_000, seed: int = 0) -> CorpusStatistics:
        rng = np.random.default_rng(seed)
        tokens, df = np.unique(store.sparse.indices, return_counts=True)
        values = store.sparse.values
        sample = values if values.size <= weight_sample else rng.choice(values, weight_sample, replace=False)
        return cls(store.sparse.terms_per_row(), tokens, df, sample, np.asarray(store.dense))

    def summary(self) -> dict[str, float]:
        share = self.document_frequency / self.terms_per_item.size
        return {"mean_terms": float(self.terms_per_item.mean()), "vocabulary_used": int(self.token_ids.size),
                "max_df_share": float(share.max()), "median_df_share": float(np.median(share)),
                "mean_weight": float(self.weights.mean())}


def generate(stats: CorpusStatistics, count: int, *, seed: int = 0, noise: float = 0.1,
             chunk: int = 10_000) -> EncodedItems:
    """``count`` items: term counts, distinct terms (by document frequency) and weights drawn from ``stats``."""
    rng = np.random.default_rng(seed)
    log_p = np.log(stats.document_frequency / stats.document_frequency.sum())
    vocabulary = stats.token_ids.size
    dense_parts, sparse_parts = [], []
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        base = stats.dense[rng.integers(0, stats.dense.shape[0], n)]
        dense = base + rng.normal(0, noise / np.sqrt(base.shape[1]), base.shape).astype(np.float32)
        dense_parts.append((dense / np.linalg.norm(dense, axis=1, keepdims=True)).astype(np.float32))
        counts = np.minimum(rng.choice(stats.terms_per_item, n), vocabulary)
        # Gumbel top-k: each row's first counts[i] columns are a draw without replacement, in proportion to df.
        order = np.argsort(-(log_p + rng.gumbel(size=(n, vocabulary))), axis=1)
        take = np.arange(vocabulary)[None, :] < counts[:, None]
        tokens_per_row = np.where(take, stats.token_ids[order], np.iinfo(np.int32).max)
        tokens_per_row.sort(axis=1)  # ascending token ids per row, unused slots last
        tokens = tokens_per_row[take]
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        weights = rng.choice(stats.weights, tokens.size).astype(np.float32)
        sparse_parts.append(SparseRows(indptr, tokens.astype(np.int32), weights))
    return EncodedItems(np.concatenate(dense_parts), SparseRows.concatenate(sparse_parts))
