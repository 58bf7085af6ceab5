"""Dynamic batching, as pure functions over a plain ``asyncio.Queue`` (testable without the server).

:func:`collect_batch` waits for one item, then takes more until ``max_size`` items or ``max_delay`` seconds;
:func:`group_batches` splits what was collected into batches that share filter weights (``key``) and fit a pixel
budget. Unlike shape-keyed batchers, images of different sizes and ROIs share a batch: ``roi_conv2d_batch`` gathers
the in-ROI windows of the images whose plan picks "windows" into one matmul per workspace chunk; the others run as
tiles (one conv per group of equal-size rectangles) or dense.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

__all__ = ["collect_batch", "group_batches"]

T = TypeVar("T")


async def collect_batch(queue: asyncio.Queue[T], max_size: int, max_delay: float | Callable[[], float]) -> list[T]:
    """Wait for the first item, then collect up to ``max_size`` items within ``max_delay`` seconds of it.

    Items already queued are taken at once, without waiting; the wait only applies while the queue is empty.
    ``max_delay`` may be a function, called once the first item is in (e.g. 0 when nothing else is on its way).
    """
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    if not callable(max_delay) and max_delay < 0:
        raise ValueError(f"max_delay must be >= 0 seconds, got {max_delay}")
    batch = [await queue.get()]
    if callable(max_delay):
        max_delay = max(0.0, float(max_delay()))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_delay
    while len(batch) < max_size:
        try:
            batch.append(queue.get_nowait())
            continue
        except asyncio.QueueEmpty:
            pass
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), remaining))
        except asyncio.TimeoutError:
            break
    return batch


def group_batches(
    items: Iterable[T], key: Callable[[T], Hashable], size: Callable[[T], int], budget: int
) -> list[list[T]]:
    """Split ``items`` into batches of equal ``key`` (order kept) whose summed ``size`` stays within ``budget``.

    An item larger than the budget on its own forms a batch by itself.
    """
    groups: dict[Hashable, list[list[T]]] = {}
    totals: dict[Hashable, int] = {}
    for item in items:
        k, s = key(item), size(item)
        batches = groups.setdefault(k, [[]])
        if batches[-1] and totals[k] + s > budget:
            batches.append([])
            totals[k] = 0
        batches[-1].append(item)
        totals[k] = totals.get(k, 0) + s
    return [b for batches in groups.values() for b in batches]
