"""The device pool on its own: least-loaded dispatch, retry on another device, OOM splitting."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import torch
from service_support import rand_image

from service.imaging.filters import build_filter
from service.imaging.spec import GaussianFilter
from service.imaging.torch_engine import run_batch
from service.imaging.work import Work
from service.server.devices import ComputeError, DevicePool, Job
from service.server.metrics import Metrics

OP = build_filter(GaussianFilter(name="gaussian", ksize=3), "reflect101")


def _pool(names, run, **kw) -> DevicePool:
    opts = {"max_batch": 8, "max_delay": 0.05, "max_queue": 64, "pixel_budget": 10**8}
    opts.update(kw)
    return DevicePool(names, 1, Metrics(), run=run, **opts)


async def _submit_all(pool: DevicePool, n: int) -> list:
    loop = asyncio.get_running_loop()
    jobs = [Job(OP, Work(rand_image(16, 16 + i), None, "keep", "same"), loop.create_future()) for i in range(n)]
    for j in jobs:
        pool.submit(j)
    results = await asyncio.gather(*[j.future for j in jobs], return_exceptions=True)
    return jobs, results


async def _started(pool: DevicePool) -> None:
    pool.start()
    while not pool.ready:
        await asyncio.sleep(0.01)


def test_least_loaded_dispatch_uses_every_device():
    def slow(*args):
        time.sleep(0.05)
        return run_batch(*args)

    async def main():
        pool = _pool(["cpu", "cpu"], slow, max_batch=2, max_delay=0.0)
        await _started(pool)
        try:
            jobs, results = await _submit_all(pool, 12)
        finally:
            await pool.stop()
        return pool, jobs, results

    pool, jobs, results = asyncio.run(main())
    assert all(isinstance(r, np.ndarray) for r in results)
    assert all(d.batches >= 2 for d in pool.devices), [d.batches for d in pool.devices]
    assert all(d.load == 0 for d in pool.devices)


def test_failed_job_is_retried_once_on_another_device():
    seen = []
    lock = threading.Lock()

    def first_call_fails(op, works, device, models):
        with lock:
            seen.append(len(works))
            if len(seen) == 1:
                raise RuntimeError("device fault")
        return run_batch(op, works, device, models)

    async def main():
        pool = _pool(["cpu", "cpu"], first_call_fails, max_batch=1)
        await _started(pool)
        try:
            jobs, results = await _submit_all(pool, 1)
        finally:
            await pool.stop()
        return pool, jobs, results

    pool, jobs, results = asyncio.run(main())
    assert isinstance(results[0], np.ndarray) and len(seen) == 2
    assert sorted(d.failures for d in pool.devices) == [0, 1]
    assert jobs[0].device == "cpu" and jobs[0].batch_size == 1


def test_single_device_failure_gives_a_clear_error():
    def always(op, works, device, models):
        raise ValueError("broken kernel")

    async def main():
        pool = _pool(["cpu"], always)
        await _started(pool)
        try:
            return await _submit_all(pool, 1)
        finally:
            await pool.stop()

    _, results = asyncio.run(main())
    assert isinstance(results[0], ComputeError) and "broken kernel" in str(results[0])


def test_out_of_memory_splits_the_batch():
    sizes = []

    def oom_above_two(op, works, device, models):
        sizes.append(len(works))
        if len(works) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return run_batch(op, works, device, models)

    async def main():
        pool = _pool(["cpu"], oom_above_two, max_batch=8, max_delay=0.2)
        await _started(pool)
        try:
            return await _submit_all(pool, 8)
        finally:
            await pool.stop()

    jobs, results = asyncio.run(main())
    assert all(isinstance(r, np.ndarray) for r in results)
    assert sizes == [8, 4, 2, 2, 4, 2, 2]  # halved until it fits
    assert all(j.batch_size <= 2 for j in jobs)


def test_stop_cancels_workers_and_fails_queued_jobs():
    gate = threading.Event()
    inside = threading.Event()

    left = threading.Event()

    def blocked(*args):
        inside.set()
        gate.wait(60)
        left.set()
        return run_batch(*args)

    async def main():
        pool = _pool(["cpu"], blocked, max_batch=1)
        await _started(pool)
        loop = asyncio.get_running_loop()
        jobs = [Job(OP, Work(rand_image(8, 8), None, "keep", "same"), loop.create_future()) for _ in range(3)]
        for j in jobs:
            pool.submit(j)
        await asyncio.to_thread(inside.wait, 60)  # a worker holds a batch
        await pool.stop(timeout=1.0)
        still_blocked = not left.is_set()
        gate.set()
        return jobs, still_blocked

    jobs, still_blocked = asyncio.run(main())
    assert still_blocked  # stop returned after its own timeout, not once the blocked batch was done
    assert all(j.future.done() for j in jobs)
    assert any(isinstance(j.future.exception(), ComputeError) for j in jobs if not j.future.cancelled())


def test_recovery_policy_is_a_plain_function():
    from service.server.devices import Recovery, recovery

    oom = torch.cuda.OutOfMemoryError("CUDA out of memory")
    assert recovery(oom, 8, retried=False, other_device=True) == Recovery("split", 4)
    assert recovery(ValueError("bad"), 8, retried=False, other_device=True) == Recovery("split", 1)
    assert recovery(ValueError("bad"), 1, retried=False, other_device=True) == Recovery("retry_elsewhere")
    assert recovery(ValueError("bad"), 1, retried=True, other_device=True) == Recovery("fail")
    assert recovery(oom, 1, retried=False, other_device=False) == Recovery("fail")


def test_reserve_counts_load_and_gives_it_back_on_error():
    async def main():
        pool = _pool(["cpu"], run_batch)
        device = pool.devices[0]
        with device.reserve(3):
            inside = device.load
        try:
            with device.reserve(2):
                raise RuntimeError("x")
        except RuntimeError:
            pass
        return inside, device.load

    assert asyncio.run(main()) == (3, 0)


def test_warm_up_goes_through_the_injected_runner():
    calls = []

    def recording(op, works, device, models):
        calls.append(len(works))
        return run_batch(op, works, device, models)

    def failing(op, works, device, models):
        raise RuntimeError("no device")

    async def main():
        warm = (OP, [Work(rand_image(8, 8), None, "keep", "same")] * 2)
        good = _pool(["cpu"], recording, warmup=warm)
        bad = _pool(["cpu"], failing, warmup=warm)
        good.start()
        bad.start()
        await asyncio.sleep(0.3)
        ready = (good.ready, bad.ready)
        await good.stop()
        await bad.stop()
        return ready

    assert asyncio.run(main()) == (True, False)
    assert calls == [2]
