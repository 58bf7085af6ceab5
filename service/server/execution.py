"""The compute step behind one seam: :func:`run` takes a request's bytes to its encoded result.

On a CPU lane (:mod:`.lanes`: ``cpu``, one thread per core, or ``detect`` for a request whose ROI detects faces)
the pipeline decodes and plans the request (:func:`service.imaging.pipeline.prepare`); the OpenCV engine (the
classic filters on a CPU server) also filters and encodes in that same hop, no batching. The torch engine (convcore:
4-D kernels, the adaptive gaussian, models, and every filter on a CUDA server) is then batched on the device pool
(:func:`execute`) and encoded on a thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass

import numpy as np

from ..imaging import pipeline
from ..imaging.pipeline import Prepared, Refused
from ..imaging.spec import Spec
from .admission import AppState, Ticket
from .devices import ComputeError, Job
from .errors import RETRY, ApiError

__all__ = ["Outcome", "execute", "run"]

log = logging.getLogger("roiconv.execution")


@dataclass(frozen=True)
class Outcome:
    """A computed request: the float result (H, W, C_out) and where and how long it ran."""

    pixels: np.ndarray | None  # None once encoded (the OpenCV engine encodes in its hop)
    queue_s: float
    compute_s: float
    batch_size: int
    device: str


async def run(
    state: AppState, spec: Spec, image: bytes, mask: bytes | None, deadline: float, bands: int, ticket: Ticket
) -> tuple[Prepared, Outcome, bytes]:
    """Prepare the request on its CPU lane (the OpenCV engine also filters and encodes there), else compute it on
    the device pool and encode; all by ``deadline`` (504 past it)."""
    s = state.settings
    call = functools.partial(_on_cpu, spec, image, mask, s.max_pixels, deadline, bands, state.prefer_torch)
    gauge = state.metrics.inflight.labels(device="cpu")
    gauge.inc()
    try:  # detection runs on its own lane: a small request never waits behind one
        prepared, body, compute_s = await state.lane_for(spec).run(call, deadline, ticket)
    finally:
        gauge.dec()
    if body is not None:
        state.metrics.compute.labels(device="cpu").observe(compute_s)
        state.metrics.batch_size.observe(1)
        state.metrics.queue_wait.observe(0.0)
        return prepared, Outcome(None, 0.0, compute_s, 1, "cpu"), body
    outcome = await execute(state, prepared, deadline, ticket)
    try:
        return prepared, outcome, await asyncio.to_thread(pipeline.encode_result, outcome.pixels, prepared)
    except Refused as exc:  # a float result that is not finite
        raise _api_error(exc) from None


def _api_error(exc: Refused) -> ApiError:
    return ApiError(exc.status, exc.code, exc.reason, exc.field)


def _on_cpu(
    spec: Spec, image: bytes, mask: bytes | None, max_pixels: int, deadline: float, bands: int, prefer_torch: bool
) -> tuple[Prepared, bytes | None, float]:
    """Decode and plan (an input nothing recognised as bad is still the input's: 422), then, for the OpenCV engine,
    filter and encode in the same thread (:func:`.pipeline.run_and_encode`; a failure there is the server's: 500).
    Returns (prepared, body or None, seconds spent filtering and encoding: a JPEG's block edit does both at once)."""
    try:
        prepared = pipeline.prepare(
            spec, image, mask, max_pixels, prefer_torch=prefer_torch, deadline=deadline, bands=bands
        )
    except Refused as exc:
        raise _api_error(exc) from None
    except MemoryError:
        raise ApiError(413, "too_much_memory", "the image needs more memory than this server has", "image") from None
    except Exception as exc:
        log.warning("could not prepare a request: %s", type(exc).__name__)
        raise ApiError(422, "invalid_request", "could not decode or process the image", "image") from None
    if prepared.engine != "opencv":
        return prepared, None, 0.0
    if time.perf_counter() > deadline:  # a checkpoint: the filter is not started for an answer already sent
        raise ApiError(504, "timeout", "the deadline passed before filtering (timeout_ms / ROICONV_REQUEST_TIMEOUT_S)")
    t = time.perf_counter()
    try:
        body = pipeline.run_and_encode(prepared)
    except Refused as exc:  # a float result that is not finite
        raise _api_error(exc) from None
    return prepared, body, time.perf_counter() - t


async def execute(state: AppState, prepared: Prepared, deadline: float, ticket: Ticket) -> Outcome:
    """Compute ``prepared`` on the device pool by ``deadline`` (a ``time.perf_counter()`` value).

    Hands ``ticket`` over once the job is queued. Raises ApiError: 429 when the pool's queue is full, 504 when the
    deadline passes first (the job is cancelled if it has not started), 500 when the computation failed.
    """
    loop = asyncio.get_running_loop()
    job = Job(prepared.op, prepared.work, loop.create_future(), finished=loop.create_future())
    try:
        state.pool.submit(job)
    except asyncio.QueueFull:
        raise ApiError(429, "queue_full", "too many requests are waiting; retry later", headers=RETRY) from None
    ticket.queued()
    try:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise asyncio.TimeoutError
        result = await asyncio.wait_for(asyncio.shield(job.future), remaining)
    except asyncio.TimeoutError:
        job.future.cancel()  # a job still queued is dropped; one being computed holds its place until it is done
        reason = "no result before the deadline (timeout_ms / ROICONV_REQUEST_TIMEOUT_S)"
        if job.started:
            ticket.outlived_by(job.finished)
            reason += "; the computation already started holds its memory until it stops"
        raise ApiError(504, "timeout", reason) from None
    except ComputeError as exc:
        raise ApiError(500, "compute_failed", str(exc)) from None
    return Outcome(result, max(0.0, job.started - job.enqueued), job.compute_s, job.batch_size, job.device)
