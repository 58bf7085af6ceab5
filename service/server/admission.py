"""The application state (:class:`AppState`) and admission as async context managers.

A /convolve request passes three gates: ``uploading()`` (not draining, fewer than MAX_UPLOADS bodies being read),
then, once its body has arrived, ``admit(peak_bytes, timeout)`` (fewer than MAX_QUEUE requests waiting for a worker,
and its estimated peak memory fits ``MAX_INFLIGHT_BYTES``; otherwise it waits). Only requests past the first gate
count as work the drain waits for: a request answered 503 while draining is not.

:class:`MemoryBudget` is the memory gate: requests whose estimated peaks (:mod:`service.imaging.peak`) sum within
``total`` are in; the others wait (until their deadline), and one that could never fit is refused (:class:`NeverFits`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..imaging.spec import Spec
from .devices import DevicePool
from .errors import RETRY, ApiError
from .lanes import Lane
from .metrics import Metrics
from .settings import Settings
from .uploads import Upload, UploadSlots

__all__ = [
    "AppState",
    "MemoryBudget",
    "NeverFits",
    "Record",
    "Ticket",
    "default_budget",
    "memory_limit",
]


@dataclass(eq=False)
class Record:
    """One /convolve request as the accounting middleware sees it: its filter label and whether it was admitted."""

    started: float = field(default_factory=time.perf_counter)
    filter: str = "invalid"
    admitted: bool = False


@dataclass(eq=False)
class Ticket:
    """An admitted request's place in the queue: counted against MAX_QUEUE until :meth:`queued` hands it over.

    When the request is answered while its thread still runs (a 504), :meth:`outlived_by` keeps the place and the
    memory held until that thread really finishes.
    """

    state: AppState
    held: bool = True
    release: Callable[[], None] | None = None
    work: Future | asyncio.Future | None = None

    def queued(self) -> None:
        """The job is in the pool's queue now (or running elsewhere): stop counting it as being prepared."""
        if self.held:
            self.held = False
            self.state.preparing -= 1

    def outlived_by(self, work: Future | asyncio.Future) -> None:
        """The answer leaves before ``work`` (a CPU thread's or a device job's) is done: hold everything until it
        is."""
        self.work = work

    def finish(self) -> None:
        """Give back the place and the memory now, or when the work that outlived the answer is done."""
        if self.work is None or self.work.done():
            self._give_back()
            return
        loop = asyncio.get_running_loop()
        self.state.outliving += 1
        self.work.add_done_callback(lambda _: loop.call_soon_threadsafe(self._give_back_late))

    def _give_back_late(self) -> None:
        self.state.outliving -= 1
        self._give_back()

    def _give_back(self) -> None:
        self.queued()
        if self.release is not None:
            self.release()
            self.release = None


@dataclass(eq=False)
class AppState:
    """Everything the routes need: settings, metrics, the pool, the memory budget and the drain state."""

    settings: Settings
    devices: list[str]
    metrics: Metrics
    budget: MemoryBudget
    model_paths: dict[str, Path] = field(default_factory=dict)
    pool: DevicePool | None = None
    lanes: dict[str, Lane] = field(default_factory=dict)  # "cpu" and "detect": see :mod:`.lanes`
    draining: bool = False
    slots: UploadSlots | None = None
    preparing: int = 0
    outliving: int = 0  # requests answered (504) whose thread still runs: their place and memory stay held
    requests: set[Record] = field(default_factory=set)
    started_at: float = field(default_factory=time.time)

    @property
    def prefer_torch(self) -> bool:
        """A server with a CUDA device runs the classic filters on convcore (batched there), not on OpenCV."""
        return any(d.startswith("cuda") for d in self.devices)

    def lane_for(self, spec: Spec | None) -> Lane:
        """The lane a request's CPU work runs on: ``detect`` for /detect (``spec`` None) and for a spec whose ROI
        detects faces, ``cpu`` for the rest."""
        detects = spec is None or spec.roi.detect is not None
        return self.lanes["detect" if detects else "cpu"]

    @property
    def ready(self) -> bool:
        return self.pool is not None and self.pool.ready and not self.draining

    @property
    def busy(self) -> bool:
        """Admitted work remains: a request past the first gate, or a job queued or running."""
        pool_busy = self.pool is not None and self.pool.busy
        return any(r.admitted for r in self.requests) or pool_busy or self.outliving > 0

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no admitted work remains (at most ``timeout`` seconds); True when idle."""
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.busy

    @contextmanager
    def uploading(self, record: Record, scope: dict) -> Iterator[Upload]:
        """The first gate: 503 while draining, 429 when MAX_UPLOADS bodies are being read already at honest speed
        (the slowest upload below uploads.MIN_RATE loses its slot to this one: see :mod:`.uploads`)."""
        if self.draining or self.pool is None:
            raise ApiError(503, "draining", "the server is shutting down; retry on another replica", headers=RETRY)
        if self.slots is None:
            self.slots = UploadSlots(self.settings.max_uploads)
        upload = self.slots.take(scope)
        if upload is None:
            raise ApiError(429, "uploads_full", "too many uploads in progress; retry later", headers=RETRY)
        record.admitted = True
        try:
            yield upload
        finally:
            self.slots.give_back(upload)

    @property
    def uploads(self) -> int:
        """Request bodies being received now."""
        return 0 if self.slots is None else len(self.slots)

    @asynccontextmanager
    async def admit(self, peak_bytes: int, timeout: float, lane: Lane | None = None) -> AsyncIterator[Ticket]:
        """The second gate, once the body has arrived: a queue place (else 429; also when ``lane``'s queue is full)
        and ``peak_bytes`` of the budget (waiting up to ``timeout`` seconds, then 504; 413 when it could never fit)."""
        if lane is not None:
            lane.check()
        if self.preparing + self.pool.queue.qsize() >= self.settings.max_queue:
            raise ApiError(429, "queue_full", "too many requests are waiting; retry later", headers=RETRY)
        self.preparing += 1
        ticket = Ticket(self)
        try:
            try:
                await self.budget.acquire(peak_bytes, timeout)
            except NeverFits as exc:
                raise ApiError(413, "too_much_memory", f"this request {exc}", "image") from None
            except asyncio.TimeoutError:
                raise ApiError(504, "timeout", "the deadline passed while waiting for memory") from None
            ticket.release = functools.partial(self.budget.release, peak_bytes)
            yield ticket
        finally:
            ticket.finish()


class NeverFits(Exception):
    """The request's estimated peak is larger than the whole budget."""


class MemoryBudget:
    """Bytes admitted at once, at most ``total``: ``await acquire(n, timeout)`` ... ``release(n)``."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiters: list[asyncio.Future] = []

    async def acquire(self, n: int, timeout: float) -> None:
        """Wait until ``n`` more bytes fit; NeverFits when ``n`` > total, TimeoutError after ``timeout`` s."""
        if n > self.total:
            raise NeverFits(f"needs about {_mib(n)} MiB, more than ROICONV_MAX_INFLIGHT_BYTES ({_mib(self.total)} MiB)")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.used + n > self.total:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            finally:
                self._waiters.remove(waiter)
        self.used += n

    def release(self, n: int) -> None:
        """Give ``n`` bytes back and wake the waiting requests (each checks whether it fits now)."""
        self.used -= n
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


def _mib(n: int) -> int:
    return -(-n // 2**20)


def memory_limit(root: Path = Path("/")) -> int | None:
    """The container's memory limit (cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``), else the
    machine's total memory (``MemTotal``), in bytes; None when neither can be read."""
    limits = []
    for name in ("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            limits.append(int(text))
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return min(limits) if limits else None


def default_budget(fraction: float = 0.5) -> int:
    """``fraction`` of :func:`memory_limit` (of 8 GiB when it cannot be read)."""
    return int((memory_limit() or 8 * 2**30) * fraction)
