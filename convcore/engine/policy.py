"""How much memory one chunk of ROI work may use, where its scratch memory comes from, and the mask tests.

One policy for every engine and op: each compute states what one window / output position costs it in working
memory, and the engine sizes its chunks (gathered windows, a batch of tile patches) to a budget — never more than
the workspace limit (:func:`set_workspace_limit`, 256 MiB by default). The budget is :func:`chunk_bytes`: cache-sized
on the CPU (a compute that streams the chunk through memory once per kernel tap, as the window ops' reductions do,
runs fastest there), larger on a GPU; a compute that blocks for the cache itself (one conv call over a band) asks
for the whole workspace (``chunk_bytes(device, blocked=True)``), so it makes fewer, larger calls.

Scratch buffers (:func:`scratch`) are kept per thread and reused from call to call, so a chunk's gather lands in
memory that is already mapped instead of page-faulting a fresh buffer every time.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = [
    "CHUNK_BYTES",
    "SERIAL_SECONDS",
    "chunk_bytes",
    "chunk_count",
    "drop_full",
    "needs_grad",
    "scratch",
    "single_thread",
    "set_workspace_limit",
    "tile_size",
    "workspace_limit",
    "zeros",
]

_DEFAULT_WORKSPACE = 256 * 2**20
_workspace_bytes = _DEFAULT_WORKSPACE
# Working set of one chunk: small enough to stay in cache and let the allocator reuse blocks, large enough that each
# op is worth its thread-pool round trip (much smaller chunks were erratic on 2 cores).
CHUNK_BYTES = {"cpu": 2**23, "cuda": 2**27}  # other device types: the "cuda" figure
# A CPU call whose work the cost model puts below this runs on one thread: every parallel region waits for its
# slowest thread, and on a CPU that another process keeps busy that thread is often descheduled, so many small
# regions cost more than the work they split (measured with ``python -m convcore.bench --busy 1``).
SERIAL_SECONDS = 0.010
_LAZY_MIN_BYTES = 1 << 20  # below this the allocator's cached blocks are cheaper than calloc
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}
_local = threading.local()


def set_workspace_limit(nbytes: int | None) -> None:
    """Set the cap on the extra memory a ROI op may use for gathered windows/tiles (default 256 MiB; None resets).

    Example:
        >>> set_workspace_limit(64 * 2**20); workspace_limit()
        67108864
        >>> set_workspace_limit(None)
    """
    global _workspace_bytes
    if nbytes is None:
        nbytes = _DEFAULT_WORKSPACE
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 2**16:
        raise ValueError(f"workspace limit must be an int of at least 64 KiB, got {nbytes!r}")
    _workspace_bytes = nbytes


def workspace_limit() -> int:
    """The current cap on extra memory, in bytes.

    Example:
        >>> workspace_limit() >= 2**16
        True
    """
    return _workspace_bytes


def chunk_bytes(device: torch.device, *, blocked: bool = False) -> int:
    """Target working set of one chunk on ``device`` (the whole workspace for a ``blocked`` compute)."""
    if blocked:
        return workspace_limit()
    return min(CHUNK_BYTES.get(torch.device(device).type, CHUNK_BYTES["cuda"]), workspace_limit())


def chunk_count(unit_bytes: int, device: torch.device) -> int:
    """How many units (windows, output positions) of ``unit_bytes`` each fit in one chunk (at least 1)."""
    return max(1, chunk_bytes(device) // max(int(unit_bytes), 1))


def drop_full(mask: torch.Tensor | None) -> tuple[torch.Tensor | None, int]:
    """The one "is the mask full" test: (None if the mask covers every position else the mask, in-mask count).

    A mask of None counts as full; the count is then -1 (unknown, everything).
    """
    if mask is None:
        return None, -1
    covered = int(mask.count_nonzero())
    return (None if covered == mask.numel() else mask), covered


def tile_size(out_hw: Sequence[int]) -> int:
    """Side of the tiles a mask is reduced to before tiles are merged into rectangles."""
    return 16 if max(out_hw) <= 256 else 32


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records an op on these tensors (else the engines may update buffers in place)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def zeros(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """A zero tensor of ``shape`` with ``like``'s dtype and device.

    A fresh ROI output is mostly zeros that are never written. ``torch.zeros`` fills every page up front, which on
    the CPU costs more than computing a small ROI; large CPU buffers come from ``calloc`` (NumPy's ``zeros``), which
    the OS zeroes lazily, page by page, so only the pages the ROI writes are ever touched.
    """
    dtype = _NUMPY_DTYPES.get(like.dtype)
    if like.device.type != "cpu" or dtype is None or int(np.prod(shape)) * like.element_size() < _LAZY_MIN_BYTES:
        return like.new_zeros(shape)
    return torch.from_numpy(np.zeros(tuple(shape), dtype=dtype))


@contextlib.contextmanager
def single_thread(enabled: bool = True) -> Iterator[None]:
    """Run the block with one intra-op thread (this thread's setting, restored on exit) when ``enabled``."""
    threads = torch.get_num_threads()
    if not enabled or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def scratch(slot: str, numel: int, like: torch.Tensor) -> torch.Tensor:
    """A reusable 1-D buffer of at least ``numel`` elements (``like``'s dtype and device), one per thread and slot.

    The same memory comes back on every call from the same thread, already mapped: callers must not hand it out
    (copy results out of it) and must not use it under autograd. The buffer grows to the largest request and
    stays at most a chunk's size when callers respect :func:`chunk_bytes`.
    """
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    # an inference tensor (made under torch.inference_mode) cannot be written outside it: one buffer per mode
    key = (slot, like.dtype, like.device, torch.is_inference_mode_enabled())
    buf = pool.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(int(numel), dtype=like.dtype, device=like.device)
        if buf.device.type == "cpu":
            buf.zero_()  # fault the pages in once, now
        pool[key] = buf
    return buf[:numel]
