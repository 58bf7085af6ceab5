"""Lanes: CPU work of one kind on threads of its own, so that long work cannot hold short work hostage.

A :class:`Lane` is a thread pool with a bound on the requests waiting for one of its threads. The server has two:
``cpu`` (decoding, planning and the OpenCV filters of ordinary requests: one thread per core) and ``detect`` (face
detection, by /detect and by a /convolve whose ROI detects: ROICONV_DETECT_THREADS threads, at most
ROICONV_DETECT_QUEUE waiting). A small request waits behind small requests only; detections wait behind detections.

:meth:`Lane.run` is the one way a request's work runs on a lane: submitted with its deadline, answered 504 when the
deadline passes first, and, when its thread has already started, the request's queue place and memory (its
:class:`~service.server.admission.Ticket`) stay held until that thread stops.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from .errors import RETRY, ApiError

if TYPE_CHECKING:
    from prometheus_client import Gauge

    from .admission import Ticket

__all__ = ["Lane"]

log = logging.getLogger("roiconv.lanes")

T = TypeVar("T")


class Lane:
    """``threads`` threads named after the lane; at most ``queue`` requests wait for one (more get 429).

    ``depth`` (a gauge labelled with the lane) follows the requests waiting for a thread; ``running`` those on one.
    """

    def __init__(self, name: str, threads: int, queue: int, depth: Gauge, running: Gauge) -> None:
        if threads < 1 or queue < 1:
            raise ValueError(f"lane {name!r} needs at least one thread and one queue place, got {threads}, {queue}")
        self.name, self.threads, self.queue = name, threads, queue
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"roiconv-{name}")
        self.waiting = 0  # submitted, not yet on a thread
        self.active = 0  # on a thread now
        self._lock = threading.Lock()
        self._depth = depth.labels(lane=name)
        self._running = running.labels(lane=name)
        self._moved(0, 0)

    @property
    def full(self) -> bool:
        """As many requests wait for a thread as the lane may hold."""
        return self.waiting >= self.queue

    def check(self) -> None:
        """429 when the lane's queue is full (called before the request takes memory)."""
        if self.full:
            reason = f"too many requests are waiting for the {self.name} lane ({self.queue}); retry later"
            raise ApiError(429, "queue_full", reason, headers=RETRY)

    def submit(self, call: Callable[[], T], deadline: float) -> Future:
        """Queue ``call`` on the lane; it is skipped (504, at no cost) if ``deadline`` passes before a thread is
        free; :meth:`run` cancels it when it has not started by the deadline."""
        self._moved(+1, 0)
        future = self.executor.submit(self._on_thread, call, deadline)
        future.add_done_callback(self._left_queue_if_cancelled)
        return future

    async def run(self, call: Callable[[], T], deadline: float, ticket: Ticket | None = None) -> T:
        """``call()`` on a lane thread by ``deadline`` (a ``time.perf_counter()`` value), else 504. A call already
        started keeps ``ticket``'s place and memory held until its thread stops."""
        work = self.submit(call, deadline)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(work), max(0.0, deadline - time.perf_counter()))
        except asyncio.TimeoutError:
            reason = "no result before the deadline (timeout_ms / ROICONV_REQUEST_TIMEOUT_S)"
            if not work.cancel():  # started: it stops at its next check of the deadline, or when done
                if ticket is not None:
                    ticket.outlived_by(work)
                reason += "; the work already started holds its queue place and memory until it stops"
            raise ApiError(504, "timeout", reason) from None

    def shutdown(self) -> None:
        """Cancel what still waits; running threads finish on their own."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _on_thread(self, call: Callable[[], T], deadline: float) -> T:
        self._moved(-1, +1)
        try:
            if time.perf_counter() > deadline:
                raise ApiError(
                    504, "timeout", f"the deadline passed while waiting for a thread of the {self.name} lane"
                )
            return call()
        finally:
            self._moved(0, -1)

    def _moved(self, waiting: int, active: int) -> None:
        """Counts change on lane threads and on the event loop: under one lock."""
        with self._lock:
            self.waiting += waiting
            self.active += active
            self._depth.set(self.waiting)
            self._running.set(self.active)

    def _left_queue_if_cancelled(self, future: Future) -> None:
        if future.cancelled():  # never reached a thread
            self._moved(-1, 0)
