"""The peers Duet is compared with on the same vectors, and the exact brute force that is the ground truth.

Every peer is a searcher of indexer/searchers.py (``search_batch(queries, k) -> rankings``) over one side of
stored vectors (dense unit rows + sparse term weights in the model's vocabulary), like Duet's own searcher, with
one scoring rule per mode:
  dense: cosine; sparse: dot product of term weights; hybrid: w_dense * cos / T + w_sparse * sparse (Duet's rule).
Exact brute force computes those scores over every item and is the ground truth. The peers:
  - FAISS HNSW (dense), beside Duet's flat FAISS;
  - milvus-lite (dense FLAT, sparse inverted index, and hybrid_search with its WeightedRanker, which normalises
    each leg's scores before weighting: a different fusion rule, reported as such);
  - Seismic (pyseismic-lsr), an approximate learned-sparse index.
Peers that are not installed raise PeerUnavailableError with the pip command (extra ``duet[bench]``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.encoder import SparseRows
from core.fusion import integrated_score
from indexer.params import DEFAULT_CANDIDATE_K
from indexer.query import Query
from indexer.search import SearchEngine
from indexer.searchers import Ranking, ranking_of
from indexer.store import directory_bytes

_logger = logging.getLogger("benchmarks.peers")



class PeerUnavailableError(RuntimeError):
    pass


@dataclass(frozen=True)
class Scoring:
    """Duet's hybrid rule, read from the index manifest so peers score exactly like Duet."""

    w_dense: float
    w_sparse: float
    temperature: float
    vocab_size: int

    @classmethod
    def of(cls, engine: SearchEngine) -> Scoring:
        return cls(engine.manifest.fusion_dense_weight, engine.manifest.fusion_sparse_weight,
                   engine.manifest.temperature, engine.reader.vocab_size)


@dataclass
class Vectors:
    """One side's stored vectors: what every engine indexes."""

    dense: np.ndarray  # (N, D) float32 unit rows
    sparse: SparseRows

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    def sparse_matrix(self, vocab_size: int) -> Any:
        from scipy.sparse import csr_matrix

        return csr_matrix((self.sparse.values, self.sparse.indices, self.sparse.indptr),
                          shape=(len(self), vocab_size))


class Peer(ABC):
    """A peer's searcher for one mode, with what the report says of its index (build time, size)."""

    name: str
    mode: str
    build_seconds: float = 0.0

    @abstractmethod
    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]: ...

    def size_bytes(self) -> int | None:
        return None

    def close(self) -> None:
        return None


def duet_size_bytes(engine: SearchEngine, side: str, mode: str) -> int:
    """What Duet loads per mode: FAISS; Lucene + the float forward store (exact rescoring); hybrid both plus the
    dense store it rescores with."""
    b = engine.manifest.sides[side].bytes
    return {"dense": b["dense_faiss"], "sparse": b["sparse_lucene"] + b["sparse_store"],
            "hybrid": b["dense_faiss"] + b["dense_store"] + b["sparse_lucene"] + b["sparse_store"]}[mode]


# ----- exact brute force: the ground truth -----
class ExactScorer:
    """Every item's score for a batch of queries, per mode; one transposed sparse matrix serves all three modes
    (at 1M items it is 2.3 GB, so it is built once)."""

    def __init__(self, vectors: Vectors, scoring: Scoring) -> None:
        started = time.perf_counter()
        self.scoring, self.dense = scoring, vectors.dense
        self.sparse_t = vectors.sparse_matrix(scoring.vocab_size).T.tocsr()  # (V, N): query row @ this
        self.build_seconds = time.perf_counter() - started

    def scores(self, queries: Sequence[Query], mode: str) -> np.ndarray:
        if mode == "dense":
            return self._dense(queries)
        if mode == "sparse":
            return self._sparse(queries)
        return integrated_score(self._dense(queries), self._sparse(queries), w_dense=self.scoring.w_dense,
                                w_sparse=self.scoring.w_sparse, temperature=self.scoring.temperature)

    def _dense(self, queries: Sequence[Query]) -> np.ndarray:
        return (np.stack([q.dense for q in queries]) @ self.dense.T).astype(np.float32, copy=False)

    def _sparse(self, queries: Sequence[Query]) -> np.ndarray:
        from scipy.sparse import csr_matrix

        indptr = np.cumsum([0] + [q.term_ids.size for q in queries])
        q = csr_matrix((np.concatenate([q.term_weights for q in queries]),
                        np.concatenate([q.term_ids for q in queries]), indptr),
                       shape=(len(queries), self.scoring.vocab_size))
        return (q @ self.sparse_t).toarray().astype(np.float32, copy=False)

    def size_bytes(self, mode: str) -> int:
        dense = self.dense.nbytes
        sparse = self.sparse_t.data.nbytes + self.sparse_t.indices.nbytes + self.sparse_t.indptr.nbytes
        return {"dense": dense, "sparse": sparse, "hybrid": dense + sparse}[mode]


class ExactEngine(Peer):
    name = "exact"

    def __init__(self, scorer: ExactScorer, mode: str) -> None:
        self.scorer, self.mode, self.build_seconds = scorer, mode, scorer.build_seconds

    def scores(self, queries: Sequence[Query]) -> np.ndarray:
        return self.scorer.scores(queries, self.mode)

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        from benchmarks.recall import top_rows

        found: list[Ranking] = []
        for start in range(0, len(queries), 256):
            scores = self.scores(queries[start:start + 256])
            rows = top_rows(scores, k)
            found.extend(Ranking(r, s) for r, s in zip(rows, np.take_along_axis(scores, rows, axis=1), strict=True))
        return found

    def size_bytes(self) -> int | None:
        return self.scorer.size_bytes(self.mode)


# ----- FAISS HNSW -----
class HNSWEngine(Peer):
    mode = "dense"

    def __init__(self, vectors: Vectors, *, m: int = 32, ef_construction: int = 80, ef_search: int = 64) -> None:
        import faiss

        started = time.perf_counter()
        self.index = faiss.IndexHNSWFlat(vectors.dense.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.add(np.ascontiguousarray(vectors.dense, np.float32))
        self.build_seconds = time.perf_counter() - started
        self.m = m
        self.set_ef_search(ef_search)

    def set_ef_search(self, ef_search: int) -> None:
        """The search-time breadth (recall against latency); the graph is not rebuilt."""
        self.index.hnsw.efSearch = ef_search
        self.name = f"faiss-hnsw{self.m}-ef{ef_search}"

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        scores, rows = self.index.search(np.stack([q.dense for q in queries]), k)
        return [ranking_of(r, s) for r, s in zip(rows, scores, strict=True)]

    def size_bytes(self) -> int | None:
        import faiss

        return int(faiss.serialize_index(self.index).size)


# ----- milvus-lite -----
class MilvusLiteStore:
    """One milvus-lite database with a dense FLAT/IP field and a sparse inverted-index/IP field."""

    COLLECTION = "duet_bench"

    def __init__(self, vectors: Vectors, workdir: Path, *, chunk: int = 2000,
                 fields: Mapping[str, np.ndarray] | None = None) -> None:
        """``fields``: scalar fields to filter on, a value per row (int64, or strings as VARCHAR)."""
        try:
            from pymilvus import DataType, MilvusClient
        except ImportError as e:  # milvus-lite 2.5.1 needs pkg_resources (setuptools<81), see deps-notes
            raise PeerUnavailableError(f"milvus-lite unavailable ({e}); pip install 'duet[bench]'") from e
        self.directory = Path(tempfile.mkdtemp(prefix="milvus-", dir=workdir))
        started = time.perf_counter()
        try:
            self.client = MilvusClient(str(self.directory / "bench.db"))
        except Exception as e:  # pymilvus wraps a missing milvus-lite in a generic exception
            raise PeerUnavailableError(f"milvus-lite could not start: {e}") from e
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=int(vectors.dense.shape[1]))
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        fields = dict(fields or {})
        for name, values in fields.items():
            if values.dtype.kind in "iu":
                schema.add_field(name, DataType.INT64)
            else:
                schema.add_field(name, DataType.VARCHAR, max_length=256)
        index_params = self.client.prepare_index_params()
        index_params.add_index("dense", index_type="FLAT", metric_type="IP")
        index_params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP",
                               params={"drop_ratio_build": 0.0})
        self.client.create_collection(self.COLLECTION, schema=schema, index_params=index_params)
        sparse = vectors.sparse
        for start in range(0, len(vectors), chunk):
            rows = range(start, min(len(vectors), start + chunk))
            self.client.insert(self.COLLECTION, [
                {"id": r, "dense": vectors.dense[r].tolist(),
                 "sparse": dict(zip(*(a.tolist() for a in sparse.row(r)), strict=True)),
                 **{name: values[r].item() for name, values in fields.items()}} for r in rows])
        self.client.flush(self.COLLECTION)
        self.client.load_collection(self.COLLECTION)
        self.build_seconds = time.perf_counter() - started

    def size_bytes(self) -> int:
        return directory_bytes(self.directory)

    def close(self) -> None:
        self.client.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _sparse_dict(query: Query) -> dict[int, float]:
    return dict(zip(query.term_ids.tolist(), query.term_weights.tolist(), strict=True))


class MilvusLiteEngine(Peer):
    name = "milvus-lite"

    def __init__(self, store: MilvusLiteStore, mode: str, scoring: Scoring, *,
                 candidate_k: int = DEFAULT_CANDIDATE_K, filter_expression: str = "") -> None:
        """``filter_expression``: a Milvus boolean expression over the store's scalar fields (empty: none)."""
        self.store, self.mode, self.scoring, self.candidate_k = store, mode, scoring, candidate_k
        self.filter_expression = filter_expression
        self.build_seconds = store.build_seconds

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        return [self._search(q, k) for q in queries]

    def _search(self, query: Query, k: int) -> Ranking:
        client, name = self.store.client, MilvusLiteStore.COLLECTION
        if self.mode == "hybrid":
            from pymilvus import AnnSearchRequest, WeightedRanker

            expr = self.filter_expression or None
            requests = [AnnSearchRequest([query.dense.tolist()], "dense", {"metric_type": "IP"}, self.candidate_k,
                                         expr=expr),
                        AnnSearchRequest([_sparse_dict(query)], "sparse", {"metric_type": "IP"}, self.candidate_k,
                                         expr=expr)]
            hits = client.hybrid_search(name, requests, WeightedRanker(self.scoring.w_dense, self.scoring.w_sparse),
                                        limit=k)[0]
        else:
            data = [query.dense.tolist()] if self.mode == "dense" else [_sparse_dict(query)]
            hits = client.search(name, data, anns_field=self.mode, limit=k, filter=self.filter_expression,
                                 search_params={"metric_type": "IP"})[0]
        return Ranking(np.array([h["id"] for h in hits], np.int64), np.array([h["distance"] for h in hits], np.float32))

    def size_bytes(self) -> int | None:
        return self.store.size_bytes()  # one database serves all three modes


# ----- Seismic -----
class SeismicEngine(Peer):
    mode = "sparse"

    def __init__(self, vectors: Vectors, workdir: Path, *, query_cut: int = 20, heap_factor: float = 0.7,
                 n_postings: int = 3500, threads: int = 1) -> None:
        try:
            import seismic
        except ImportError as e:
            raise PeerUnavailableError(f"pyseismic-lsr unavailable ({e}); pip install 'duet[bench]'") from e
        self.seismic, self.threads = seismic, threads
        started = time.perf_counter()
        dataset = seismic.SeismicDataset()
        sparse = vectors.sparse
        dataset.add_documents_by_id([str(i) for i in range(len(vectors))], sparse.indices.astype(np.int64),
                                    sparse.values.astype(np.float32), sparse.indptr.astype(np.int64))
        # Seismic's defaults (n_postings 3500 per term on average): what a user gets; keeping every posting of
        # the default model's long lists made builds 4x slower for no recall gain in a 20k-item trial.
        self.index = seismic.SeismicIndex.build_from_dataset(dataset, n_postings=n_postings, num_threads=threads)
        self.build_seconds = time.perf_counter() - started
        self.workdir = workdir
        self.set_search(query_cut=query_cut, heap_factor=heap_factor)

    def set_search(self, *, query_cut: int, heap_factor: float) -> None:
        """Search-time knobs: query terms kept (largest weights first) and the heap's pruning factor."""
        self.query_cut, self.heap_factor = query_cut, heap_factor
        self.name = f"seismic-q{query_cut}-h{heap_factor}"

    def _components(self, query: Query) -> np.ndarray:
        return np.array([str(t) for t in query.term_ids.tolist()], dtype=self.seismic.get_seismic_string())

    @staticmethod
    def _ranking(hits: Sequence[tuple[str, float, str]]) -> Ranking:
        return Ranking(np.array([int(doc) for _, _, doc in hits], np.int64),
                       np.array([score for _, score, _ in hits], np.float32))

    def search_batch(self, queries: Sequence[Query], k: int) -> list[Ranking]:
        if len(queries) == 1:  # one query: Seismic's direct search, without the batch's thread pool
            query = queries[0]
            return [self._ranking(self.index.search("q", self._components(query),
                                                    query.term_weights.astype(np.float32), k, self.query_cut,
                                                    self.heap_factor))]
        found = self.index.batch_search(
            np.array([str(i) for i in range(len(queries))], dtype=self.seismic.get_seismic_string()),
            [self._components(q) for q in queries], [q.term_weights.astype(np.float32) for q in queries], k,
            self.query_cut, self.heap_factor, num_threads=self.threads)
        # parallel batches may come back in another order: place each list by the query id it carries
        rankings = [self._ranking([])] * len(queries)
        for hits in found:
            if hits:
                rankings[int(hits[0][0])] = self._ranking(hits)
        return rankings

    def size_bytes(self) -> int | None:
        directory = Path(tempfile.mkdtemp(prefix="seismic-", dir=self.workdir))
        try:
            self.index.save(str(directory / "index"))
            return directory_bytes(directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
