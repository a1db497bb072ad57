"""The searcher protocol: every retrieval backend answers ``search_batch(queries, k)`` with one ranking per query.

A leg is a searcher over one representation: ``FaissLeg`` (dense, FAISS) and ``LuceneLeg`` (sparse, Lucene
impacts); the benchmarks' peers (HNSW, milvus-lite, Seismic, exact brute force) are searchers too, and a new
backend is one more class with this method. ``HybridSearcher`` composes legs the way pyserini's HybridSearcher
composes a dense and a sparse searcher, with Duet's contract on top: every candidate a leg finds is rescored
exactly on both legs from the forward store, so each hit carries its exact dense, sparse and fused scores.
Single-query search is the batch of one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from core.encoder import SparseRows, TermPostings
from indexer.lucene import ImpactSearcher
from indexer.query import Query


@dataclass(frozen=True)
class Ranking:
    """One query's answer: rows best first and the searcher's own score for each (its scale, its tie order)."""

    rows: np.ndarray  # (n,) int64, n <= k
    scores: np.ndarray  # (n,) float32, non-increasing

    def __len__(self) -> int:
        return int(self.rows.size)


class Searcher(Protocol):
    name: str

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]: ...


def search_one(searcher: Searcher, query: Query, k: int) -> Ranking:
    return searcher.search_batch([query], k)[0]


def ranking_of(rows: np.ndarray, scores: np.ndarray) -> Ranking:
    """A backend's raw answer as a Ranking (FAISS pads missing hits with row -1)."""
    keep = rows >= 0
    return Ranking(rows[keep].astype(np.int64), scores[keep].astype(np.float32))


# ----- Duet's legs -----
class FaissLeg:
    """Dense leg: inner-product top-k over the side's FAISS index (flat by default, any index_factory index).

    ``parameters`` (from ``excluding_rows``) make FAISS skip rows inside the search, e.g. deleted ones."""

    def __init__(self, index: Any, name: str = "faiss", *, parameters: Any = None) -> None:
        self.index, self.name, self.parameters = index, name, parameters

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        if not queries:
            return []
        batch = np.stack([q.dense for q in queries]).astype(np.float32)
        if self.parameters is None:
            scores, rows = self.index.search(batch, k)
        else:
            scores, rows = self.index.search(batch, k, params=self.parameters)
        return [ranking_of(r, s) for r, s in zip(rows, scores, strict=True)]


def excluding_rows(index: Any, rows: np.ndarray) -> Any | None:
    """FAISS search parameters that skip ``rows`` (deleted ones); None where the index kind takes no selector."""
    import faiss

    ops: Any = faiss  # its type stubs lack the selector classes and SWIG's ad-hoc attributes
    batch = ops.IDSelectorBatch(np.ascontiguousarray(rows, np.int64))
    selector = ops.IDSelectorNot(batch)
    selector.referenced = batch  # SWIG keeps no reference: the batch must live as long as the selector
    return selecting(index, selector)


def within_rows(index: Any, allowed: np.ndarray) -> Any | None:
    """FAISS search parameters that search only the rows ``allowed`` (a mask over the index's rows: a filter's);
    None where the index kind takes no selector."""
    import faiss

    ops: Any = faiss
    bits = np.packbits(np.asarray(allowed, bool), bitorder="little")
    selector = ops.IDSelectorBitmap(int(allowed.size), ops.swig_ptr(bits))
    selector.referenced = bits  # the bitmap must live as long as the selector
    return selecting(index, selector)


def is_flat(index: Any) -> bool:
    """Whether a FAISS index scores every row exactly (a flat index: its search is brute force)."""
    import faiss

    return isinstance(faiss.downcast_index(index), faiss.IndexFlat)


def selecting(index: Any, selector: Any) -> Any | None:
    """FAISS search parameters with ``selector`` for a flat, IVF or HNSW index (each keeps its own nprobe or
    efSearch); None for another kind, which then needs its results filtered instead."""
    import faiss

    ops: Any = faiss  # its type stubs lack the search-parameter classes and SWIG's ad-hoc attributes
    inner = ops.downcast_index(index)
    parameters: Any
    if isinstance(inner, ops.IndexHNSW):
        parameters = ops.SearchParametersHNSW()
        parameters.efSearch = inner.hnsw.efSearch
    elif isinstance(inner, ops.IndexIVF):
        parameters = ops.SearchParametersIVF()
        parameters.nprobe = inner.nprobe
    elif isinstance(inner, ops.IndexFlat):
        parameters = ops.SearchParameters()
    else:
        return None
    parameters.sel = selector
    parameters.referenced = selector
    return parameters


class LuceneLeg:
    """Sparse leg: Lucene impact top-k with the query's quantised term weights; a batch runs on ``threads``."""

    def __init__(self, searcher: ImpactSearcher, *, threads: int = 1, name: str = "lucene") -> None:
        self.searcher, self.threads, self.name = searcher, threads, name

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        if len(queries) == 1:  # one query: Lucene's direct search, without the batch's thread pool
            batches = [self.searcher.search(queries[0].term_ids, queries[0].term_weights, k)]
        else:
            batches = self.searcher.batch_search([(q.term_ids, q.term_weights) for q in queries], k,
                                                 threads=self.threads)
        return [Ranking(np.array([h.row for h in hits], np.int64), np.array([h.score for h in hits], np.float32))
                for hits in batches]


class StrongestTerms:
    """A sparse leg that sends only each query's ``limit`` strongest terms: much less Lucene work (one clause per
    term) for a little candidate recall. The hybrid searcher still rescores candidates with the full query."""

    def __init__(self, leg: Searcher, limit: int | None) -> None:
        self.leg, self.limit, self.name = leg, limit, leg.name

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        return self.leg.search_batch([q.strongest_terms(self.limit) for q in queries], k)


# ----- exact rescoring -----
def ragged_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions of several runs of an array, one after another: run i is ``starts[i]`` .. + ``lengths[i]``."""
    firsts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return np.repeat(starts - firsts, lengths) + np.arange(int(lengths.sum()))


def row_dot_products(matrix: np.ndarray, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``matrix[rows] @ vector`` without copying the rows out: FAISS's SIMD inner product of each row in place."""
    import faiss

    ops: Any = faiss  # its type stubs lack the vector utilities
    rows = np.ascontiguousarray(rows, np.int64)
    if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= matrix.shape[0]):  # FAISS reads without checking
        raise IndexError(f"rows outside the {matrix.shape[0]} stored vectors")
    out = np.empty(rows.size, np.float32)
    ops.fvec_inner_products_by_idx(ops.swig_ptr(out), ops.swig_ptr(vector), ops.swig_ptr(matrix), ops.swig_ptr(rows),
                                   int(matrix.shape[1]), 1, int(rows.size))
    return out


class StoredVectors(Protocol):
    """What exact scoring reads: a side's stored vectors (an index side, or the delta written since)."""

    @property
    def dense(self) -> np.ndarray: ...  # (N, D) float32 unit rows

    @property
    def sparse(self) -> SparseRows: ...


class RowScorer(Protocol):
    def __len__(self) -> int: ...

    def dense(self, query: Query, rows: np.ndarray) -> np.ndarray: ...

    def sparse(self, query: Query, rows: np.ndarray) -> np.ndarray: ...


class ExactScores:
    """Exact scores of any rows of one side: dense dot products from the stored vectors, sparse dot products from
    the float forward store (not Lucene's quantised impacts)."""

    def __init__(self, store: StoredVectors, vocab_size: int) -> None:
        self.store, self.vocab_size = store, vocab_size

    def __len__(self) -> int:
        return int(self.store.dense.shape[0])

    def dense(self, query: Query, rows: np.ndarray) -> np.ndarray:
        """Dense dot products of ``rows`` with the query, one row at a time (not a matrix product, which blocks by
        the number of rows): a row's score never changes in its last bit with the other rows scored beside it (a
        sharded search scores other sets)."""
        if not rows.size:
            return np.zeros(0, np.float32)
        stored = self.store.dense
        if stored.dtype == np.float32 and stored.flags.c_contiguous:
            return row_dot_products(stored, np.ascontiguousarray(query.dense, np.float32), rows)
        if 4 * rows.size >= len(self):  # most rows: every row in place is cheaper than copying these out
            return np.einsum("ij,j->i", stored, query.dense).astype(np.float32, copy=False)[rows]
        return np.einsum("ij,j->i", stored[rows], query.dense).astype(np.float32, copy=False)

    def sparse(self, query: Query, rows: np.ndarray) -> np.ndarray:
        """Sparse dot products of ``rows`` with the query. Every path gives the same bits: each product is taken
        in float64 (exact: two float32 factors), a row's products are added in ascending term order, and the sum
        is rounded to float32 once."""
        if rows.size == 0:
            return np.zeros(0, np.float32)
        # a side's, when opened with them (the delta has none)
        by_term: TermPostings | None = getattr(self.store, "term_postings", None) if rows.size > 1_000 else None
        sparse = self.store.sparse
        if by_term is not None and by_term.postings(query.term_ids) + len(self) < int(
                (sparse.indptr[rows + 1] - sparse.indptr[rows]).sum()):
            return self._sparse_by_term(query, rows, by_term)
        return self._sparse_by_row(query, rows)

    def _sparse_by_row(self, query: Query, rows: np.ndarray) -> np.ndarray:
        """The rows taken out of the forward store and multiplied by the query vector (scipy's CSR kernels)."""
        matrix = self.store.sparse.matrix
        query_vector = np.zeros(matrix.shape[1], np.float64)
        known = query.term_ids < query_vector.size  # a term no stored row holds adds nothing
        query_vector[query.term_ids[known]] = query.term_weights[known]
        return np.asarray(matrix[rows] @ query_vector).astype(np.float32)

    def _sparse_by_term(self, query: Query, rows: np.ndarray, by_term: TermPostings) -> np.ndarray:
        """Every row's sparse score through the term postings, these rows' taken: the query's terms in ascending
        order, so ``bincount`` adds each row's products in the order the row-wise product does."""
        order = np.argsort(query.term_ids, kind="stable")
        terms, weights = query.term_ids[order], query.term_weights[order]
        known = terms < by_term.indptr.size - 1
        terms, weights = terms[known], weights[known]
        starts, ends = by_term.indptr[terms], by_term.indptr[terms + 1]
        lengths = ends - starts
        positions = ragged_positions(starts, lengths)
        contributions = np.repeat(weights.astype(np.float64), lengths) * by_term.values[positions]
        totals = np.bincount(by_term.rows[positions], weights=contributions, minlength=by_term.row_count)
        return totals[rows].astype(np.float32)


Fuse = Callable[[np.ndarray, np.ndarray], np.ndarray]  # exact (dense, sparse) of a candidate set -> fused
RankBy = Literal["dense", "sparse", "fused"]


@dataclass(frozen=True)
class Rescored(Ranking):
    """A ranking whose rows were rescored exactly: each row's dense, sparse and fused score, the number of
    distinct candidates the legs found, and the batch's time per leg and for the rescoring."""

    dense: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sparse: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    fused: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    candidates: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidates:
    """What the legs found for one query, before ranking: each leg's own ranking (by role), and their union with
    its exact dense and sparse scores. A shard answers these (indexer/index_reader.py), and the read engine merges
    them across shards (indexer/merge.py)."""

    legs: dict[str, Ranking]
    rows: np.ndarray  # (n,) int64, the distinct rows any leg found
    dense: np.ndarray  # (n,) exact dense score of each row
    sparse: np.ndarray  # (n,) exact sparse score of each row


def top_rows(rows: np.ndarray, scores: np.ndarray, k: int) -> Ranking:
    """The top k of scored rows, ties by lower row: the rows scoring at least the k-th best score (ties at the cut
    included) are sorted, not all of them."""
    if 0 < k < rows.size:
        cut = np.partition(scores, rows.size - k)[rows.size - k]
        keep = scores >= cut
        rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))[:k]
    return Ranking(rows[order], scores[order].astype(np.float32))


def ranked(rows: np.ndarray, dense: np.ndarray, sparse: np.ndarray, fuse: Fuse, rank_by: RankBy, k: int) -> Rescored:
    """The top k of exactly scored candidates by ``rank_by``, ties by lower row."""
    fused = fuse(dense, sparse)
    ranking = {"dense": dense, "sparse": sparse, "fused": fused}[rank_by]
    order = np.lexsort((rows, -ranking))[:k]
    return Rescored(rows[order], ranking[order], dense[order], sparse[order], fused[order], int(rows.size))


class HybridSearcher:
    """Composes legs: each leg's top ``candidate_k`` (at least k), their union rescored exactly on both legs, ranked
    by ``rank_by`` (the fused score, or one leg's exact score for a single-leg search) with ties by lower row.

    ``legs`` maps a role ("dense", "sparse") to any searcher: Duet's FAISS and Lucene legs, or a peer's.
    """

    def __init__(self, legs: Mapping[str, Searcher], scores: RowScorer, fuse: Fuse, *, rank_by: RankBy = "fused",
                 candidate_k: int | None = None, name: str = "hybrid") -> None:
        if not legs:
            raise ValueError("a hybrid searcher needs at least one leg")
        self.legs, self.scores, self.fuse = dict(legs), scores, fuse
        self.rank_by, self.candidate_k, self.name = rank_by, candidate_k, name

    def leg_depth(self, k: int, rows: int) -> int:
        """How deep each leg searches for a top k over ``rows`` rows."""
        return min(max(k, self.candidate_k or 0), rows)

    def gather(self, queries: Sequence[Query], k: int) -> tuple[list[Candidates], dict[str, float]]:
        """Every leg's candidates for a top k, rescored exactly; the batch's time per leg and for the rescoring."""
        leg_k = self.leg_depth(k, len(self.scores))
        found: dict[str, list[Ranking]] = {}
        timings: dict[str, float] = {}
        for role, leg in self.legs.items():
            started = time.perf_counter()
            found[role] = leg.search_batch(queries, leg_k) if queries else []
            timings[f"{role}_ms"] = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        gathered = []
        for n, query in enumerate(queries):
            legs = {role: rankings[n] for role, rankings in found.items()}
            leg_rows = [ranking.rows for ranking in legs.values()]
            rows = leg_rows[0] if len(leg_rows) == 1 else np.unique(np.concatenate(leg_rows))
            gathered.append(Candidates(legs, rows, self.scores.dense(query, rows), self.scores.sparse(query, rows)))
        timings["rescore_ms"] = (time.perf_counter() - started) * 1000
        return gathered, timings

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Rescored]:
        gathered, timings = self.gather(queries, k)
        started = time.perf_counter()
        results = [ranked(c.rows, c.dense, c.sparse, self.fuse, self.rank_by, k) for c in gathered]
        timings["rescore_ms"] += (time.perf_counter() - started) * 1000
        return [Rescored(r.rows, r.scores, r.dense, r.sparse, r.fused, r.candidates, timings) for r in results]
