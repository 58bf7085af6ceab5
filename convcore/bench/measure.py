"""The one way the benchmarks measure: interleaved rounds, median seconds; peak extra memory; a busy CPU."""

from __future__ import annotations

import contextlib
import ctypes
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch

__all__ = ["box_mask", "busy_cpu", "measure", "peak_extra_bytes", "pixel_mask", "reuse_heap"]


def measure(
    fns: Callable[[], object] | dict[str, Callable[[], object]],
    *,
    rounds: int,
    device: torch.device | None = None,
    stat: str = "median",
    clock: str = "wall",
) -> float | dict[str, float]:
    """Median (or with ``stat="min"`` the fastest) seconds of one call of ``fns`` (a callable), or of each (a
    dict), after one warm-up call each. The minimum is the cost a call has when the machine lets it run: on a
    machine shared with other jobs it moves less than the median. ``clock="cpu"`` times the process's CPU seconds
    instead of the wall clock: with one thread, the work a call does, whatever else the machine runs.

    With a dict the calls are interleaved round by round, so on a shared, noisy machine the ratios between them hold
    even where absolute times drift. CUDA work is synchronized before and after each call.
    """
    single = callable(fns)
    table = {"fn": fns} if single else dict(fns)
    cuda = device is not None and torch.device(device).type == "cuda"
    for fn in table.values():
        fn()
    now = time.process_time if clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {k: [] for k in table}
    for _ in range(max(1, rounds)):
        for name, fn in table.items():
            if cuda:
                torch.cuda.synchronize(device)
            t0 = now()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            times[name].append(now() - t0)
    pick = min if stat == "min" else statistics.median
    medians = {k: pick(v) for k, v in times.items()}
    return medians["fn"] if single else medians


def reuse_heap(threshold: int = 2**30) -> bool:
    """Have glibc's malloc keep freed blocks below ``threshold`` bytes in the heap for the next call, instead of
    returning each large block to the OS on free and page-faulting a fresh one in on the next allocation (a
    depthwise ``F.conv2d`` of 2×16×256² spent 13 of its 16 ms CPU time in those page faults, 6,000 a call, and how
    many depended on the allocator's history: its mmap threshold moves with what was freed before). PyTorch's CUDA
    allocator caches blocks the same way. False where the C library has no ``mallopt`` (not glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(libc.mallopt(m_trim_threshold, threshold))
    except (OSError, AttributeError):
        return False


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak memory one call allocates beyond what was live before it (CUDA: allocator stats; CPU: peak RSS, after
    handing freed heap memory back so that it is not reused unseen). None where the OS does not tell."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM)
        base = _status("VmRSS")
    except OSError:
        return None
    result = fn()
    peak = _status("VmHWM")
    del result
    return max(0, peak - base)


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


@contextlib.contextmanager
def busy_cpu(k: int) -> Iterator[list[subprocess.Popen]]:
    """Keep ``k`` processes spinning (each busy on one core) for the duration of the block; stopped on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(0, k))]
    try:
        time.sleep(0.2 if procs else 0)  # let them get scheduled
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=10)


def box_mask(size: int, coverage: float, device: torch.device, boxes: int = 4) -> torch.Tensor:
    """A bool (size, size) ROI covering ``coverage`` of the image: 4 equal squares, one per quadrant and not
    tile-aligned (``boxes=4``), or one centred square (``boxes=1``)."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    if coverage >= 1:
        return mask.fill_(True).to(device)
    if boxes == 1:
        side = round(math.sqrt(coverage) * size)
        a = (size - side) // 2
        mask[a : a + side, a : a + side] = True
        return mask.to(device)
    if boxes != 4:
        raise ValueError(f"boxes must be 1 or 4, got {boxes}")
    side = round(math.sqrt(coverage * size * size / 4))
    half = size // 2
    for qy in range(2):
        for qx in range(2):
            y0 = qy * half + (half - side) // 2 + 3 * qx  # not tile-aligned on purpose
            x0 = qx * half + (half - side) // 2 + 5 * qy
            mask[y0 : y0 + side, x0 : x0 + side] = True
    return mask.to(device)


def pixel_mask(size: int, coverage: float, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Scattered single pixels covering ``coverage`` of a (size, size) image."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(size, size, generator=g) < coverage).to(device)
