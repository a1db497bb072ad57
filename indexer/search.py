"""The one search path, shared by the service and the benchmarks: an index, its encoder, and the searcher a search's
parameters compose from the legs of indexer/searchers.py.

A query (text or image) is encoded by the same checkpoint the index was built with, then searched on one side:
  dense   FAISS top-k;
  sparse  Lucene impact top-k with the query's own quantised term weights;
  hybrid  the top candidate_k of each leg, every candidate rescored exactly on both legs (dense dot product from
          the stored vectors, sparse dot product from the forward store) and ranked by the paper's integrated score
          w_dense * dense / temperature + w_sparse * sparse, or by reciprocal-rank fusion.
Every hit carries its exact dense, sparse and fused scores, whatever the mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from core.encoder import DuetEncoder, vocabulary_digest
from core.fusion import integrated_score, reciprocal_rank_fusion
from core.vocab import Vocabulary
from indexer.lucene import ImpactSearcher
from indexer.query import Query
from indexer.searchers import (
    ExactScores,
    FaissLeg,
    Fuse,
    HybridSearcher,
    LuceneLeg,
    Rescored,
    RowScorer,
    Searcher,
    StrongestTerms,
    excluding_rows,
)
from indexer.segments import DeltaLeg, Excluding, Segment, SegmentScores, SideView, unchanged
from indexer.store import (
    IndexManifest,
    IndexUnavailableError,
    Side,
    SideStore,
    check_binding,
    manifest_in,
    manifest_path,
    opening_index,
)

Mode = Literal["dense", "sparse", "hybrid"]
MODES: tuple[Mode, ...] = get_args(Mode)
Fusion = Literal["weighted", "rrf"]
# Hybrid sends only the query's 32 strongest terms to Lucene: on Flickr8k val (1K images, 5K captions) hybrid
# R@1/5/10 in both directions were identical with 16, 32, 64, 128 and all terms (the dense candidates and the exact
# rescoring carry the ranking); 32 keeps a margin. Sparse-only mode keeps all terms by default.
HYBRID_QUERY_TERMS = 32
# explanations for the first hits of a page only: a 1,000-hit page with all of them is tens of megabytes of JSON
EXPLAINED_HITS = 50
# hybrid candidates per leg: the one default of the service, the CLIs and the benchmarks
DEFAULT_CANDIDATE_K = 100


class SearchParams(BaseModel):
    """How to search: the one definition of the search options and their defaults (the service's request schema
    extends it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    side: Side = Field("images", description="What to return: images or captions.")
    mode: Mode = "hybrid"
    fusion: Fusion = "weighted"
    w_dense: float | None = Field(None, ge=0, le=1000, description="Default: the checkpoint's val-selected weight.")
    w_sparse: float | None = Field(None, ge=0, le=1000)
    top_k: int = Field(10, ge=1)
    offset: int = Field(0, ge=0)
    candidate_k: int = Field(DEFAULT_CANDIDATE_K, ge=1)
    # Lucene leg only: a little candidate recall for much less Lucene work (one clause per term).
    sparse_query_terms: int | None = Field(
        None, ge=0, le=100_000, description="Query terms sent to Lucene (strongest first); null: the mode's "
        f"default ({HYBRID_QUERY_TERMS} in hybrid, all in sparse mode); 0: all. Candidates are always rescored "
        "with the full query.")
    explain: bool = Field(False, description=f"Explain the sparse score of the page's first {EXPLAINED_HITS} hits "
                          "(matched terms and the item's strongest terms); later hits have none.")


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
    row: int
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


def search_weights(manifest: IndexManifest, params: SearchParams) -> tuple[float, float]:
    """The fusion weights of a search: the request's, else the checkpoint's val-selected ones."""
    w_dense = manifest.fusion_dense_weight if params.w_dense is None else params.w_dense
    w_sparse = manifest.fusion_sparse_weight if params.w_sparse is None else params.w_sparse
    return w_dense, w_sparse


def search_fusion(manifest: IndexManifest, params: SearchParams) -> Fuse:
    """How a search fuses exact (dense, sparse) scores: the integrated score with its weights, or RRF."""
    if params.fusion == "rrf":
        return reciprocal_rank_fusion
    w_dense, w_sparse = search_weights(manifest, params)
    temperature = manifest.temperature
    return lambda dense, sparse: integrated_score(dense, sparse, w_dense=w_dense, w_sparse=w_sparse,
                                                  temperature=temperature)


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


class QueryEncoding:
    """Queries encoded with the collection's own checkpoint: what every engine (one index, or the ingress of a
    sharded collection) does before it searches."""

    encoder: DuetEncoder

    def encode_text(self, text: str) -> Query:
        return Query.from_encoded(self.encoder.encode_texts([text]))

    def encode_image(self, image: Image.Image) -> Query:
        return Query.from_encoded(self.encoder.encode_images([image]))

    def query_terms(self, query: Query, limit: int = 32) -> list[tuple[str, float]]:
        return query_terms(query, self.encoder.vocabulary, limit)


class SearchEngine(QueryEncoding):
    """An index plus the encoder it was built with."""

    def __init__(self, index_dir: str | Path, *, encoder: DuetEncoder | None = None,
                 checkpoint: str | Path | None = None, sides: tuple[str, ...] | None = None) -> None:
        self.index_dir = Path(index_dir)
        # the live version, resolved once and held while it is opened: every read comes from it
        with opening_index(self.index_dir) as directory:
            self.directory = directory
            self._open(encoder, checkpoint, sides)

    def _open(self, encoder: DuetEncoder | None, checkpoint: str | Path | None, sides: tuple[str, ...] | None) -> None:
        self.manifest: IndexManifest = manifest_in(self.directory, self.index_dir)
        if encoder is None:
            encoder = DuetEncoder.from_checkpoint(Path(checkpoint) if checkpoint is not None else self.checkpoint_dir)
        check_binding(self.manifest, content_hash=encoder.checkpoint.content_hash,
                      backbone_fingerprint=encoder.checkpoint.backbone_fingerprint,
                      vocabulary_digest=vocabulary_digest(encoder.vocabulary))
        self.encoder = encoder
        self.vocab_size = len(encoder.vocabulary)
        scale = float(self.manifest.quantization["scale"])
        self.stores: dict[str, SideStore] = {}
        self.lucene: dict[str, ImpactSearcher] = {}
        self.segments: dict[str, Segment] = {}  # per side: writes since the index was built (indexer/live.py)
        self._exclusions: dict[str, tuple[np.ndarray, Any]] = {}  # per side: FAISS parameters skipping deletes
        for side, side_manifest in self.manifest.sides.items():
            if sides is not None and side not in sides:
                continue
            self.stores[side] = SideStore.load(self.directory / side, side, side_manifest)
            self.segments[side] = unchanged(self.stores[side])
            self.lucene[side] = ImpactSearcher(self.directory / side / "lucene", scale)
            lucene_docs = self.lucene[side].num_docs()
            if lucene_docs != side_manifest.count:
                raise IndexUnavailableError(f"{self.directory / side}/lucene holds {lucene_docs} "
                                            f"documents, the manifest {side_manifest.count}")

    @property
    def sides(self) -> tuple[str, ...]:
        return tuple(self.stores)

    @property
    def checkpoint_dir(self) -> Path:
        """The checkpoint the index was built with (its own copy; format 1: where it was built from)."""
        return manifest_path(self.directory, self.manifest.checkpoint.path)

    @property
    def collection_root(self) -> Path:
        """Where the index's image files are, as recorded at build time (relative to the index directory)."""
        return manifest_path(self.index_dir, self.manifest.collection["root"])

    def image_path(self, item: dict[str, Any], *, root: Path | None = None) -> Path | None:
        """An indexed image item's file under ``root`` (default: the recorded collection root), never outside it;
        None when there is none."""
        resolved = (root or self.collection_root).resolve()
        path = (resolved / str(item.get("path", ""))).resolve()
        return path if path.is_relative_to(resolved) and path.is_file() else None

    # ----- queries -----
    def default_weights(self) -> tuple[float, float]:
        return self.manifest.fusion_dense_weight, self.manifest.fusion_sparse_weight

    # ----- search -----
    def store(self, side: str) -> SideStore:
        if side not in self.stores:
            raise KeyError(f"this index has no {side!r} side (sides: {sorted(self.stores)})")
        return self.stores[side]

    @staticmethod
    def _query_term_limit(params: SearchParams) -> int | None:
        if params.sparse_query_terms is None:
            return HYBRID_QUERY_TERMS if params.mode == "hybrid" else None
        return params.sparse_query_terms or None

    def exact_scores(self, side: str) -> ExactScores:
        return ExactScores(self.store(side), self.vocab_size)

    def view(self, side: str) -> SideView:
        """The side as a search sees it now: the base index and the live segment (writes since, deletes)."""
        return SideView(self.store(side), self.segments.get(side))

    def set_segment(self, side: str, segment: Segment) -> None:
        """Make a side's changes visible to every later search (one reference swap: a search in flight keeps the
        segment it took)."""
        self.store(side)
        self.segments = {**self.segments, side: segment}

    def weights(self, params: SearchParams) -> tuple[float, float]:
        return search_weights(self.manifest, params)

    def fuse(self, params: SearchParams) -> Fuse:
        return search_fusion(self.manifest, params)

    def dense_leg(self, side: str, *, excluded: np.ndarray | None = None) -> Searcher:
        """FAISS over a side; ``excluded`` rows (deleted ones) are skipped inside FAISS where the index kind allows
        it, else dropped from an over-fetched answer."""
        index = self.store(side).faiss_index
        if excluded is None or excluded.size == 0:
            return FaissLeg(index)
        cached = self._exclusions.get(side)
        if cached is None or cached[0] is not excluded:  # one selector per deletes snapshot, not per search
            cached = (excluded, excluding_rows(index, excluded))
            self._exclusions[side] = cached
        parameters = cached[1]
        if parameters is None:
            return Excluding(FaissLeg(index), excluded, int(index.ntotal))
        return FaissLeg(index, parameters=parameters)

    def sparse_leg(self, side: str, *, threads: int = 1) -> LuceneLeg:
        self.store(side)
        if side not in self.lucene:
            raise IndexUnavailableError(f"{self.directory}: this engine is closed")
        return LuceneLeg(self.lucene[side], threads=threads)

    def searcher(self, params: SearchParams, *, threads: int = 1, name: str = "duet",
                 view: SideView | None = None) -> HybridSearcher:
        """The searcher a search runs: the mode's legs over one side, every candidate rescored exactly.

        Hybrid takes each leg's top candidate_k; a sparse search that sends Lucene only its strongest terms widens
        to candidate_k too, so the full-query rescoring can recover what the cut missed. On a side that changed
        since its index was built, deleted rows are dropped from every base leg and the delta is one more leg per
        score the mode ranks by."""
        view = view or self.view(params.side)
        deleted = view.segment.deleted_base_rows
        legs: dict[str, Searcher] = {}
        if params.mode in ("dense", "hybrid"):
            legs["dense"] = self.dense_leg(params.side, excluded=deleted)
        term_limit = self._query_term_limit(params)
        if params.mode in ("sparse", "hybrid"):
            sparse: Searcher = StrongestTerms(self.sparse_leg(params.side, threads=threads), term_limit)
            legs["sparse"] = Excluding(sparse, deleted, view.base_count) if deleted.size else sparse
        scores = self._with_delta(legs, view)
        widen = params.mode == "hybrid" or (params.mode == "sparse" and term_limit is not None)
        return HybridSearcher(legs, scores, self.fuse(params),
                              rank_by="fused" if params.mode == "hybrid" else params.mode,
                              candidate_k=params.candidate_k if widen else None, name=name)

    def _with_delta(self, legs: dict[str, Searcher], view: SideView) -> RowScorer:
        """Add the delta as one more leg per score the base legs rank by; return the scorer over both parts."""
        segment, base_scores = view.segment, self.exact_scores(view.base.side)
        if not segment.delta.count:
            return base_scores
        delta = ExactScores(segment.delta, self.vocab_size)
        for by in ("dense", "sparse"):
            if by in legs:
                legs[f"delta_{by}"] = DeltaLeg(delta, segment, by)
        return SegmentScores(base_scores, delta, view.base_count)

    def search(self, query: Query, params: SearchParams) -> SearchResult:
        return self.search_batch([query], params)[0]

    def search_batch(self, queries: Sequence[Query], params: SearchParams, *, threads: int = 1) -> list[SearchResult]:
        """One batch through the mode's searcher (one FAISS call, one Lucene batch over ``threads``), then the
        requested page of each ranking as hits."""
        warnings = [sparse_leg_warnings(q, params) for q in queries]
        view = self.view(params.side)
        searcher = self.searcher(params, threads=threads, view=view)
        rankings = searcher.search_batch(queries, params.offset + params.top_k)
        w_dense, w_sparse = self.weights(params)
        weights = {"w_dense": w_dense, "w_sparse": w_sparse, "temperature": self.manifest.temperature}
        return [SearchResult(self._hits(query, view, ranking, params), ranking.candidates, weights,
                             timings_ms=dict(ranking.timings_ms), warnings=notes)
                for query, ranking, notes in zip(queries, rankings, warnings, strict=True)]

    def _hits(self, query: Query, view: SideView, ranking: Rescored, params: SearchParams) -> list[Hit]:
        hits = []
        for position in range(params.offset, len(ranking)):
            row = int(ranking.rows[position])
            explained = params.explain and position - params.offset < EXPLAINED_HITS
            explanation = self.explain(query, params.side, row, view=view) if explained else None
            hits.append(Hit(row, view.id(row), position + 1, float(ranking.dense[position]),
                            float(ranking.sparse[position]), float(ranking.fused[position]), view.item(row),
                            explanation))
        return hits

    def explain(self, query: Query, side: str, row: int, *, item_terms: int = 12,
                view: SideView | None = None) -> Explanation:
        ids, values = (view or self.view(side)).sparse_row(row)
        return explain_terms(query, ids, values, self.encoder.vocabulary, item_terms=item_terms)

    def item(self, item_id: str) -> tuple[str, dict[str, Any]]:
        """The live item with this id and its side (a deleted item is gone)."""
        for side in self.stores:
            view = self.view(side)
            row = view.row_of(item_id)
            if row is not None:
                return side, view.item(row)
        raise KeyError(item_id)

    def close(self) -> None:
        # the searchers' Java objects are released now (ImpactSearcher.close, under the Java lock), not by whichever
        # thread happens to drop this engine last (a live collection's last reader of a replaced version)
        while self.lucene:
            self.lucene.popitem()[1].close()
