"""Request and response models of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SearchRequest(BaseModel):
    """A text or an image (base64) query; as JSON, or as multipart form fields beside an image file."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description="Text query (1 to 1,000 characters).")
    image_base64: str | None = Field(None, description="Image query, base64-encoded bytes (JPEG, PNG, WEBP, ...).")
    side: Literal["images", "texts"] = Field("images", description="What to return: images or captions.")
    mode: Literal["dense", "sparse", "hybrid"] = "hybrid"
    fusion: Literal["weighted", "rrf"] = "weighted"
    w_dense: float | None = Field(None, ge=0, le=1000, description="Default: the checkpoint's val-selected weight.")
    w_sparse: float | None = Field(None, ge=0, le=1000)
    top_k: int = Field(10, ge=1)
    offset: int = Field(0, ge=0)
    candidate_k: int = Field(100, ge=1)
    sparse_query_terms: int | None = Field(
        None, ge=0, le=100_000, description="Query terms sent to Lucene (strongest first); null: the mode's "
        "default (32 in hybrid, all in sparse mode); 0: all. Candidates are always rescored with the full query.")
    explain: bool = False

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.text is None) == (self.image_base64 is None):
            raise ValueError("give exactly one of 'text' or 'image' (image_base64 or a multipart file)")
        return self


class Scores(BaseModel):
    dense: float
    sparse: float
    fused: float


class TermWeight(BaseModel):
    term: str
    weight: float


class MatchedTerm(BaseModel):
    term: str
    query_weight: float
    item_weight: float
    contribution: float


class HitExplanation(BaseModel):
    matched_terms: list[MatchedTerm]
    item_terms: list[TermWeight]


class SearchHit(BaseModel):
    id: str
    rank: int
    scores: Scores
    metadata: dict[str, Any]
    explanation: HitExplanation | None = None


class QueryInfo(BaseModel):
    kind: Literal["text", "image"]
    text: str | None = None
    terms: list[TermWeight]


class SearchResponse(BaseModel):
    request_id: str
    query: QueryInfo
    side: str
    mode: str
    fusion: str
    weights: dict[str, float]
    top_k: int
    offset: int
    candidates: int
    hits: list[SearchHit]
    timings_ms: dict[str, float]
    warnings: list[str] = Field(default_factory=list, description="Why a leg could not contribute, if one could "
                                "not (e.g. a text with no content word has an empty sparse leg).")
