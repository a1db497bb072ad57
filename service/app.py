"""The Duet HTTP API and web page: ``create_app(settings)``."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service.body_intake import BodyIntakeMiddleware, BodyPolicy
from service.errors import install_error_handlers
from service.lifespan import collections_lifespan, load_collection
from service.openapi import install_openapi
from service.registry import CollectionLoader
from service.request_context import RequestContextMiddleware
from service.routes import ROUTERS
from service.settings import ServiceSettings
from service.state import ServiceState

DOCS_ASSETS = "/docs-assets"  # where /docs and /redoc load Swagger UI and ReDoc from

__all__ = ["DOCS_ASSETS", "CollectionLoader", "create_app", "load_collection"]


def create_app(settings: ServiceSettings, *, engine_loader: CollectionLoader = load_collection) -> FastAPI:
    """The app over the collections ``settings`` name, each opened by ``engine_loader`` at startup (not ready until
    then)."""
    # /docs and /redoc from assets packaged with fastapi-offline, so the pages need no CDN
    app = FastAPIOffline(title="Duet", version="0.1.0", lifespan=collections_lifespan(engine_loader),
                         static_url=DOCS_ASSETS,
                         description="Hybrid sparse-dense text-image retrieval (Song et al., CIKM 2025).")
    # /v1/search/ is a 404, not a redirect built from the client's Host header
    app.router.redirect_slashes = False
    state = ServiceState(settings)
    app.state.service = state
    # the last added is outermost: each request gets its id (or a draining service's 503) before its body is read
    app.add_middleware(BodyIntakeMiddleware, policy=BodyPolicy.of(settings), metrics=state.metrics)
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics, drain=state.drain)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    install_openapi(app, settings)
    return app
