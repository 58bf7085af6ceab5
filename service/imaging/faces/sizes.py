"""The detector's input size policy and its memory, without torch (the server's admission reads them)."""

from __future__ import annotations

import math

__all__ = ["DEFAULT_MAX_SIDE", "DETECT_BYTES_PER_PIXEL", "detect_bytes", "network_size"]

DEFAULT_MAX_SIDE = 2048
# Peak memory of the network per pixel of its input: 250-270 B measured (ru_maxrss, 1024² and 2048² inputs, torch
# 2.13 CPU); with a margin.
DETECT_BYTES_PER_PIXEL = 320
_GRID = 32  # the network's total stride


def network_size(height: int, width: int, max_side: int | None = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """(h, w) the network runs at for a photo of ``height`` × ``width``: long side ≤ max_side, multiples of 32."""
    if height < 1 or width < 1:
        raise ValueError(f"the photo must have at least one pixel, got {height}×{width}")
    if max_side is not None and max_side < _GRID:
        raise ValueError(f"max_side must be at least {_GRID} (or None for the photo's size), got {max_side}")
    f = min(1.0, max_side / max(height, width)) if max_side is not None else 1.0
    return tuple(max(_GRID, math.ceil(max(1, round(d * f)) / _GRID) * _GRID) for d in (height, width))


def detect_bytes(width: int, height: int, max_side: int | None = DEFAULT_MAX_SIDE) -> int:
    """The detector's peak memory on a width × height photo (the whole photo: a bound for ``within`` too), with the
    resized input and the within mask."""
    h, w = network_size(height, width, max_side)
    return h * w * (DETECT_BYTES_PER_PIXEL + 3) + height * width
