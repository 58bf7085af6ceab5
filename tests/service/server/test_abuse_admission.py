"""The standing abuse suite, admission: a request answered 504 while its thread still runs keeps
its queue place and its memory until that thread stops, so timed-out work cannot pile up on the CPU pool."""

from __future__ import annotations

import asyncio
import os
import threading
import time

from service_support import encode, post, rand_image, run, running

from service.imaging import pipeline

SPEC = {"filter": {"name": "gaussian", "ksize": 3}}


def test_a_504_holds_the_place_and_memory_until_the_thread_stops(monkeypatch):
    release = threading.Event()
    real = pipeline.prepare

    def stuck(*args, **kwargs):  # a decode that outlives its deadline (as a scan bomb did)
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "prepare", stuck)

    async def main():
        async with running(max_queue=2, request_timeout_s=0.5) as (app, client):
            state = app.state.roiconv
            image = encode(rand_image(16, 16))
            late = await asyncio.gather(*(post(client, image, SPEC) for _ in range(2)))
            held = state.preparing, state.budget.used, state.busy
            refused = await post(client, image, SPEC)  # both places are still taken by running threads
            release.set()
            t = time.perf_counter()
            while state.preparing and time.perf_counter() - t < 10:
                await asyncio.sleep(0.01)
            monkeypatch.setattr(pipeline, "prepare", real)
            served = await post(client, image, SPEC)
            return late, held, refused, served, (state.preparing, state.budget.used, state.outliving)

    late, held, refused, served, after = run(main())
    assert [r.status_code for r in late] == [504, 504]
    assert all("holds its queue place" in r.json()["reason"] for r in late)
    assert held[0] == 2 and held[1] > 0 and held[2], held
    assert refused.status_code == 429, refused.text
    assert served.status_code == 200 and after == (0, 0, 0)


def test_work_whose_deadline_passed_in_the_pool_queue_never_starts(monkeypatch):
    started = []
    real = pipeline.prepare

    def slow(*args, **kwargs):
        started.append(time.perf_counter())
        time.sleep(0.6)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "prepare", slow)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # one CPU thread: the others wait in its queue

    async def main():
        async with running(request_timeout_s=0.3) as (app, client):
            rs = await asyncio.gather(*(post(client, encode(rand_image(8, 8)), SPEC) for _ in range(4)))
            await asyncio.sleep(1.0)
            return rs

    rs = run(main())
    assert [r.status_code for r in rs] == [504] * 4
    assert len(started) <= 2, started  # the ones still queued at their deadline were cancelled, not run


def test_a_504_on_the_device_pool_holds_the_memory_until_the_batch_is_done():
    release = threading.Event()

    async def main():
        async with running(request_timeout_s=0.5) as (app, client):
            state = app.state.roiconv
            real = state.pool.run

            def stuck(*args):  # a batch that outlives its deadline
                release.wait(10)
                return real(*args)

            state.pool.run = stuck
            weights = [[[[0.0, 1.0, 0.0]] * 3] * 3] * 3  # a 4-D kernel: the torch engine
            late = await post(client, encode(rand_image(16, 16)), {"filter": {"name": "kernel", "weights": weights}})
            held = state.budget.used, state.busy
            release.set()
            t = time.perf_counter()
            while state.budget.used and time.perf_counter() - t < 10:
                await asyncio.sleep(0.01)
            return late, held, (state.budget.used, state.outliving)

    late, held, after = run(main())
    assert late.status_code == 504 and "holds its memory" in late.json()["reason"], late.text
    assert held[0] > 0 and held[1] and after == (0, 0)
