"""The one read engine, shared by the service and the benchmarks: a collection is a set of shards, a single index
is a collection of one shard, and every search goes the same way.

A query (text or image) is encoded once by the checkpoint the collection was built with, then searched on one side:
  gather  every shard, at once, plans its search from the exact number of rows it may return (its live rows, or
          those the search's filter allows: indexer/planner.py) and runs it (indexer/index_reader.py):
            exact   at or under 100,000 such rows: every one scored exactly on both legs, each leg's exact top;
            index   the mode's legs over their indexes, the filter inside (FAISS skips rows outside it, Lucene's
                    answer is filtered with an over-fetch), the delta as one more leg:
                      dense   FAISS top-k;
                      sparse  Lucene impact top-k with the query's own quantised term weights;
                      hybrid  the top candidate_k of each leg;
                    every candidate rescored exactly on both legs (dense dot product from the stored vectors, sparse
                    dot product from the forward store);
  merge   each leg's global top candidates across shards (indexer/merge.py);
  rank    their union by the paper's integrated score w_dense * dense / temperature + w_sparse * sparse, by
          reciprocal-rank fusion, or by one leg's exact score (single-leg modes), ties by collection position;
  fetch   the page's items and sparse rows from the shards that hold them (and the explanation).
Every hit carries its exact dense, sparse and fused scores, whatever the mode. The embedded index, an in-process
sharded collection and a collection on Ray differ only in how a shard is called (``ShardReader``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from core.encoder import DuetEncoder, vocabulary_digest
from core.vocab import Vocabulary
from indexer.filters import Filter, compile_filter, is_empty
from indexer.index_reader import IndexReader, ReaderShard
from indexer.merge import MergedRanking, ShardReader, merge_candidates
from indexer.params import EXPLAINED_HITS, SearchParams, search_fusion, search_weights
from indexer.payload import PayloadError
from indexer.query import Query
from indexer.sharding import shard_of
from indexer.store import IndexManifest, SideManifest, check_binding, image_file

T = TypeVar("T")


@dataclass(frozen=True)
class TermMatch:
    term: str
    token_id: int
    query_weight: float
    item_weight: float
    contribution: float


@dataclass(frozen=True)
class Explanation:
    matched_terms: list[TermMatch]
    item_terms: list[tuple[str, float]]


@dataclass(frozen=True)
class Hit:
    id: str
    rank: int
    dense: float
    sparse: float
    fused: float
    item: dict[str, Any]
    explanation: Explanation | None = None


@dataclass
class SearchResult:
    hits: list[Hit]
    candidates: int
    weights: dict[str, float]
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    plans: dict[str, int] = field(default_factory=dict)  # how many shards searched by each plan
    rows: int = 0  # the live rows the search could return (those its filter allows)

    @property
    def plan(self) -> str:
        """The plan every shard chose, ``mixed`` when they differed (``none``: no shard answered)."""
        return next(iter(self.plans)) if len(self.plans) == 1 else "mixed" if self.plans else "none"


FACET_TYPES = ("keyword", "keywords", "bool", "integer")  # fields whose values are counted


@dataclass(frozen=True)
class FacetCount:
    value: str | int | bool
    count: int


class EmptySparseQueryError(ValueError):
    """A sparse-only search for a query with no terms (a text with no content word under a model whose texts
    are their own terms): nothing could ever match."""


EMPTY_SPARSE_WARNING = ("the query has no sparse terms (no content word the model knows), so the sparse leg is "
                        "empty and the ranking is the dense leg's")


def sparse_leg_warnings(query: Query, params: SearchParams) -> list[str]:
    """Refuse a sparse-only search with no query terms; in hybrid mode, say that only the dense leg ranks."""
    if query.term_ids.size:
        return []
    if params.mode == "sparse":
        raise EmptySparseQueryError("the query has no sparse terms (no content word the model knows: stopwords, "
                                    "punctuation and unknown pieces carry no weight); use mode 'hybrid' or 'dense'")
    return [EMPTY_SPARSE_WARNING] if params.mode == "hybrid" else []


def explain_terms(query: Query, ids: np.ndarray, values: np.ndarray, vocabulary: Vocabulary, *,
                  item_terms: int = 12) -> Explanation:
    """Matched terms (query weight x item weight) of an item's sparse row, and its own strongest terms, as words."""
    common, q_pos, i_pos = np.intersect1d(query.term_ids, ids, assume_unique=True, return_indices=True)
    term = vocabulary.display
    matched = [TermMatch(term(int(t)), int(t), float(query.term_weights[q]), float(values[i]),
                         float(query.term_weights[q] * values[i]))
               for t, q, i in zip(common, q_pos, i_pos, strict=True)]
    matched.sort(key=lambda m: -m.contribution)
    top = np.argsort(-values, kind="stable")[:item_terms]
    return Explanation(matched, [(term(int(ids[i])), float(values[i])) for i in top])


def query_terms(query: Query, vocabulary: Vocabulary, limit: int = 32) -> list[tuple[str, float]]:
    """A query's strongest terms as words."""
    order = np.argsort(-query.term_weights, kind="stable")[:limit]
    return [(vocabulary.display(int(query.term_ids[i])), float(query.term_weights[i])) for i in order]


def summed_manifest(manifests: Sequence[IndexManifest]) -> IndexManifest:
    """One manifest for the whole collection: the first shard's, with each side's counts and bytes summed."""
    first = manifests[0]
    if len(manifests) == 1:
        return first
    sides: dict[str, SideManifest] = {}
    for side, entry in first.sides.items():
        parts = [m.sides[side] for m in manifests if side in m.sides]
        count = sum(p.count for p in parts)
        mean = sum(p.mean_terms * p.count for p in parts) / max(count, 1)
        sides[side] = entry.model_copy(update={
            "count": count, "lucene_docs": sum(p.lucene_docs for p in parts), "mean_terms": mean, "files": {},
            "bytes": {key: sum(p.bytes.get(key, 0) for p in parts) for key in entry.bytes}})
    return first.model_copy(update={"sides": sides})


class SearchEngine:
    """A collection's shards, the encoder they were built with, and the one search over them: gather, merge, rank,
    fetch."""

    def __init__(self, shards: Sequence[ShardReader], encoder: DuetEncoder, *, root: Path, collection_root: Path,
                 shard_dirs: Sequence[Path]) -> None:
        """``root``: the directory served; ``collection_root``: where indexed image files are; ``shard_dirs``:
        each shard's index directory (where its uploads are), in shard order."""
        self.shards = list(shards)
        self._summed: tuple[tuple[int, ...], IndexManifest] | None = None  # the shards' manifests it sums, by identity
        self.encoder = encoder
        self.root, self.collection_root, self.shard_dirs = root, collection_root, list(shard_dirs)
        check_binding(self.manifest, content_hash=encoder.checkpoint.content_hash,
                      backbone_fingerprint=encoder.checkpoint.backbone_fingerprint,
                      vocabulary_digest=vocabulary_digest(encoder.vocabulary))
        # one shard is called on the caller's thread; several at once from a pool
        self._pool = (ThreadPoolExecutor(max_workers=len(self.shards), thread_name_prefix="duet-fanout")
                      if len(self.shards) > 1 else None)

    @property
    def manifest(self) -> IndexManifest:
        """The collection's manifest: its shards' current ones, summed (again only when a shard's has changed)."""
        manifests = [shard.manifest for shard in self.shards]
        identity = tuple(map(id, manifests))
        if self._summed is None or self._summed[0] != identity:
            self._summed = identity, summed_manifest(manifests)
        return self._summed[1]

    @classmethod
    def open(cls, index_dir: str | Path, *, encoder: DuetEncoder | None = None, checkpoint: str | Path | None = None,
             sides: tuple[str, ...] | None = None) -> SearchEngine:
        """A published index, read only (its write-ahead log is not replayed: see indexer/live.py for that)."""
        return cls.over(IndexReader(index_dir, encoder=encoder, checkpoint=checkpoint, sides=sides), owned=True)

    @classmethod
    def over(cls, reader: IndexReader, *, owned: bool = False) -> SearchEngine:
        """The engine of one index reader (``owned``: closing the engine closes the reader)."""
        return cls([ReaderShard(reader, owned=owned)], reader.encoder, root=reader.index_dir,
                   collection_root=reader.collection_root, shard_dirs=[reader.index_dir])

    @property
    def reader(self) -> IndexReader:
        """The index reader of an engine over one index in this process (what benchmarks measure legs of)."""
        shard = self.shards[0] if len(self.shards) == 1 else None
        if not isinstance(shard, ReaderShard):
            raise TypeError("this engine is not over one index reader in this process")
        return shard.reader

    @property
    def sides(self) -> tuple[str, ...]:
        return tuple(self.manifest.sides)

    def default_weights(self) -> tuple[float, float]:
        return self.manifest.fusion_dense_weight, self.manifest.fusion_sparse_weight

    def fan_out(self, call: Callable[[int], T], shards: Sequence[int] | None = None) -> list[T]:
        """``call(n)`` for every shard number (or for these) at once, answers in that order; the first failure
        raises."""
        chosen = range(len(self.shards)) if shards is None else shards
        if self._pool is None:
            return [call(s) for s in chosen]
        futures = [self._pool.submit(call, s) for s in chosen]
        return [future.result() for future in futures]

    # ----- queries -----
    def encode_text(self, text: str) -> Query:
        return Query.from_encoded(self.encoder.encode_texts([text]))

    def encode_image(self, image: Image.Image) -> Query:
        return Query.from_encoded(self.encoder.encode_images([image]))

    def query_terms(self, query: Query, limit: int = 32) -> list[tuple[str, float]]:
        return query_terms(query, self.encoder.vocabulary, limit)

    def unmatched_words(self, text: str) -> list[str]:
        """The text's content words the model has no sparse term for (they reach only the dense leg)."""
        return self.encoder.unmatched_words(text)

    # ----- search -----
    def search(self, query: Query, params: SearchParams) -> SearchResult:
        return self.search_batch([query], params)[0]

    def search_batch(self, queries: Sequence[Query], params: SearchParams, *, threads: int = 1) -> list[SearchResult]:
        """One batch: each shard searches it at once (one FAISS call, one Lucene batch over ``threads``), then
        each query's merged ranking and the requested page of it as hits."""
        if params.side not in self.sides:
            raise KeyError(f"this collection has no {params.side!r} side (sides: {list(self.sides)})")
        self.check_filter(params.filter)  # a bad filter is refused before any shard is asked
        warnings = [sparse_leg_warnings(q, params) for q in queries]
        k = params.offset + params.top_k
        answers = self.fan_out(lambda s: self.shards[s].candidates(params.side, queries, params, k, threads=threads))
        manifest = self.manifest
        w_dense, w_sparse = search_weights(manifest, params)
        weights = {"w_dense": w_dense, "w_sparse": w_sparse, "temperature": manifest.temperature}
        fuse = search_fusion(manifest, params)
        results = []
        for n, query in enumerate(queries):
            per_shard = [answer[n] for answer in answers]
            merged = merge_candidates(per_shard, fuse, params.rank_by, k)
            # the slowest shard's time per leg: the fan-out waits for all of them
            timings = {key: max(a.timings_ms.get(key, 0.0) for a in per_shard)
                       for key in {key for a in per_shard for key in a.timings_ms}}
            plans: dict[str, int] = {}
            for answer in per_shard:
                plans[answer.plan] = plans.get(answer.plan, 0) + 1
            results.append(SearchResult(self._hits(query, params, merged), merged.candidates, weights,
                                        timings_ms=timings, warnings=warnings[n], plans=plans,
                                        rows=sum(a.rows for a in per_shard)))
        return results

    # ----- filters -----
    def check_filter(self, filter_: Filter | None) -> None:
        """Refuse a filter on a field the collection has no payload index for, or with a value of a field's wrong
        type (``PayloadError``, naming the field)."""
        if filter_ is not None and not is_empty(filter_):
            compile_filter(filter_, self.manifest.payload)

    def facets(self, side: str, field: str, filter_: Filter | None = None, *,
               limit: int | None = None) -> list[FacetCount]:
        """How many live items of a side passing the filter hold each value of a payload field, most first."""
        if side not in self.sides:
            raise KeyError(f"this collection has no {side!r} side (sides: {list(self.sides)})")
        kind = self.manifest.payload.get(field)
        if kind is None:
            indexed = ", ".join(sorted(self.manifest.payload)) or "none"
            raise PayloadError(field, f"no payload index on this field (the collection's indexed fields: {indexed})")
        if kind not in FACET_TYPES:
            raise PayloadError(field, f"facets count {', '.join(FACET_TYPES)} fields; {field} is {kind}")
        self.check_filter(filter_)
        counts: dict[Any, int] = {}
        for answer in self.fan_out(lambda s: self.shards[s].facets(side, field, filter_)):
            for value, count in answer.items():
                counts[value] = counts.get(value, 0) + count
        shown = [FacetCount(bool(v) if kind == "bool" else v, c) for v, c in counts.items()]
        shown.sort(key=lambda facet: (-facet.count, str(facet.value)))
        return shown if limit is None else shown[:limit]

    def _hits(self, query: Query, params: SearchParams, merged: MergedRanking) -> list[Hit]:
        page = range(params.offset, len(merged.ids))
        wanted: dict[int, list[str]] = {}
        for position in page:
            wanted.setdefault(int(merged.shards[position]), []).append(merged.ids[position])
        owners = sorted(wanted)
        answers = self.fan_out(lambda s: self.shards[s].records(params.side, wanted[s]), owners)
        records = {(s, item_id): record for s, answer in zip(owners, answers, strict=True)
                   for item_id, record in zip(wanted[s], answer, strict=True)}
        hits = []
        for position in page:
            record = records[(int(merged.shards[position]), merged.ids[position])]
            if record is None:  # deleted between the two calls: the page is one short rather than wrong
                continue
            explained = params.explain and position - params.offset < EXPLAINED_HITS
            explanation = (explain_terms(query, record.term_ids, record.term_weights, self.encoder.vocabulary)
                           if explained else None)
            hits.append(Hit(merged.ids[position], position + 1, float(merged.dense[position]),
                            float(merged.sparse[position]), float(merged.fused[position]), record.item,
                            explanation))
        return hits

    # ----- items -----
    def owner(self, item_id: str) -> int:
        """The shard an id's writes go to."""
        return shard_of(item_id, len(self.shards))

    def _located(self, item_id: str) -> tuple[int, tuple[str, dict[str, Any]]] | None:
        """The shard holding a live item with this id, and the item: its owner asked first, then every other (a
        caption built with its image on another shard)."""
        owner = self.owner(item_id)
        found = self.shards[owner].find(item_id)
        if found is not None:
            return owner, found
        others = [s for s in range(len(self.shards)) if s != owner]
        for s, answer in zip(others, self.fan_out(lambda s: self.shards[s].find(item_id), others), strict=True):
            if answer is not None:
                return s, answer
        return None

    def holder(self, item_id: str) -> int | None:
        """The shard that holds a live item with this id, if any."""
        located = self._located(item_id)
        return None if located is None else located[0]

    def item(self, item_id: str) -> tuple[str, dict[str, Any]]:
        """The live item with this id and its side (a deleted item is gone)."""
        located = self._located(item_id)
        if located is None:
            raise KeyError(item_id)
        return located[1]

    def image_path(self, item: dict[str, Any], *, root: Path | None = None) -> Path | None:
        """An image item's file: an upload kept by its shard, else under ``root`` (default: the collection root),
        never outside either."""
        return image_file(item, index_dir=self.shard_dirs[self.owner(str(item["id"]))],
                          root=root or self.collection_root)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        for shard in self.shards:
            shard.close()
