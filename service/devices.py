"""The device pool: workers per device pull batches; a dispatcher sends each batch to the least-loaded device.

A batch that raises fails only itself: it is split (device out-of-memory: halves; any other error: one job at a
time, so a poisoned request cannot take its batch-mates down), a single job that still fails is retried once on
another device when there is one, and then gets a clear error. Workers never die from a batch; compute runs in one
thread pool per device, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .batching import collect_batch, group_batches
from .compute import Work, run_batch
from .filters import FilterOp, build_filter
from .metrics import Metrics
from .schemas import GaussianFilter

__all__ = ["ComputeError", "Device", "DevicePool", "Job"]

log = logging.getLogger("roiconv.devices")


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

    @property
    def pixels(self) -> int:
        return self.work.pixels.shape[0] * self.work.pixels.shape[1]


@dataclass(eq=False)
class Device:
    """One device: its batch queue, workers, thread pool, load and warm state."""

    name: str
    workers: int
    models: dict = field(default_factory=dict)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    load: int = 0
    warm: bool = False
    batches: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        self.torch_device = torch.device(self.name)
        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=f"roiconv-{self.name}")

    def status(self) -> dict:
        return {"warm": self.warm, "load": self.load, "batches": self.batches, "failures": self.failures}


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class DevicePool:
    """Devices, their workers and the dispatcher that feeds them from the admission queue."""

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
        run=run_batch,
        incoming=None,
    ) -> None:
        self.devices = [Device(n, workers_per_device, (models or {}).get(n, {})) for n in names]
        self.metrics = metrics
        self.max_batch, self.max_delay, self.pixel_budget = max_batch, max_delay, pixel_budget
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max_queue)
        self.run = run  # (op, works, torch.device, models) -> list[np.ndarray]; replaceable in tests
        self.incoming = incoming  # () -> requests admitted but not queued yet (decoding); None: unknown
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
        candidates = [d for d in self.devices if d is not exclude]
        return min(candidates, key=lambda d: d.load) if candidates else None

    async def _warm(self, device: Device) -> None:
        """Run a tiny batch through every code path the device needs, then mark it warm."""
        op = build_filter(GaussianFilter(name="gaussian", ksize=3), "reflect101")
        mask = np.zeros((16, 16), bool)
        mask[4:12, 4:12] = True
        work = Work(np.zeros((16, 16, 3), np.uint8), mask, "keep", "same")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(device.executor, run_batch, op, [work, work], device.torch_device, None)
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
                device.load += len(group)
                device.queue.put_nowait(group)

    def _delay(self) -> float:
        """Wait for more only when more are on their way (being decoded right now), else dispatch at once."""
        return self.max_delay if self.incoming is None or self.incoming() > 0 else 0.0

    async def _worker(self, device: Device) -> None:
        while True:
            group: list[Job] = await device.queue.get()
            try:
                await self._process(device, group)
            except asyncio.CancelledError:
                for job in group:
                    _fail(job, ComputeError("the server is shutting down"))
                raise
            except Exception as exc:  # never let a batch stop the worker
                log.exception("worker on %s: unexpected error", device.name)
                for job in group:
                    _fail(job, ComputeError(f"internal error on {device.name}: {exc}"))
            finally:
                device.load -= len(group)
                self._slots.release()

    async def _process(self, device: Device, group: list[Job]) -> None:
        group = [j for j in group if not j.future.done()]
        if not group:
            return
        try:
            results, seconds = await self._execute(device, group)
        except Exception as exc:
            device.failures += 1
            if len(group) > 1:
                half = len(group) // 2 if _is_oom(exc) else 1
                log.warning(
                    "batch of %d failed on %s (%s); retrying in parts of %d", len(group), device.name, exc, half
                )
                for s in range(0, len(group), half):
                    await self._process(device, group[s : s + half])
                return
            await self._retry_elsewhere(device, group[0], exc)
            return
        self._deliver(device, group, results, seconds)

    async def _execute(self, device: Device, group: list[Job]) -> tuple[list[np.ndarray], float]:
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        for job in group:
            job.started = now
            self.metrics.queue_wait.observe(now - job.enqueued)
        gauge = self.metrics.inflight.labels(device=device.name)
        gauge.inc(len(group))
        try:
            works = [j.work for j in group]
            results = await loop.run_in_executor(
                device.executor, self.run, group[0].op, works, device.torch_device, device.models
            )
        finally:
            gauge.dec(len(group))
        seconds = time.perf_counter() - now
        device.batches += 1
        self.metrics.compute.labels(device=device.name).observe(seconds)
        self.metrics.batch_size.observe(len(group))
        return results, seconds

    def _deliver(self, device: Device, group: list[Job], results: list[np.ndarray], seconds: float) -> None:
        for job, result in zip(group, results):
            job.compute_s, job.batch_size, job.device = seconds, len(group), device.name
            if not job.future.done():
                job.future.set_result(result)

    async def _retry_elsewhere(self, device: Device, job: Job, exc: Exception) -> None:
        other = self.least_loaded(exclude=device)
        if other is not None and other.warm:
            log.warning("job failed on %s (%s); retrying once on %s", device.name, exc, other.name)
            other.load += 1
            try:
                results, seconds = await self._execute(other, [job])
            except Exception as exc2:
                other.failures += 1
                _fail(job, ComputeError(f"failed on {device.name} ({exc}) and on {other.name} ({exc2})"))
                return
            finally:
                other.load -= 1
            self._deliver(other, [job], results, seconds)
            return
        log.warning("job failed on %s: %s", device.name, exc)
        _fail(job, ComputeError(f"computation failed on {device.name}: {exc}"))


def _fail(job: Job, exc: Exception) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
