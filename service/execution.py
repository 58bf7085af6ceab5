"""The compute step behind one seam: :func:`execute` takes a prepared request to its float result.

The route calls nothing else to compute; another engine (e.g. one that runs on a thread pool instead of the device
pool) branches here.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from .devices import ComputeError, Job
from .errors import ApiError
from .pipeline import Prepared
from .state import RETRY, AppState, Ticket

__all__ = ["Outcome", "execute"]


@dataclass(frozen=True)
class Outcome:
    """A computed request: the float result (H, W, C_out) and where and how long it ran."""

    pixels: np.ndarray
    queue_s: float
    compute_s: float
    batch_size: int
    device: str


async def execute(state: AppState, prepared: Prepared, deadline: float, ticket: Ticket) -> Outcome:
    """Compute ``prepared`` on the device pool by ``deadline`` (a ``time.perf_counter()`` value).

    Hands ``ticket`` over once the job is queued. Raises ApiError: 429 when the pool's queue is full, 504 when the
    deadline passes first (the job is cancelled if it has not started), 500 when the computation failed.
    """
    job = Job(prepared.op, prepared.work, asyncio.get_running_loop().create_future())
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
        job.future.cancel()
        reason = "no result before the deadline (timeout_ms / ROICONV_REQUEST_TIMEOUT_S)"
        raise ApiError(504, "timeout", reason) from None
    except ComputeError as exc:
        raise ApiError(500, "compute_failed", str(exc)) from None
    return Outcome(result, max(0.0, job.started - job.enqueued), job.compute_s, job.batch_size, job.device)
