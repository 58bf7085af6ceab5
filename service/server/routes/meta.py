"""GET /filters (the catalog), /livez, /readyz, /info, /metrics and /docs."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ... import __version__
from ...imaging.filters import catalog_schemas
from ..deps import StateDep, require_key
from ..docs import DOCS_HTML

__all__ = ["catalog_router", "docs_router", "health_router", "metrics_router"]

catalog_router = APIRouter(tags=["catalog"])
health_router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["metrics"])
docs_router = APIRouter(include_in_schema=False)


@catalog_router.get("/filters")
async def filters(state: StateDep) -> dict:
    """The filter catalog: each filter's description, JSON schema, halo rule and engines, and the served networks
    (``model:<name>``: TorchScript or torch.export programs from ROICONV_MODELS_DIR)."""
    return catalog_schemas(sorted(state.model_paths))


@health_router.get("/livez")
async def livez() -> dict:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@health_router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    """200 when every worker is warm and the server is not draining; 503 otherwise (JSON per device)."""
    devices = {d.name: d.status() for d in state.pool.devices} if state.pool else {}
    body = {"ready": state.ready, "draining": state.draining, "devices": devices}
    return JSONResponse(body, status_code=200 if state.ready else 503)


@health_router.get("/info", dependencies=[Depends(require_key)])
async def info(state: StateDep) -> dict:
    """Version, devices and the effective settings (secrets left out)."""
    import torch

    import convcore

    return {
        "version": __version__,
        "convcore": convcore.__version__,
        "torch": torch.__version__,
        "devices": state.devices,
        "models": sorted(state.model_paths),
        "settings": state.settings.public(),
        "uptime_seconds": round(time.time() - state.started_at, 3),
    }


@metrics_router.get("/metrics", response_class=Response, dependencies=[Depends(require_key)])
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics in the text exposition format."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@docs_router.get("/docs", response_class=HTMLResponse)
async def docs() -> HTMLResponse:
    """A self-contained API page (no CDN assets) rendered from /openapi.json."""
    return HTMLResponse(DOCS_HTML)
