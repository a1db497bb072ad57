"""Synthetic corpora whose vectors follow a trained model's statistics, for latency-versus-size measurements.

Each synthetic item mixes two real items of an index side, ``lam * a + (1 - lam) * b`` with ``lam`` drawn from
``mix``, in both spaces at once:
- dense: the mixed vector plus a little Gaussian noise, re-normalised. Mixtures of many pairs spread over the
  region real embeddings occupy, so a query's top 10 is not a pile of near-copies of one real item (a corpus of
  noisy copies makes every approximate index look worse than it is: its top 10 is a set of near ties).
- sparse: a term of one source is kept with that source's share (a shared term always), so term document
  frequencies and terms per item follow the real ones in expectation; the kept terms are ranked by their mixed
  weight and given, rank by rank, a sorted sample of observed weights (the weight distribution is kept).
Because both sides come from the same pair, an item's dense and sparse scores agree the way a real item's do,
which hybrid candidate pools depend on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.encoder import EncodedItems, SparseRows
from indexer.store import SideStore

_UNUSED = np.iinfo(np.int32).max  # sorts after every token id
# recorded with every scale point: a resumed report reuses only points made by the same generator
GENERATOR = "pair-mixture-v1"


@dataclass(frozen=True)
class CorpusStatistics:
    terms_per_item: np.ndarray  # (N,) observed active-term counts
    token_ids: np.ndarray  # (T,) tokens that occur, ascending
    document_frequency: np.ndarray  # (T,) items containing each token
    weights: np.ndarray  # a sample of observed weights
    dense: np.ndarray  # (N, D) observed dense vectors
    sparse: np.ndarray  # (N, T) observed sparse weights over token_ids (the mixing sources)

    @classmethod
    def of(cls, store: SideStore, *, weight_sample: int = 1_000_000, seed: int = 0) -> CorpusStatistics:
        return cls.of_vectors(store.sparse, np.asarray(store.dense), weight_sample=weight_sample, seed=seed)

    @classmethod
    def of_vectors(cls, sparse: SparseRows, dense: np.ndarray, *, weight_sample: int = 1_000_000,
                   seed: int = 0) -> CorpusStatistics:
        rng = np.random.default_rng(seed)
        tokens, df = np.unique(sparse.indices, return_counts=True)
        values = sparse.values
        sample = values if values.size <= weight_sample else rng.choice(values, weight_sample, replace=False)
        table = np.zeros((len(sparse), tokens.size), np.float32)
        rows = np.repeat(np.arange(len(sparse)), sparse.terms_per_row())
        table[rows, np.searchsorted(tokens, sparse.indices)] = sparse.values
        return cls(sparse.terms_per_row(), tokens, df, sample, dense, table)

    def summary(self) -> dict[str, float]:
        share = self.document_frequency / self.terms_per_item.size
        return _summary(self.terms_per_item, share, float(self.weights.mean()))


def corpus_summary(sparse: SparseRows) -> dict[str, float]:
    """The same summary for generated rows (to show they follow the statistics they were drawn from)."""
    df = np.bincount(sparse.indices)
    return _summary(sparse.terms_per_row(), df[df > 0] / len(sparse), float(sparse.values.mean()))


def _summary(terms_per_item: np.ndarray, df_share: np.ndarray, mean_weight: float) -> dict[str, float]:
    return {"mean_terms": float(terms_per_item.mean()), "vocabulary_used": int(df_share.size),
            "max_df_share": float(df_share.max()), "median_df_share": float(np.median(df_share)),
            "mean_weight": mean_weight}


def generate(stats: CorpusStatistics, count: int, *, seed: int = 0, noise: float = 0.05,
             mix: tuple[float, float] = (0.3, 0.7), chunk: int = 10_000) -> EncodedItems:
    """``count`` items, each a mixture of two real items (see the module docstring)."""
    rng = np.random.default_rng(seed)
    sources = stats.sparse.shape[0]
    dense_parts, sparse_parts = [], []
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        first, second = rng.integers(0, sources, n), rng.integers(0, sources, n)
        lam = rng.uniform(*mix, n).astype(np.float32)[:, None]
        dense_parts.append(_mix_dense(stats.dense[first], stats.dense[second], lam, noise, rng))
        sparse_parts.append(_mix_sparse(stats, stats.sparse[first], stats.sparse[second], lam, rng))
    return EncodedItems(np.concatenate(dense_parts), SparseRows.concatenate(sparse_parts))


def _mix_dense(first: np.ndarray, second: np.ndarray, lam: np.ndarray, noise: float,
               rng: np.random.Generator) -> np.ndarray:
    dense = lam * first + (1 - lam) * second
    dense += rng.normal(0, noise / np.sqrt(dense.shape[1]), dense.shape).astype(np.float32)
    return (dense / np.linalg.norm(dense, axis=1, keepdims=True)).astype(np.float32)


def _mix_sparse(stats: CorpusStatistics, first: np.ndarray, second: np.ndarray, lam: np.ndarray,
                rng: np.random.Generator) -> SparseRows:
    n, vocabulary = first.shape
    # A term of one source only is kept with that source's share, a shared term always: each term's expected
    # document frequency and the expected terms per item equal the real ones.
    keep = rng.random(first.shape) < lam * (first > 0) + (1 - lam) * (second > 0)
    counts = keep.sum(axis=1)
    mixed = np.where(keep, lam * first + (1 - lam) * second, -1.0)
    order = np.argsort(-mixed, axis=1, kind="stable")  # kept terms first, strongest mixed weight first
    take = np.arange(vocabulary)[None, :] < counts[:, None]
    # counts[i] observed weights per row, sorted descending, assigned by the mixed weights' rank.
    ranked_weights = -np.sort(np.where(take, -rng.choice(stats.weights, (n, vocabulary)), np.inf), axis=1)
    tokens = np.where(take, stats.token_ids[order], _UNUSED)
    by_token = np.argsort(tokens, axis=1, kind="stable")  # ascending token ids per row, unused slots last
    tokens = np.take_along_axis(tokens, by_token, axis=1)
    weights = np.take_along_axis(np.where(take, ranked_weights, 0.0), by_token, axis=1)
    used = tokens != _UNUSED
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return SparseRows(indptr, tokens[used].astype(np.int32), weights[used].astype(np.float32))
