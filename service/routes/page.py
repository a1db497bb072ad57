"""``/``: the single-page search UI (its HTML, CSS and script in one packaged file), served under a strict
Content-Security-Policy: its own inline script and style by hash, everything else from this origin only, no
framing."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()
STATIC = Path(__file__).resolve().parents[1] / "static"
PAGE = STATIC / "index.html"


def _hashes(html: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


def content_security_policy(html: str) -> str:
    return (f"default-src 'none'; script-src {_hashes(html, 'script')}; style-src {_hashes(html, 'style')}; "
            "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@cache
def _page() -> tuple[str, dict[str, str]]:
    html = PAGE.read_text(encoding="utf-8")
    return html, {"Content-Security-Policy": content_security_policy(html), "X-Frame-Options": "DENY",
                  "Referrer-Policy": "no-referrer"}


@router.get("/", include_in_schema=False, response_class=HTMLResponse)
def page() -> HTMLResponse:
    html, headers = _page()
    return HTMLResponse(html, headers=headers)
