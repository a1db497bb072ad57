"""Request and response models of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from indexer.search import SearchParams


class SearchRequest(SearchParams):
    """A text or an image (base64) query with the search options; as JSON, or as multipart form fields beside an
    image file."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    text: str | None = Field(None, description="Text query (1 to 1,000 characters).")
    image_base64: str | None = Field(None, description="Image query, base64-encoded bytes (JPEG, PNG, WEBP, ...).")

    def params(self) -> SearchParams:
        """The search options alone."""
        return SearchParams(**self.model_dump(include=set(SearchParams.model_fields)))

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
