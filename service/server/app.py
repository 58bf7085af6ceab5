"""The application factory and its lifespan: ``uvicorn service.server.app:create_app --factory``.

The lifespan owns the background tasks (dispatcher, workers, warm-up): started on entry; on exit the server stops
taking work, lets queued and running jobs finish for up to DRAIN_TIMEOUT_S, then cancels and awaits the tasks with
a bound.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..imaging.filters import build_filter
from ..imaging.networks import find_models, load_models
from ..imaging.spec import GaussianFilter
from ..imaging.torch_engine import run_batch
from ..imaging.work import Work
from .accounting import RequestAccounting
from .admission import AppState, MemoryBudget, default_budget
from .devices import DevicePool, Warmup
from .errors import ApiError, BodyTooLarge, error_response, from_http_error
from .lanes import Lane
from .metrics import Metrics
from .openapi import install_openapi
from .page import page_router
from .routes import discard_body, routers
from .security import SecurityHeaders, host_name
from .settings import Settings, SettingsError, load_settings, parse_devices
from .uploads import RECEIVED

__all__ = ["AppState", "BodyLimitMiddleware", "cpu_lanes", "create_app", "set_cpu_threads", "warmup_batch"]

log = logging.getLogger("roiconv.app")

_BATCH_PIXEL_BUDGET = 64 * 2**20  # pixels per batch: bounds the memory of one batch


class BodyLimitMiddleware:
    """413 for bodies over the limit: from Content-Length before reading, else as soon as the count passes it."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_reject=None) -> None:
        self.app, self.max_bytes, self.on_reject = app, max_bytes, on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(send, f"request body is {int(length)} bytes, more than {self.max_bytes}")
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                scope[RECEIVED] = seen  # the upload slots judge a body's speed by it
                if seen > self.max_bytes:
                    raise BodyTooLarge(f"request body is larger than {self.max_bytes} bytes")
            return message

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, watch)
        except BodyTooLarge as exc:
            if started:
                raise
            await self._reject(send, str(exc))

    async def _reject(self, send: Send, reason: str) -> None:
        if self.on_reject is not None:
            self.on_reject()
        err = ApiError(413, "body_too_large", reason, "body", headers={"Connection": "close"})
        response = error_response(err)
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


def set_cpu_threads(devices: list[str], workers: int) -> None:
    """On CPU, give each worker's torch ops half the cores / workers: decoding, encoding and HTTP use the rest.

    Small per-request ops gain nothing from more threads, and oversubscribed OpenMP threads spin and stall.
    """
    if all(d == "cpu" for d in devices):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2 // workers))


def warmup_batch() -> Warmup:
    """A tiny batch through the code paths a device needs (a masked 3x3 Gaussian on two 16x16 images)."""
    op = build_filter(GaussianFilter(name="gaussian", ksize=3), "reflect101")
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    work = Work(np.zeros((16, 16, 3), np.uint8), mask, "keep", "same")
    return op, [work, work]


def cpu_lanes(s: Settings, metrics: Metrics) -> dict[str, Lane]:
    """The CPU lanes (:mod:`.lanes`): ``cpu`` with one thread per core, ``detect`` with ROICONV_DETECT_THREADS."""
    cores = os.cpu_count() or 1
    depth, running = metrics.lane_queue_depth, metrics.lane_running
    return {
        "cpu": Lane("cpu", cores, s.max_queue, depth, running),
        "detect": Lane("detect", s.detect_threads or max(1, cores // 2), s.detect_queue, depth, running),
    }


@asynccontextmanager
async def lifespan(app: FastAPI):
    state: AppState = app.state.roiconv
    s = state.settings
    models = await asyncio.to_thread(load_models, state.model_paths, state.devices)
    pool = DevicePool(
        state.devices,
        s.workers_per_device,
        state.metrics,
        max_batch=s.max_batch,
        max_delay=s.max_batch_delay_ms / 1000,
        max_queue=s.max_queue,
        pixel_budget=_BATCH_PIXEL_BUDGET,
        models=models,
        run=run_batch,
        warmup=warmup_batch(),
        incoming=lambda: state.preparing,
    )
    state.pool = pool
    state.lanes = cpu_lanes(s, state.metrics)
    state.draining = False
    set_cpu_threads(state.devices, s.workers_per_device)
    pool.start()
    log.info("roiconv %s serving on %s", __version__, ", ".join(state.devices))
    try:
        yield
    finally:
        state.draining = True
        drained = await state.wait_idle(s.drain_timeout_s)  # admitted requests and the pool's jobs
        if not drained:
            log.warning("drain timeout (%.1f s) passed with work left; cancelling it", s.drain_timeout_s)
        await pool.stop(timeout=5.0)
        for lane in state.lanes.values():
            lane.shutdown()
        log.info("roiconv stopped")


def create_app(settings: Settings | None = None, *, registry: CollectorRegistry | None = None) -> FastAPI:
    """Build the app. ``settings`` defaults to the ``ROICONV_*`` environment; raises SettingsError when invalid."""
    settings = settings if settings is not None else load_settings()
    try:
        devices = parse_devices(settings.devices, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    except ValueError as exc:
        raise SettingsError(f"invalid settings:\n  ROICONV_DEVICES: {exc} (got {settings.devices!r})") from None
    app = FastAPI(
        title="roiconv",
        version=__version__,
        summary="Convolutions computed only inside a region of interest.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    # OpenCV refuses, before allocating, any image whose decoder-reported size passes this (read once per process)
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(settings.max_pixels))
    budget = MemoryBudget(settings.max_inflight_bytes or default_budget())
    state = AppState(settings, devices, Metrics(registry), budget, find_models(settings.models_dir))
    app.state.roiconv = state
    for router in routers:
        app.include_router(router)
    app.include_router(page_router)
    install_openapi(app)
    _install_error_handlers(app, state)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        on_reject=lambda: state.metrics.rejected.labels(reason="body_too_large").inc(),
    )
    app.add_middleware(RequestAccounting, state=state)  # counts every /convolve and /detect request once
    hosts = frozenset(host_name(h) for h in settings.allowed_hosts.split(",") if h.strip())
    app.add_middleware(SecurityHeaders, allowed=hosts)  # outermost: on every response, the Host checked first
    return app


_REJECTED = (401, 408, 413, 429, 503, 504)
_DISCARD_S = 1.0  # the longest a rejected request's body is read before answering


def _install_error_handlers(app: FastAPI, state: AppState) -> None:
    """Every error in the documented shape; rejections counted by reason; a rejected body read (bounded) first."""

    async def api_error(request: Request, err: ApiError):
        if err.status in _REJECTED:
            state.metrics.rejected.labels(reason=err.code).inc()
        if err.status in (401, 429, 503):  # answered before the body was read: drop it (bounded in size and time)
            try:
                await asyncio.wait_for(discard_body(request, state.settings.max_body_bytes), _DISCARD_S)
            except asyncio.TimeoutError:
                err.headers["Connection"] = "close"
        if err.status == 499:
            log.info("client closed the connection during the upload")
        return error_response(err)

    async def http_error(request: Request, exc: HTTPException):
        return error_response(from_http_error(exc))

    async def validation_error(request: Request, exc: RequestValidationError):
        return error_response(ApiError(422, "invalid_request", "invalid request", "body"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
