"""GET /: a self-contained page (no CDN, works offline) to draw ROIs on an image, pick a filter and run it.

The page is ``service/server/static/index.html``: plain HTML, CSS and JavaScript that call GET /filters and
POST /convolve.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

__all__ = ["page_router"]

_INDEX = Path(__file__).resolve().parent / "static" / "index.html"

page_router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=1)
def _index_html() -> str:
    return _INDEX.read_text(encoding="utf-8")


@page_router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    """The ROI drawing page."""
    return HTMLResponse(_index_html(), headers={"Cache-Control": "no-cache"})
