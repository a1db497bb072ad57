"""The API's routers, one per concern, in the order their routes are matched and documented."""

from __future__ import annotations

from fastapi import APIRouter

from service.routes import items, meta, metrics, page, search, writes

ROUTERS: tuple[APIRouter, ...] = (search.router, items.router, writes.router, meta.router, metrics.router,
                                  page.router)
