"""``POST /v1/search``: one side (images or texts) searched with a text or an image; dense, sparse or hybrid."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from PIL import Image

from indexer.search import EmptySparseQueryError, Hit, SearchParams, SearchResult
from service.dependencies import EngineDep, MetricsDep, Reader, ReaderDep, SettingsDep, WorkerDep
from service.errors import ApiError
from service.request_context import request_id_of
from service.routes.items import public_item
from service.schemas import (
    HitExplanation,
    MatchedTerm,
    QueryInfo,
    Scores,
    SearchHit,
    SearchRequest,
    SearchResponse,
    TermWeight,
)
from service.search_input import check_limits, query_of, read_search_request
from service.state import EngineWorker

router = APIRouter(tags=["search"])

# The body is read by hand (JSON or multipart), so its two forms are documented here rather than inferred.
_SCHEMA = SearchRequest.model_json_schema()
SEARCH_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _SCHEMA},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "image": {"type": "string", "format": "binary"},
        **{k: v for k, v in _SCHEMA["properties"].items() if k != "image_base64"}}}},
}}}


async def _run(worker: EngineWorker, reader: Reader, given: str | Image.Image,
               params: SearchParams) -> tuple[SearchResult, list[tuple[str, float]], float]:
    """Encode and search on the engine's thread, within one read of the current generation; the query's terms, and
    the encoding's milliseconds apart."""

    def work() -> tuple[SearchResult, list[tuple[str, float]], float]:
        with reader() as engine:
            started = time.perf_counter()
            query = engine.encode_text(given) if isinstance(given, str) else engine.encode_image(given)
            encode_ms = (time.perf_counter() - started) * 1000
            return engine.search(query, params), engine.query_terms(query), encode_ms

    try:
        return await worker.run(work)
    except EmptySparseQueryError as e:
        raise ApiError(422, "empty_sparse_query", str(e)) from e


def _hit(side: str, hit: Hit) -> SearchHit:
    explanation = None
    if hit.explanation is not None:
        explanation = HitExplanation(
            matched_terms=[MatchedTerm(term=m.term, query_weight=m.query_weight, item_weight=m.item_weight,
                                       contribution=m.contribution) for m in hit.explanation.matched_terms],
            item_terms=[TermWeight(term=t, weight=w) for t, w in hit.explanation.item_terms])
    return SearchHit(id=hit.id, rank=hit.rank, scores=Scores(dense=hit.dense, sparse=hit.sparse, fused=hit.fused),
                     metadata=public_item(side, hit.item), explanation=explanation)


@router.post("/v1/search", response_model=SearchResponse, openapi_extra=SEARCH_BODY)
async def search(request: Request, engine: EngineDep, reader: ReaderDep, settings: SettingsDep,
                 worker: WorkerDep, metrics: MetricsDep) -> Response:
    """Search one side (images or texts) with a text or an image; dense, sparse or hybrid."""
    started = time.perf_counter()
    body, image_bytes = await read_search_request(request)
    check_limits(body, settings)
    if body.side not in engine.sides:
        raise ApiError(422, "invalid_request", f"this index has no {body.side!r} side")
    given, decode_ms = query_of(body, image_bytes, settings)
    text = given if isinstance(given, str) else None
    result, terms, encode_ms = await _run(worker, reader, given, body.params())
    total_ms = (time.perf_counter() - started) * 1000
    metrics.observe_search(body.mode, body.side, total_ms / 1000)
    response = SearchResponse(
        request_id=request_id_of(request) or "", side=body.side, mode=body.mode, fusion=body.fusion,
        query=QueryInfo(kind="text" if text is not None else "image", text=text,
                        terms=[TermWeight(term=t, weight=w) for t, w in terms]),
        weights=result.weights, top_k=body.top_k, offset=body.offset, candidates=result.candidates,
        hits=[_hit(body.side, hit) for hit in result.hits], warnings=result.warnings,
        timings_ms={"decode": decode_ms, "encode": encode_ms, **result.timings_ms, "total": total_ms})
    # Already a validated model: serialise it once instead of letting FastAPI validate it again.
    return Response(response.model_dump_json(), media_type="application/json")
