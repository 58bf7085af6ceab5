"""The detector's input size policy and its memory, without torch (the server's admission reads them)."""

from __future__ import annotations

import math

__all__ = ["DEFAULT_MAX_SIDE", "DETECT_BYTES_FIXED", "DETECT_BYTES_PER_PIXEL", "detect_bytes", "network_size"]

DEFAULT_MAX_SIDE = 2048
# The peak memory one detect_faces call adds, per pixel of the network's input (the resized copy, its float32 tensor,
# the network's maps; the stem runs in row strips) and once per call (oneDNN's working buffers, the allocator).
# Measured as the rise of the peak RSS over the first call at each size in a fresh process (torch 2.13 CPU, glibc,
# the 2-core dev machine; the same call varies by up to 40% from run to run, with where the allocator puts things):
# 58-83 B per pixel at 2048x1536 (185-261 MB), 55-70 B at 2048² (230-292 MB), 95-100 MB at 1280x736. Counted with a
# margin; a test checks the bound in a subprocess.
DETECT_BYTES_PER_PIXEL = 96
DETECT_BYTES_FIXED = 64 * 2**20
_GRID = 32  # the network's total stride


def network_size(height: int, width: int, max_side: int | None = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """(h, w) the network runs at for a photo of ``height`` × ``width``: long side ≤ max_side, multiples of 32."""
    if height < 1 or width < 1:
        raise ValueError(f"the photo must have at least one pixel, got {height}×{width}")
    if max_side is not None and max_side < _GRID:
        raise ValueError(f"max_side must be at least {_GRID} (or None for the photo's size), got {max_side}")
    f = min(1.0, max_side / max(height, width)) if max_side is not None else 1.0
    return tuple(max(_GRID, math.ceil(max(1, round(d * f)) / _GRID) * _GRID) for d in (height, width))


def detect_bytes(width: int, height: int, max_side: int | None = DEFAULT_MAX_SIDE, *, within: bool = True) -> int:
    """The most memory detection adds on a width × height photo (the whole photo: a bound for ``within`` crops too):
    the network's share at its input size, and with ``within`` the region's mask and its float32 copy (5 bytes per
    pixel of the photo)."""
    h, w = network_size(height, width, max_side)
    return h * w * DETECT_BYTES_PER_PIXEL + DETECT_BYTES_FIXED + (5 * height * width if within else 0)
