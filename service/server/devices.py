"""The device pool: a dispatcher sends batches to the least-loaded device; each device's worker computes them.

Three small parts: :class:`Device` (one device: its batch queue, thread pool, ``reserve(n)`` for load, and
:meth:`Device.execute`, which runs a batch through the injected runner and records the metrics), the plain function
:func:`recovery` (what to do when a batch raised: split it in halves on out-of-memory, one job at a time otherwise,
retry a single job once on another device, then give up), and :class:`DevicePool` (the admission queue, the
dispatcher, the workers and warm-up). Workers never die from a batch; compute runs off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..imaging.filters import FilterOp
from ..imaging.work import Work
from .batching import collect_batch, group_batches
from .metrics import Metrics

__all__ = ["ComputeError", "Device", "DevicePool", "Job", "Recovery", "recovery"]

log = logging.getLogger("roiconv.devices")

Runner = Callable[[FilterOp, list[Work], str, dict | None], list[np.ndarray]]
"""(op, works, device name, models) -> one float result (H, W, C_out) per work; runs in a worker thread. The app
injects the torch engine's :func:`~service.imaging.torch_engine.run_batch`; tests inject their own."""


class ComputeError(RuntimeError):
    """A job's batch failed on every device it was tried on; the message says where and why."""


@dataclass(eq=False)
class Job:
    """One request waiting for, or being computed by, a worker. ``future`` gets the float result (H, W, C_out)."""

    op: FilterOp
    work: Work
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    compute_s: float = 0.0
    batch_size: int = 0
    device: str = ""
    finished: asyncio.Future | None = None  # done once a worker is through with the job's batch (result or not)

    @property
    def pixels(self) -> int:
        return self.work.pixels.shape[0] * self.work.pixels.shape[1]


@dataclass(eq=False)
class Device:
    """One device and its worker state: batch queue, thread pool, load (jobs reserved on it) and warm flag."""

    name: str
    workers: int
    metrics: Metrics
    models: dict = field(default_factory=dict)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    load: int = 0
    warm: bool = False
    batches: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=f"roiconv-{self.name}")

    def status(self) -> dict:
        return {"warm": self.warm, "load": self.load, "batches": self.batches, "failures": self.failures}

    @contextmanager
    def reserve(self, n: int) -> Iterator[Device]:
        """Count ``n`` jobs against this device's load while the block runs (the dispatcher picks by load)."""
        self.load += n
        try:
            yield self
        finally:
            self.load -= n

    async def execute(self, run: Runner, op: FilterOp, works: list[Work]) -> tuple[list[np.ndarray], float]:
        """Run one batch in this device's thread pool; returns the results and the seconds it took."""
        gauge = self.metrics.inflight.labels(device=self.name)
        gauge.inc(len(works))
        start = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self.executor, run, op, works, self.name, self.models)
        except Exception:
            self.failures += 1
            raise
        finally:
            gauge.dec(len(works))
        seconds = time.perf_counter() - start
        self.batches += 1
        self.metrics.compute.labels(device=self.name).observe(seconds)
        self.metrics.batch_size.observe(len(works))
        return results, seconds


@dataclass(frozen=True)
class Recovery:
    """What to do with a failed batch: split it into parts of ``part`` jobs, retry elsewhere, or fail."""

    action: str  # "split" | "retry_elsewhere" | "fail"
    part: int = 0


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a device out-of-memory error (CUDA's, or an allocator message saying so)."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()  # torch.OutOfMemoryError


def recovery(exc: BaseException, batch_size: int, retried: bool, other_device: bool) -> Recovery:
    """The policy for a batch of ``batch_size`` jobs that raised ``exc``.

    Out-of-memory: halve the batch. Any other error: one job at a time, so a poisoned request cannot take its
    batch-mates down. A single job: once more on another warm device when there is one, then fail.
    """
    if batch_size > 1:
        return Recovery("split", batch_size // 2 if is_oom(exc) else 1)
    if not retried and other_device:
        return Recovery("retry_elsewhere")
    return Recovery("fail")


Warmup = tuple[FilterOp, list[Work]]


class DevicePool:
    """Devices, their workers and the dispatcher that feeds them from the admission queue.

    ``run`` is the batch runner (the engine, injected); ``warmup`` is a small batch (op, works) run through it on
    each device before the device counts as warm (None: warm at once); ``incoming`` says how many requests are on
    their way (being decoded), so the dispatcher waits for a batch to fill only when more are coming.
    """

    def __init__(
        self,
        names: list[str],
        workers_per_device: int,
        metrics: Metrics,
        *,
        max_batch: int,
        max_delay: float,
        max_queue: int,
        pixel_budget: int,
        models: dict[str, dict] | None = None,
        run: Runner,
        warmup: Warmup | None = None,
        incoming: Callable[[], int] | None = None,
    ) -> None:
        self.devices = [Device(n, workers_per_device, metrics, (models or {}).get(n, {})) for n in names]
        self.metrics = metrics
        self.max_batch, self.max_delay, self.pixel_budget = max_batch, max_delay, pixel_budget
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max_queue)
        self.run = run
        self.warmup = warmup
        self.incoming = incoming
        self._slots = asyncio.Semaphore(len(self.devices) * workers_per_device)
        self._tasks: list[asyncio.Task] = []

    @property
    def ready(self) -> bool:
        return all(d.warm for d in self.devices)

    @property
    def busy(self) -> bool:
        return self.queue.qsize() > 0 or any(d.load for d in self.devices)

    def submit(self, job: Job) -> None:
        """Queue a job; raises asyncio.QueueFull when MAX_QUEUE jobs already wait."""
        self.queue.put_nowait(job)
        self.metrics.queue_depth.set(self.queue.qsize())

    def start(self) -> None:
        """Start the dispatcher and every worker (called by the app's lifespan)."""
        self._tasks.append(asyncio.create_task(self._dispatch(), name="roiconv-dispatcher"))
        for d in self.devices:
            self._tasks.append(asyncio.create_task(self._warm(d), name=f"roiconv-warm-{d.name}"))
            for i in range(d.workers):
                self._tasks.append(asyncio.create_task(self._worker(d), name=f"roiconv-worker-{d.name}-{i}"))

    async def drain(self, timeout: float) -> bool:
        """Wait until no job is queued or running (at most ``timeout`` seconds); True when drained."""
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.busy

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel the background tasks and wait for them (bounded), then fail whatever is left."""
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for t in pending:
                log.warning("task %s did not stop within %.1f s", t.get_name(), timeout)
        self._tasks.clear()
        while not self.queue.empty():
            _fail(self.queue.get_nowait(), ComputeError("the server is shutting down"))
        for d in self.devices:
            d.executor.shutdown(wait=False, cancel_futures=True)

    def least_loaded(self, exclude: Device | None = None) -> Device | None:
        candidates = [d for d in self.devices if d is not exclude and (exclude is None or d.warm)]
        return min(candidates, key=lambda d: d.load) if candidates else None

    async def _warm(self, device: Device) -> None:
        """Run the warm-up batch through the runner on ``device``, then mark it warm."""
        if self.warmup is not None:
            op, works = self.warmup
            try:
                await device.execute(self.run, op, works)
            except Exception:
                log.exception("warm-up failed on %s", device.name)
                return
        device.warm = True
        log.info("device %s is warm", device.name)

    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            jobs = await collect_batch(self.queue, self.max_batch, self._delay)
            self.metrics.queue_depth.set(self.queue.qsize())
            jobs = [j for j in jobs if not j.future.done()]  # timed out or cancelled while queued
            groups = group_batches(jobs, key=lambda j: j.op.key, size=lambda j: j.pixels, budget=self.pixel_budget)
            if not groups:
                self._slots.release()
            for i, group in enumerate(groups):
                if i:
                    await self._slots.acquire()
                device = self.least_loaded()
                device.load += len(group)  # released by the worker once the group is done
                device.queue.put_nowait(group)

    def _delay(self) -> float:
        """Wait for more only when more are on their way (being decoded right now), else dispatch at once."""
        return self.max_delay if self.incoming is None or self.incoming() > 0 else 0.0

    async def _worker(self, device: Device) -> None:
        while True:
            group: list[Job] = await device.queue.get()
            try:
                await self._process(device, group, retried=False)
            except asyncio.CancelledError:
                for job in group:
                    _fail(job, ComputeError("the server is shutting down"))
                raise
            except Exception:  # never let a batch stop the worker
                log.exception("worker on %s: unexpected error", device.name)
                for job in group:
                    _fail(job, ComputeError(f"internal error on {device.name}"))
            finally:
                device.load -= len(group)
                self._slots.release()
                for job in group:
                    if job.finished is not None and not job.finished.done():
                        job.finished.set_result(None)

    async def _process(self, device: Device, group: list[Job], retried: bool) -> None:
        group = [j for j in group if not j.future.done()]
        if not group:
            return
        now = time.perf_counter()
        for job in group:
            job.started = now
            self.metrics.queue_wait.observe(now - job.enqueued)
        try:
            results, seconds = await device.execute(self.run, group[0].op, [j.work for j in group])
        except Exception as exc:
            other = self.least_loaded(exclude=device)
            plan = recovery(exc, len(group), retried, other is not None)
            log.warning("batch of %d failed on %s (%s): %s", len(group), device.name, exc, plan.action)
            if plan.action == "split":
                for s in range(0, len(group), plan.part):
                    await self._process(device, group[s : s + plan.part], retried)
            elif plan.action == "retry_elsewhere":
                with other.reserve(1):
                    await self._process(other, group, retried=True)
            else:
                _fail(group[0], ComputeError(f"computation failed on {device.name}: {_short(exc)}"))
            return
        for job, result in zip(group, results):
            job.compute_s, job.batch_size, job.device = seconds, len(group), device.name
            if not job.future.done():
                job.future.set_result(result)


def _short(exc: BaseException) -> str:
    """The first line of an error message, at most 200 characters (no tracebacks or huge reprs in responses)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text[:200]


def _fail(job: Job, exc: Exception) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
