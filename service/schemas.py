"""Request and response models of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from indexer.item_rules import ITEM_ID_PATTERN, MAX_ID_CHARS, TEXT_PATTERN
from indexer.params import SearchParams

# What the schemas say beyond the types, for clients and generated-input tests; the route code enforces each (with
# its own error codes), and service/openapi.py adds the limits that are settings.
TEXT_RULES: dict[str, JsonValue] = {"minLength": 1, "pattern": TEXT_PATTERN}
IMAGE_BASE64: dict[str, JsonValue] = {"contentEncoding": "base64", "contentMediaType": "image/*"}

# exactly one of a text and an image (a field absent and a field null are the same)
_TEXT: dict[str, JsonValue] = {"required": ["text"], "properties": {"text": {"type": "string"}}}
_IMAGE: dict[str, JsonValue] = {"required": ["image_base64"], "properties": {"image_base64": {"type": "string"}}}
ONE_QUERY: list[JsonValue] = [{**_TEXT, "not": _IMAGE}, {**_IMAGE, "not": _TEXT}]
# the same, and a text item has no captions
ONE_ITEM: list[JsonValue] = [{"required": ["text"], "properties": {"text": {"type": "string"}, "captions": {
    "maxItems": 0}}, "not": _IMAGE}, {**_IMAGE, "not": _TEXT}]


class SearchRequest(SearchParams):
    """A text or an image (base64) query with the search options; as JSON, or as multipart form fields beside an
    image file."""

    model_config = ConfigDict(extra="forbid", frozen=False,
                              json_schema_extra={"oneOf": ONE_QUERY})

    text: str | None = Field(None, description="Text query (1 to 1,000 characters, not all whitespace).",
                             json_schema_extra=TEXT_RULES)
    image_base64: str | None = Field(None, description="Image query, base64-encoded bytes (JPEG, PNG, WEBP, GIF, "
                                     "BMP).", json_schema_extra=IMAGE_BASE64)

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
    unmatched_terms: list[str] = Field(default_factory=list, description="The text's content words the model has "
                                       "no sparse term for (a word model's vocabulary lacks them): they match "
                                       "nothing in the sparse leg; the dense leg still reads them.")


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
    plan: str = Field("index", description="How the shards searched: exact (brute force over the allowed rows), "
                      "index (the legs' indexes, the filter inside), or mixed.")
    plans: dict[str, int] = Field(default_factory=dict, description="Shards per plan.")
    rows: int = Field(0, description="The live items the search could return: those passing its filter.")


# a facet query's filter travels in the URL: percent-encoded (up to 3 bytes a character) it stays well inside the
# 16 KiB request head the HTTP parser accepts; the answer's values are bounded too
MAX_FILTER_CHARS = 2_000
MAX_FACET_VALUES = 1_000


class FacetValue(BaseModel):
    value: str | int | bool
    count: int


class FacetsResponse(BaseModel):
    field: str
    side: str
    values: list[FacetValue] = Field(description="Each value with how many live items passing the filter hold it, "
                                     "most first (ties by value).")
    more: bool = Field(description="Whether more values than the limit have items.")


class ItemBody(BaseModel):
    """An item to write: a text (the texts side), or an image (the images side) with its captions (the texts side,
    ids ``<image id>#<n>``); as JSON, or as multipart form fields beside an ``image`` file."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": ONE_ITEM})

    id: str | None = Field(None, description="The item's id: no '#', no control character, no whitespace at either "
                           "end, not ending in /image; default: a hash of its content. An item with this id is "
                           "replaced, an image's captions with it. PUT takes it from the path.",
                           json_schema_extra={"minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": ITEM_ID_PATTERN})
    text: str | None = Field(None, description="A text item (1 to 1,000 characters, not all whitespace).",
                             json_schema_extra=TEXT_RULES)
    image_base64: str | None = Field(None, description="An image item, base64-encoded file bytes (JPEG, PNG, WEBP, "
                                     "GIF, BMP).", json_schema_extra=IMAGE_BASE64)
    captions: list[str] = Field(default_factory=list, description="An image's captions (multipart: repeated "
                                "'captions' parts, or parts sent as application/json, each a JSON list).",
                                json_schema_extra={"items": {"type": "string", **TEXT_RULES}})
    metadata: dict[str, Any] | None = Field(None, description="Kept with the item and returned with it (multipart: "
                                            "a part holding a JSON object).")

    @model_validator(mode="after")
    def _one_item(self) -> ItemBody:
        if (self.text is None) == (self.image_base64 is None):
            raise ValueError("give exactly one of 'text' (a text item) or 'image' (a multipart file, or image_base64)")
        if self.text is not None and self.captions:
            raise ValueError("captions belong to an image item; a text item has none")
        return self


class WriteResponse(BaseModel):
    """An acknowledged write: durable (in the collection's log) before this answer, seen by every later search."""

    seq: int = Field(description="The write's position in the collection's log.")
    op: Literal["upsert", "delete"]
    id: str
    side: str
    replaced: bool = Field(description="Whether an upsert replaced a live item with this id.")
    written: dict[str, list[str]] = Field(description="Ids written, per side (an image, and its captions).")
    deleted: dict[str, list[str]] = Field(description="Ids removed, per side (replaced or deleted items).")
