"""HTTP routes, one APIRouter per concern: convolve, catalog, health, metrics, docs."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from . import __version__
from .codec import CONTENT_TYPES
from .devices import ComputeError, Job
from .docs import DOCS_HTML
from .errors import ApiError, BodyTooLarge, error_response, from_validation
from .filters import catalog_schemas
from .pipeline import encode_result, prepare, region_headers
from .schemas import ModelFilter, Spec

__all__ = ["routers"]

log = logging.getLogger("roiconv.routes")

convolve_router = APIRouter(tags=["convolve"])
catalog_router = APIRouter(tags=["catalog"])
health_router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["metrics"])
docs_router = APIRouter(include_in_schema=False)

_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "spec"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG, TIFF, BMP, WebP"},
                        "mask": {"type": "string", "format": "binary", "description": "same size; nonzero = ROI"},
                        "spec": {"type": "string", "description": "JSON: see the Spec schema and GET /filters"},
                    },
                }
            }
        },
    },
    "responses": {
        "200": {"description": "The filtered image", "content": {t: {} for t in sorted(set(CONTENT_TYPES.values()))}},
        "401": {"description": "Missing or wrong X-API-Key"},
        "413": {"description": "Body or image too large"},
        "422": {"description": "Invalid image, mask or spec (the body names the field)"},
        "429": {"description": "Queue full; see Retry-After"},
        "503": {"description": "Draining"},
        "504": {"description": "Deadline passed"},
    },
}


@convolve_router.post("/convolve", openapi_extra=_FORM_SCHEMA, response_class=Response)
async def convolve(request: Request) -> Response:
    """Filter an image only inside its region of interest (multipart: ``image``, optional ``mask``, ``spec``)."""
    state = request.app.state.roiconv
    metrics = state.metrics
    t0 = time.perf_counter()
    label = "invalid"
    state.inflight += 1
    try:
        spec, response = await _convolve(request, state, t0)
        label = _filter_label(spec)
    except ApiError as err:
        if err.status in (401, 413, 429, 503, 504):
            metrics.rejected.labels(reason=err.code).inc()
        if err.status in (401, 429, 503):  # rejected before the body was read
            await discard_body(request, state.settings.max_body_bytes)
        response = error_response(err)
        label = _filter_label(getattr(err, "spec", None))
    except Exception as exc:  # a bug, not the input: answer with JSON, keep serving
        log.exception("unexpected error in /convolve")
        response = error_response(ApiError(500, "internal_error", f"unexpected {type(exc).__name__}: {exc}"))
    finally:
        state.inflight -= 1
    metrics.requests.labels(filter=label, status=str(response.status_code)).inc()
    metrics.request_duration.observe(time.perf_counter() - t0)
    return response


async def discard_body(request: Request, limit: int) -> None:
    """Read and drop what is left of a rejected request's body, at most ``limit`` bytes.

    Closing a connection whose unread body still sits in the socket makes the kernel reset it, and the client may
    then see the reset instead of the 429/503 it was sent; reading the rest first (no parsing) avoids that.
    """
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                return
    except RuntimeError:  # already read, or the client went away
        return


def _filter_label(spec: Spec | None) -> str:
    if spec is None:
        return "invalid"
    return "model" if isinstance(spec.filter, ModelFilter) else spec.filter.name


async def _convolve(request: Request, state, t0: float) -> tuple[Spec, Response]:
    settings, pool = state.settings, state.pool
    if state.draining or pool is None:
        raise ApiError(503, "draining", "the server is shutting down; retry on another replica", headers=_retry())
    if settings.api_key is not None:
        given = request.headers.get("x-api-key", "").encode()
        if not hmac.compare_digest(given, settings.api_key.get_secret_value().encode()):
            raise ApiError(401, "unauthorized", "missing or wrong X-API-Key header", "X-API-Key")
    if state.preparing + pool.queue.qsize() >= settings.max_queue:  # before reading the body: a prompt 429
        raise ApiError(429, "queue_full", "too many requests are waiting; retry later", headers=_retry())
    admission = _Admission(state)
    try:
        image_bytes, mask_bytes, spec_text = await _read_form(request)
        try:
            spec = Spec.model_validate_json(spec_text)
        except ValidationError as exc:
            raise from_validation(exc, "spec") from None
        try:
            return spec, await _run(state, spec, image_bytes, mask_bytes, t0, admission)
        except ApiError as err:
            err.spec = spec
            raise
    finally:
        admission.release()


class _Admission:
    """A request admitted but not queued yet (reading, decoding): counted against MAX_QUEUE with the queued ones."""

    def __init__(self, state) -> None:
        self.state = state
        state.preparing += 1
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.state.preparing -= 1


async def _read_form(request: Request) -> tuple[bytes, bytes | None, str]:
    try:
        form = await request.form(max_files=3, max_fields=4, max_part_size=1 << 20)
    except BodyTooLarge as exc:
        raise ApiError(413, "body_too_large", str(exc), "body", headers={"Connection": "close"}) from None
    except HTTPException as exc:
        raise ApiError(422, "invalid_request", f"unreadable multipart body: {exc.detail}", "body") from None
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(422, "invalid_request", "the body must be multipart/form-data with image and spec", "body")
    image, mask, spec = form.get("image"), form.get("mask"), form.get("spec")
    if not isinstance(image, UploadFile):
        raise ApiError(422, "invalid_request", "the image file is missing (multipart field 'image')", "image")
    if mask is not None and not isinstance(mask, UploadFile):
        raise ApiError(422, "invalid_request", "mask must be a file (multipart field 'mask')", "mask")
    if isinstance(spec, UploadFile):
        spec = (await spec.read()).decode("utf-8", "replace")
    if not isinstance(spec, str):
        raise ApiError(422, "invalid_request", "the spec JSON is missing (multipart field 'spec')", "spec")
    return await image.read(), (await mask.read()) if mask is not None else None, spec


async def _run(
    state, spec: Spec, image_bytes: bytes, mask_bytes: bytes | None, t0: float, admission: _Admission
) -> Response:
    settings, pool, metrics = state.settings, state.pool, state.metrics
    if isinstance(spec.filter, ModelFilter) and spec.filter.model not in state.model_paths:
        known = ", ".join(sorted(state.model_paths)) or "none"
        raise ApiError(422, "invalid_request", f"unknown model {spec.filter.model!r} (loaded: {known})", "spec.filter")
    timeout = settings.request_timeout_s
    if spec.timeout_ms is not None:
        timeout = min(timeout, spec.timeout_ms / 1000)
    deadline = t0 + timeout
    try:
        prepared = await asyncio.to_thread(prepare, spec, image_bytes, mask_bytes, settings.max_pixels)
        job = Job(prepared.op, prepared.work, asyncio.get_running_loop().create_future())
        admission.release()
        pool.submit(job)
    except ApiError:
        raise
    except asyncio.QueueFull:
        raise ApiError(429, "queue_full", "too many requests are waiting; retry later", headers=_retry()) from None
    except Exception as exc:  # an input nothing above recognised as bad: still the input's fault
        log.warning("could not prepare a request: %r", exc)
        raise ApiError(422, "invalid_request", f"could not process the input: {exc}", "image") from None
    try:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise asyncio.TimeoutError
        result = await asyncio.wait_for(asyncio.shield(job.future), remaining)
    except asyncio.TimeoutError:
        job.future.cancel()
        reason = f"no result within {timeout:.3f} s (timeout_ms / ROICONV_REQUEST_TIMEOUT_S)"
        raise ApiError(504, "timeout", reason) from None
    except ComputeError as exc:
        raise ApiError(500, "compute_failed", str(exc)) from None
    body = await asyncio.to_thread(encode_result, result, prepared)
    metrics.roi_coverage.observe(prepared.coverage)
    computed = int(round(prepared.coverage * prepared.positions))
    metrics.windows_computed.inc(computed)
    metrics.windows_skipped.inc(prepared.positions - computed)
    headers = {
        "X-ROI-Coverage": f"{prepared.coverage:.6f}",
        "X-Queue-Seconds": f"{max(0.0, job.started - job.enqueued):.6f}",
        "X-Compute-Seconds": f"{job.compute_s:.6f}",
        "X-Batch-Size": str(job.batch_size),
        "X-Device": job.device,
        **region_headers(prepared),
    }
    return Response(body, media_type=CONTENT_TYPES[prepared.format], headers=headers)


def _retry() -> dict[str, str]:
    return {"Retry-After": "1"}


@catalog_router.get("/filters")
async def filters(request: Request) -> dict:
    """The filter catalog: each filter's description and JSON schema, and the loaded TorchScript models."""
    return catalog_schemas(sorted(request.app.state.roiconv.model_paths))


@health_router.get("/livez")
async def livez() -> dict:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@health_router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 when every worker is warm and the server is not draining; 503 otherwise (JSON per device)."""
    state = request.app.state.roiconv
    devices = {d.name: d.status() for d in state.pool.devices} if state.pool else {}
    body = {"ready": state.ready, "draining": state.draining, "devices": devices}
    return JSONResponse(body, status_code=200 if state.ready else 503)


@health_router.get("/info")
async def info(request: Request) -> dict:
    """Version, devices and the effective settings (secrets left out)."""
    state = request.app.state.roiconv
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


@metrics_router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics in the text exposition format."""
    registry = request.app.state.roiconv.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@docs_router.get("/docs", response_class=HTMLResponse)
async def docs() -> HTMLResponse:
    """A self-contained API page (no CDN assets) rendered from /openapi.json."""
    return HTMLResponse(DOCS_HTML)


routers = [convolve_router, catalog_router, health_router, metrics_router, docs_router]
