"""The memory budget: each request's estimated peak bytes is admitted against ``ROICONV_MAX_INFLIGHT_BYTES``.

:func:`estimate_peak` says, from the image header alone (before decoding), how many bytes a request will hold at
its peak — the decoded pixels, their float32 copy, the output, the dense convolution's working memory and the encoded
result — and how many row bands the convolution should run in so that its working memory stays bounded.
:class:`MemoryBudget` lets requests in while their sum fits; the others wait (until their deadline), and a request
that could never fit is refused.

The dense factor was measured on this project's CI machine (x86-64, torch 2.13 CPU): ``F.conv2d`` depthwise on a
3000×3000×3 float32 image peaked at about 12 times the image's float32 size, for kernel sizes 3 to 31.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from . import codec
from .filters import build_filter
from .spec import Spec

__all__ = ["MemoryBudget", "NeverFits", "Peak", "default_budget", "estimate_peak", "memory_limit", "request_peak"]

DENSE_FACTOR = 12  # peak extra bytes of a dense conv, in units of the float32 image
BAND_WORKSPACE = 256 * 2**20  # the most working memory one band of a banded conv may need
_BANDED_KINDS = ("conv", "mix")


class NeverFits(Exception):
    """The request's estimated peak is larger than the whole budget."""


@dataclass(frozen=True)
class Peak:
    """An estimate: ``bytes`` at the request's peak, and ``bands`` (1: one dense call; more: row bands)."""

    bytes: int
    bands: int = 1


def estimate_peak(width: int, height: int, channels: int, itemsize: int, kind: str, budget: int) -> Peak:
    """The peak bytes of a request on a ``width`` × ``height`` image (``channels`` of ``itemsize`` bytes).

    Decoded pixels count twice (the decoder's buffer and the normalized copy) and the encoded output once more; the
    float32 input and output once each; the convolution's working memory ``DENSE_FACTOR`` float32 images, or for
    "conv"/"mix" kinds, when that alone would pass ``BAND_WORKSPACE`` or the budget, a share of it per row band.
    """
    pixels = width * height
    decoded = pixels * max(channels, 1) * itemsize
    plane = pixels * 4 * max(min(channels, 3), 1)  # float32 color channels
    fixed = 3 * decoded + 2 * plane + pixels  # + the bool mask
    work = DENSE_FACTOR * plane
    bands = 1
    if kind in _BANDED_KINDS and (work > BAND_WORKSPACE or fixed + work > budget):
        bands = min(max(1, height // 8), -(-work // BAND_WORKSPACE))
        work = -(-work // bands)
    return Peak(fixed + work, bands)


def _depth(fmt: str, data: bytes) -> tuple[int, int]:
    """(channels, bytes per channel) at most, from the header where that is cheap, else the format's widest."""
    if fmt == "png" and len(data) > 25:
        return 4, 2 if data[24] == 16 else 1
    if fmt in ("jpeg", "webp", "bmp"):
        return (3 if fmt == "jpeg" else 4), 1
    return 4, 4  # tiff, npy: up to float32


def request_peak(spec: Spec, image: bytes, mask: bytes | None, budget: int, max_pixels: int) -> Peak:
    """The estimated peak of a request from its spec and the image header (no decoding).

    Unreadable headers and images over MAX_PIXELS get the smallest estimate: decoding refuses them right after.
    """
    try:
        fmt = codec.sniff_format(image)
        width, height = codec.header_size(image, fmt)
    except codec.DecodeError:
        return Peak(len(image))
    if width * height > max_pixels:
        return Peak(len(image))
    channels, itemsize = _depth(fmt, image)
    kind = build_filter(spec.filter, spec.border).kind
    peak = estimate_peak(width, height, channels, itemsize, kind, budget)
    extra = 0 if mask is None else _mask_peak(mask, width * height)
    return Peak(peak.bytes + extra + len(image), peak.bands)


def _mask_peak(mask: bytes, pixels: int) -> int:
    """The mask decoded and normalized: the image's ``pixels`` at the mask's depth (a mask whose header declares
    another size is refused before anything is decoded; one with an unreadable header, by its decoder)."""
    try:
        fmt = codec.sniff_format(mask)
    except codec.DecodeError:
        return len(mask)
    channels, itemsize = _depth(fmt, mask)
    return 2 * pixels * channels * itemsize


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
