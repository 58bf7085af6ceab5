"""collect_batch and group_batches on plain queues, without the server."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.server.batching import collect_batch, group_batches


def _at_once(coro):
    """The coroutine's result when it finishes without ever suspending (it waited for nothing); else AssertionError."""

    async def main():
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value
        coro.close()
        raise AssertionError("it suspended: it waited for something")

    return asyncio.run(main())


def test_takes_queued_items_up_to_max_size_without_waiting():
    q = asyncio.Queue()
    for i in range(10):
        q.put_nowait(i)
    assert _at_once(collect_batch(q, 4, max_delay=5.0)) == [0, 1, 2, 3] and q.qsize() == 6


def test_waits_at_least_max_delay_for_more():
    async def main():
        q = asyncio.Queue()
        q.put_nowait("a")
        t = time.perf_counter()
        batch = await collect_batch(q, 8, max_delay=0.05)
        return batch, time.perf_counter() - t

    batch, elapsed = asyncio.run(main())
    assert batch == ["a"] and elapsed >= 0.04  # a lower bound: a busy machine only makes the wait longer


def test_items_arriving_within_the_delay_join_the_batch():
    async def main():
        q = asyncio.Queue()

        async def producer():
            for i in range(3):
                await asyncio.sleep(0.01)
                q.put_nowait(i)

        task = asyncio.create_task(producer())
        batch = await collect_batch(q, 3, max_delay=2.0)
        await task
        return batch

    assert asyncio.run(main()) == [0, 1, 2]


def test_blocks_until_the_first_item():
    async def main():
        q = asyncio.Queue()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(collect_batch(q, 4, 0.0), 0.05)

    asyncio.run(main())


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_size"):
        asyncio.run(collect_batch(asyncio.Queue(), 0, 0.1))


def test_group_by_key_keeps_order_and_respects_budget():
    items = [("a", 5), ("b", 1), ("a", 5), ("a", 5), ("b", 1), ("a", 20)]
    groups = group_batches(items, key=lambda x: x[0], size=lambda x: x[1], budget=10)
    assert groups == [[("a", 5), ("a", 5)], [("a", 5)], [("a", 20)], [("b", 1), ("b", 1)]]


def test_delay_function_is_asked_after_the_first_item():
    asked = []
    q = asyncio.Queue()
    q.put_nowait("a")
    batch = _at_once(collect_batch(q, 8, lambda: asked.append(q.qsize()) or 0.0))
    assert batch == ["a"] and asked == [0]  # a delay of 0: returned without waiting
