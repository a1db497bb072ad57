"""The Duet HTTP API and web page: ``create_app(settings)``.

All engine work (encoding, FAISS, Lucene through pyjnius, torch) runs on one dedicated worker thread: the JVM is
attached to that thread once, torch gets both cores for each request, and the event loop stays free.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.search import EmptySparseQueryError, SearchEngine
from service.errors import ApiError, error_body
from service.images import decode_image
from service.metrics import Metrics
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
from service.settings import ServiceSettings

_logger = logging.getLogger("service")
STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = "/docs-assets"  # where /docs and /redoc load Swagger UI and ReDoc from
EngineLoader = Callable[[ServiceSettings], SearchEngine]


def load_engine(settings: ServiceSettings) -> SearchEngine:
    return SearchEngine(settings.index_dir, checkpoint=settings.checkpoint)


class BodyLimitMiddleware:
    """413 for bodies over the limit, whether announced by Content-Length or streamed."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        too_large = ApiError(413, "body_too_large", f"request body exceeds {self.max_bytes} bytes")
        if length is not None:
            try:
                announced = int(length)
            except ValueError:
                announced = -1
            if announced < 0 or announced > self.max_bytes:
                error = too_large if announced > self.max_bytes else ApiError(400, "bad_content_length",
                                                                              "invalid Content-Length header")
                response = JSONResponse(error_body(error.code, error.message, None), status_code=error.status)
                await response(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise too_large
            return message

        await self.app(scope, limited_receive, send)


def _validation_message(error: ValidationError | RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
    return "; ".join(parts)


def _image_url(item_id: str) -> str:
    return f"/v1/items/{quote(item_id, safe='')}/image"


def _public_item(side: str, item: dict[str, Any]) -> dict[str, Any]:
    image_id = item["id"] if side == "images" else item.get("image_id")
    return {**item, "side": side, "image_url": _image_url(image_id) if image_id else None}


async def _read_search_request(request: Request) -> tuple[SearchRequest, bytes | None]:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    image_bytes: bytes | None = None
    if media_type == "application/json":
        raw = await request.body()
        try:
            payload = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ApiError(400, "invalid_encoding", "the request body is not valid UTF-8") from e
        except json.JSONDecodeError as e:
            raise ApiError(400, "malformed_json", f"the request body is not valid JSON: {e}") from e
        if not isinstance(payload, dict):
            raise ApiError(422, "invalid_request", "the JSON body must be an object")
    elif media_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=32)
        except StarletteHTTPException as e:
            raise ApiError(400, "malformed_multipart", str(e.detail)) from e
        payload = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "image":
                    raise ApiError(422, "invalid_request", f"unexpected file field {key!r}; send the image as 'image'")
                image_bytes = await value.read()
            else:
                payload[key] = value
        if image_bytes is not None:
            payload["image_base64"] = ""  # placeholder: the bytes travel separately
    else:
        raise ApiError(415, "unsupported_media_type",
                       f"unsupported content type {media_type or '(none)'}; "
                       "send application/json or multipart/form-data")
    try:
        search = SearchRequest.model_validate(payload)
    except ValidationError as e:
        raise ApiError(422, "invalid_request", _validation_message(e)) from e
    return search, image_bytes


def _check_limits(search: SearchRequest, settings: ServiceSettings) -> None:
    for name, value, limit in (("top_k", search.top_k, settings.max_top_k), ("offset", search.offset,
                               settings.max_offset), ("candidate_k", search.candidate_k, settings.max_candidate_k)):
        if value > limit:
            raise ApiError(422, "invalid_request", f"{name} must be at most {limit} (got {value})")
    if search.text is not None:
        text = search.text.strip()
        if not text:
            raise ApiError(422, "empty_text", "the text query is empty")
        if len(text) > settings.max_text_chars:
            raise ApiError(422, "text_too_long",
                           f"the text query has {len(text)} characters; the limit is {settings.max_text_chars}")


def create_app(settings: ServiceSettings, *, engine_loader: EngineLoader = load_engine) -> FastAPI:
    metrics = Metrics()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duet-engine")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = None
        app.state.not_ready = "loading"
        try:
            app.state.engine = await asyncio.get_running_loop().run_in_executor(executor, engine_loader, settings)
            app.state.not_ready = None
            _logger.info("index %s loaded: %s", settings.index_dir,
                         {s: len(st.ids) for s, st in app.state.engine.stores.items()})
        except Exception as e:  # a missing or mismatched index must not stop the process: /readyz reports it
            app.state.not_ready = f"{type(e).__name__}: {e}"
            _logger.error("index not loaded: %s", app.state.not_ready)
        yield
        if app.state.engine is not None:
            await asyncio.get_running_loop().run_in_executor(executor, app.state.engine.close)
        executor.shutdown(wait=False)

    # /docs and /redoc from assets packaged with fastapi-offline, so the pages need no CDN
    app = FastAPIOffline(title="Duet", version="0.1.0", lifespan=lifespan, static_url=DOCS_ASSETS,
                         description="Hybrid sparse-dense text-image retrieval (Song et al., CIKM 2025).")
    app.state.settings = settings
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    @app.middleware("http")
    async def request_context(request: Request, call_next: Callable[..., Any]) -> Any:
        incoming = request.headers.get("x-request-id", "")
        request.state.request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        route = request.scope.get("route")
        metrics.observe_request(request.method, getattr(route, "path", "unmatched"), response.status_code)
        return response

    def request_id(request: Request) -> str | None:
        return getattr(request.state, "request_id", None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, request_id(request)), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid_request", _validation_message(exc), request_id(request)),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail), request_id(request)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        _logger.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal error; see the server log",
                                       request_id(request)), status_code=500)

    def engine_of(request: Request) -> SearchEngine:
        engine = request.app.state.engine
        if engine is None:
            raise ApiError(503, "index_unavailable", f"the index is not available: {request.app.state.not_ready}")
        return engine

    search_body = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": SearchRequest.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "image": {"type": "string", "format": "binary"},
            **{k: v for k, v in SearchRequest.model_json_schema()["properties"].items() if k != "image_base64"}}}},
    }}}

    @app.post("/v1/search", response_model=SearchResponse, openapi_extra=search_body, tags=["search"])
    async def search(request: Request) -> Response:
        """Search one side (images or texts) with a text or an image; dense, sparse or hybrid."""
        started = time.perf_counter()
        engine = engine_of(request)
        body, image_bytes = await _read_search_request(request)
        _check_limits(body, settings)
        if body.side not in engine.stores:
            raise ApiError(422, "invalid_request", f"this index has no {body.side!r} side")
        image = None
        decode_ms = 0.0
        if body.image_base64 is not None:
            if image_bytes is None:
                try:
                    image_bytes = base64.b64decode(body.image_base64, validate=True)
                except (binascii.Error, ValueError) as e:
                    raise ApiError(422, "invalid_base64", f"image_base64 is not valid base64: {e}") from e
            decode_started = time.perf_counter()
            image = decode_image(image_bytes, max_pixels=settings.max_image_pixels)
            decode_ms = (time.perf_counter() - decode_started) * 1000
        params = body.params()
        text = body.text.strip() if body.text is not None else None

        def work() -> tuple[Any, Any, float]:
            encode_started = time.perf_counter()
            query = engine.encode_text(text) if text is not None else engine.encode_image(image)
            encode_ms = (time.perf_counter() - encode_started) * 1000
            return query, engine.search(query, params), encode_ms

        try:
            query, result, encode_ms = await asyncio.get_running_loop().run_in_executor(executor, work)
        except EmptySparseQueryError as e:
            raise ApiError(422, "empty_sparse_query", str(e)) from e
        hits = []
        for hit in result.hits:
            explanation = None
            if hit.explanation is not None:
                explanation = HitExplanation(
                    matched_terms=[MatchedTerm(term=m.term, query_weight=m.query_weight, item_weight=m.item_weight,
                                               contribution=m.contribution) for m in hit.explanation.matched_terms],
                    item_terms=[TermWeight(term=t, weight=w) for t, w in hit.explanation.item_terms])
            hits.append(SearchHit(id=hit.id, rank=hit.rank, scores=Scores(dense=hit.dense, sparse=hit.sparse,
                                                                          fused=hit.fused),
                                  metadata=_public_item(body.side, hit.item), explanation=explanation))
        total_ms = (time.perf_counter() - started) * 1000
        metrics.observe_search(body.mode, body.side, total_ms / 1000)
        response = SearchResponse(
            request_id=request_id(request) or "", side=body.side, mode=body.mode, fusion=body.fusion,
            query=QueryInfo(kind="text" if text is not None else "image", text=text,
                            terms=[TermWeight(term=t, weight=w) for t, w in engine.query_terms(query)]),
            weights=result.weights, top_k=body.top_k, offset=body.offset, candidates=result.candidates, hits=hits,
            warnings=result.warnings,
            timings_ms={"decode": decode_ms, "encode": encode_ms, **result.timings_ms, "total": total_ms})
        # Already a validated model: serialise it once instead of letting FastAPI validate it again.
        return Response(response.model_dump_json(), media_type="application/json")

    def find_item(request: Request, item_id: str) -> tuple[str, dict[str, Any]]:
        try:
            return engine_of(request).item(item_id)
        except KeyError as e:
            raise ApiError(404, "item_not_found", f"no item with id {item_id!r}") from e

    @app.get("/v1/items/{item_id:path}/image", tags=["items"])
    def item_image(request: Request, item_id: str) -> FileResponse:
        """The image file of an image item, or of a caption's image; served only from the collection root."""
        side, item = find_item(request, item_id)
        if side == "texts":
            side, item = find_item(request, item["image_id"])
        engine = engine_of(request)
        root = Path(settings.collection_root or engine.collection_root).resolve()
        path = (root / str(item.get("path", ""))).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise ApiError(404, "image_not_found", f"the image of {item_id!r} is not available in the collection")
        return FileResponse(path)

    @app.get("/v1/items/{item_id:path}", tags=["items"])
    def get_item(request: Request, item_id: str) -> dict[str, Any]:
        side, item = find_item(request, item_id)
        return _public_item(side, item)

    @app.get("/v1/indexes", tags=["meta"])
    def indexes(request: Request) -> dict[str, Any]:
        manifest = engine_of(request).manifest
        return {
            "index_dir": str(settings.index_dir), "created_at": manifest.created_at,
            "checkpoint": manifest.checkpoint.model_dump(), "collection": manifest.collection,
            "temperature": manifest.temperature,
            "default_weights": {"w_dense": manifest.fusion_dense_weight, "w_sparse": manifest.fusion_sparse_weight},
            "quantization": manifest.quantization, "pruning": manifest.pruning,
            "sides": {side: {"count": s.count, "dense_dim": s.dense_dim, "faiss_factory": s.faiss_factory,
                             "mean_terms": s.mean_terms, "bytes": s.bytes} for side, s in manifest.sides.items()},
        }

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["meta"])
    def readyz(request: Request) -> JSONResponse:
        engine = request.app.state.engine
        if engine is None:
            return JSONResponse({"ready": False, "reason": request.app.state.not_ready}, status_code=503)
        return JSONResponse({"ready": True, "sides": {s: len(st.ids) for s, st in engine.stores.items()}})

    @app.get("/metrics", tags=["meta"], response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    return app
