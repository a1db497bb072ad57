"""``POST /v1/search``: one side (images or texts) searched with a text or an image; dense, sparse or hybrid."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from PIL import Image

from indexer.params import SearchParams
from indexer.payload import PayloadError
from indexer.search import EMPTY_SPARSE_WARNING, EmptySparseQueryError, Hit, SearchResult
from indexer.store import Side
from service.admission import Ticket
from service.auth import READ_SECURITY, require_read_key
from service.dependencies import (
    EngineDep,
    MetricsDep,
    OffLoopDep,
    Reader,
    ReaderDep,
    SettingsDep,
    TicketDep,
    WorkerDep,
)
from service.errors import ApiError, errors_of
from service.lanes import EngineWorker
from service.openapi import request_body
from service.request_context import request_id_of
from service.routes.items import collection_of, public_item
from service.schemas import (
    MAX_FACET_VALUES,
    MAX_FILTER_CHARS,
    FacetsResponse,
    FacetValue,
    HitExplanation,
    MatchedTerm,
    QueryInfo,
    Scores,
    SearchHit,
    SearchRequest,
    SearchResponse,
    TermWeight,
)
from service.search_input import check_limits, filter_of, query_of, read_search_request

router = APIRouter(tags=["search"])
# the result, the query's terms, encoding ms, the query's words without a term
Found = tuple[SearchResult, list[tuple[str, float]], float, list[str]]

# The body is read by hand (JSON or multipart), so its two forms are documented here rather than inferred.
SEARCH_BODY: dict[str, Any] = {"security": READ_SECURITY, **request_body(SearchRequest)}


async def _run(ticket: Ticket, worker: EngineWorker, reader: Reader, given: str | Image.Image,
               params: SearchParams) -> Found:
    """Encode and search on the engine's thread, within one read of the current generation; the query's terms, the
    encoding's milliseconds and the text's words without a term apart."""

    def work() -> Found:
        with reader() as engine:
            started = time.perf_counter()
            query = engine.encode_text(given) if isinstance(given, str) else engine.encode_image(given)
            encode_ms = (time.perf_counter() - started) * 1000
            unmatched = engine.unmatched_words(given) if isinstance(given, str) else []
            try:
                result = engine.search(query, params)
            except EmptySparseQueryError as e:
                raise EmptySparseQueryError(_naming(str(e), unmatched)) from e
            result.warnings = [_naming(w, unmatched) if w == EMPTY_SPARSE_WARNING else w for w in result.warnings]
            return result, engine.query_terms(query), encode_ms, unmatched

    try:
        return await ticket.run(worker, work)
    except EmptySparseQueryError as e:
        raise ApiError(422, "empty_sparse_query", str(e)) from e
    except PayloadError as e:
        raise ApiError(422, "invalid_filter", f"filter: {e}") from e


def _naming(message: str, unmatched: list[str]) -> str:
    """An empty sparse leg's message, naming the query's words the model has no term for."""
    if not unmatched:
        return message
    return f"{message} (no term for: {', '.join(unmatched[:16])})"


def _hit(side: str, hit: Hit, collection: str | None) -> SearchHit:
    explanation = None
    if hit.explanation is not None:
        explanation = HitExplanation(
            matched_terms=[MatchedTerm(term=m.term, query_weight=m.query_weight, item_weight=m.item_weight,
                                       contribution=m.contribution) for m in hit.explanation.matched_terms],
            item_terms=[TermWeight(term=t, weight=w) for t, w in hit.explanation.item_terms])
    return SearchHit(id=hit.id, rank=hit.rank, scores=Scores(dense=hit.dense, sparse=hit.sparse, fused=hit.fused),
                     metadata=public_item(side, hit.item, collection), explanation=explanation)


def _response_json(request_id: str, body: SearchRequest, text: str | None, found: Found,
                   timings_ms: dict[str, float], collection: str | None) -> str:
    result, terms, _, unmatched = found
    response = SearchResponse(
        request_id=request_id, side=body.side, mode=body.mode, fusion=body.fusion,
        query=QueryInfo(kind="text" if text is not None else "image", text=text,
                        terms=[TermWeight(term=t, weight=w) for t, w in terms], unmatched_terms=unmatched),
        weights=result.weights, top_k=body.top_k, offset=body.offset, candidates=result.candidates,
        hits=[_hit(body.side, hit, collection) for hit in result.hits], warnings=result.warnings, timings_ms=timings_ms,
        plan=result.plan, plans=result.plans, rows=result.rows)
    # Already a validated model: serialise it once instead of letting FastAPI validate it again.
    return response.model_dump_json()


@router.post("/v1/search", response_model=SearchResponse, openapi_extra=SEARCH_BODY,
             responses=errors_of(400, 401, 403, 408, 413, 415, 422, 503),
             dependencies=[Depends(require_read_key)])
async def search(request: Request, engine: EngineDep, reader: ReaderDep, settings: SettingsDep,
                 worker: WorkerDep, off_loop: OffLoopDep, metrics: MetricsDep, ticket: TicketDep) -> Response:
    """Search one side (images or texts) with a text or an image; dense, sparse or hybrid."""
    started = time.perf_counter()
    body, image_bytes = await read_search_request(request)
    check_limits(body, settings)
    if body.side not in engine.sides:
        raise ApiError(422, "invalid_request", f"this index has no {body.side!r} side")
    given, decode_ms = await off_loop.run(lambda: query_of(body, image_bytes, settings))
    text = given if isinstance(given, str) else None
    found = await _run(ticket, worker, reader, given, body.params())
    total_ms = (time.perf_counter() - started) * 1000
    metrics.observe_search(body.mode, body.side, total_ms / 1000)
    metrics.observe_plans(found[0].plans, filtered=body.filter is not None)
    if text is not None:
        metrics.observe_unmatched_words(len(found[3]))
    timings_ms = {"decode": decode_ms, "encode": found[2], **found[0].timings_ms, "total": total_ms}
    payload = await off_loop.run(lambda: _response_json(request_id_of(request) or "", body, text, found, timings_ms,
                                                             collection_of(request)))
    return Response(payload, media_type="application/json")


@router.get("/v1/facets/{field}", response_model=FacetsResponse, responses=errors_of(401, 403, 422, 503),
            dependencies=[Depends(require_read_key)], openapi_extra={"security": READ_SECURITY})
async def facets(field: Annotated[str, PathParam(description="A keyword, keywords, bool or integer payload field.",
                                                 max_length=64)],
                 reader: ReaderDep, worker: WorkerDep, ticket: TicketDep,
                 side: Annotated[Side, Query(description="The side whose items are counted.")] = "images",
                 filter: Annotated[str | None, Query(description="A search filter, as JSON: only items passing it "
                                                      "are counted.", max_length=MAX_FILTER_CHARS)] = None,
                 limit: Annotated[int, Query(ge=1, le=MAX_FACET_VALUES)] = 100) -> FacetsResponse:
    """How many live items of a side hold each value of a payload field, under a filter; most first."""
    filter_ = filter_of(filter)

    def work() -> FacetsResponse:
        with reader() as engine:
            if side not in engine.sides:
                raise ApiError(422, "invalid_request", f"this index has no {side!r} side")
            counted = engine.facets(side, field, filter_, limit=limit + 1)
            return FacetsResponse(field=field, side=side, values=[FacetValue(value=c.value, count=c.count)
                                                                  for c in counted[:limit]],
                                  more=len(counted) > limit)

    try:
        return await ticket.run(worker, work)
    except PayloadError as e:
        raise ApiError(422, "invalid_filter", str(e)) from e
