"""What a search asks for: the one definition of the search options, their defaults, and the fusion they imply.

Shared by the one read engine (indexer/search.py), the per-index reader that composes each leg's searcher
(indexer/index_reader.py), the service's request schema and the benchmarks.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from core.fusion import integrated_score, reciprocal_rank_fusion
from indexer.filters import Filter
from indexer.planner import PlanChoice
from indexer.searchers import Fuse, RankBy
from indexer.store import IndexManifest, Side

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
    filter: Filter | None = Field(None, description="Only items whose payload passes: must / should / must_not of "
                                  "conditions match (value or any), range (gt, gte, lt, lte), exists, has_id, or "
                                  "nested filters, over the collection's indexed payload fields.")
    plan: PlanChoice = Field("auto", description="How each shard searches: exact (brute force over the rows the "
                             "filter allows), index (the legs' indexes, the filter inside), or auto (exact at or "
                             "under the planner's row count, else index).")

    @property
    def rank_by(self) -> RankBy:
        """The score hits are ranked by: the fused one in hybrid mode, else the mode's own leg."""
        return "fused" if self.mode == "hybrid" else self.mode

    @property
    def query_term_limit(self) -> int | None:
        """How many of the query's strongest terms Lucene gets (None: all)."""
        if self.sparse_query_terms is None:
            return HYBRID_QUERY_TERMS if self.mode == "hybrid" else None
        return self.sparse_query_terms or None


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
