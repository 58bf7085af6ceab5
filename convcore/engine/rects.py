"""The one planner: a mask → in-mask positions (windows engine) and → rectangles and bands (tiles engine)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Band", "Rect", "plan_bands", "positions", "rects_from_mask"]


@dataclass(frozen=True)
class Rect:
    """An output rectangle [y0, y1) × [x0, x1) of image ``n`` of source ``src``; ``full`` when the mask covers it."""

    n: int
    y0: int
    y1: int
    x0: int
    x1: int
    full: bool
    src: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


@dataclass(frozen=True)
class Band:
    """One compute call of the tiles engine: B rectangles computed at the common size ``shape`` = (h, w).

    Each rectangle's own size is at most ``shape`` (larger only when sizes are rounded up to share calls); the
    engine keeps the top-left (rect.y1 - rect.y0) × (rect.x1 - rect.x0) part of each result.
    """

    rects: tuple[Rect, ...]
    shape: tuple[int, int]


def positions(mask: torch.Tensor | None, out_hw: Sequence[int], device: torch.device) -> tuple[torch.Tensor, ...]:
    """In-mask output positions of one image, raster order: (oy, ox), long Tensor[P] each (all of them for None)."""
    H_out, W_out = out_hw
    if mask is None:
        flat = torch.arange(H_out * W_out, device=device)
    else:
        flat = mask.reshape(-1).nonzero().squeeze(1)  # [P]
    return flat // W_out, flat % W_out


def rects_from_mask(mask: np.ndarray, tile: int) -> list[Rect]:
    """Reduce a bool mask (N, H, W) to tiles, merge active tiles into rectangles, shrink each to its mask bbox.

    Runs of active tiles in a tile row extend the rectangle above them when they span the same tile columns.
    Rectangles are disjoint and cover every True entry; ``full`` tells whether the mask covers all of a rectangle.
    """
    N, H, W = mask.shape
    Ty, Tx = math.ceil(H / tile), math.ceil(W / tile)
    padded = np.zeros((N, Ty * tile, Tx * tile), dtype=bool)
    padded[:, :H, :W] = mask
    active = padded.reshape(N, Ty, tile, Tx, tile).any(axis=(2, 4))  # [N, Ty, Tx]
    row_runs = _row_runs(active)
    rects: list[Rect] = []
    for n in range(N):
        open_runs: dict[tuple[int, int], int] = {}  # (tx0, tx1) → first tile row
        boxes: list[tuple[int, int, int, int]] = []
        for ty in range(Ty + 1):
            runs = row_runs.get((n, ty), [])
            for run in list(open_runs):
                if run not in runs:
                    boxes.append((open_runs.pop(run), ty, *run))
            for run in runs:
                open_runs.setdefault(run, ty)
        for ty0, ty1, tx0, tx1 in boxes:
            y0, y1 = ty0 * tile, min(ty1 * tile, H)
            x0, x1 = tx0 * tile, min(tx1 * tile, W)
            sub = mask[n, y0:y1, x0:x1]
            ys, xs = np.nonzero(sub.any(axis=1))[0], np.nonzero(sub.any(axis=0))[0]
            y0, y1, x0, x1 = y0 + int(ys[0]), y0 + int(ys[-1]) + 1, x0 + int(xs[0]), x0 + int(xs[-1]) + 1
            rects.append(Rect(n, y0, y1, x0, x1, bool(mask[n, y0:y1, x0:x1].all())))
    return rects


def _row_runs(active: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Runs [a, b) of True along the last axis of a bool array (N, Ty, Tx), by row (n, ty): one numpy pass."""
    edges = np.diff(np.pad(active.astype(np.int8), ((0, 0), (0, 0), (1, 1))), axis=2)  # [N, Ty, Tx + 1]
    sn, sy, sx = np.nonzero(edges == 1)  # run starts, in (n, ty, tx) order
    ex = np.nonzero(edges == -1)[2]  # run ends, in the same order: one per start
    runs: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for n, ty, a, b in zip(sn.tolist(), sy.tolist(), sx.tolist(), ex.tolist()):
        runs.setdefault((n, ty), []).append((a, b))
    return runs


def plan_bands(
    masks: Sequence[np.ndarray | None],
    out_hws: Sequence[tuple[int, int, int]],
    position_bytes: int,
    budget: int,
    tile: int,
    quantum: int = 1,
) -> list[Band]:
    """The tiles engine's calls for one or more sources (a batch tensor, or the images of a batch call).

    ``masks[s]`` is source s's bool mask (N_s, H_out, W_out) as numpy, or None for everywhere; ``out_hws[s]`` is
    (N_s, H_out, W_out). The images of a source that share a rectangle (a mask shared by the batch) form one unit;
    each unit is cut into row bands whose working set (``position_bytes`` per output position) stays under
    ``budget``; bands of equal size — rounded up to a multiple of ``quantum`` — are packed into one call up to the
    budget, a unit never split across calls.
    """
    units: list[list[Rect]] = []
    for s, (mask, (N, H_out, W_out)) in enumerate(zip(masks, out_hws)):
        if mask is None:
            groups = {(0, H_out, 0, W_out): list(range(N))}
        else:
            groups = {}
            for r in rects_from_mask(mask, tile):
                groups.setdefault((r.y0, r.y1, r.x0, r.x1), []).append(r.n)
        for (y0, y1, x0, x1), ns in groups.items():
            rows = max(1, budget // max(position_bytes * len(ns) * (x1 - x0), 1))
            for b0 in range(y0, y1, rows):
                b1 = min(b0 + rows, y1)
                units.append(
                    [Rect(n, b0, b1, x0, x1, mask is None or bool(mask[n, b0:b1, x0:x1].all()), s) for n in ns]
                )
    buckets: dict[tuple[int, int], list[list[Rect]]] = {}
    for unit in units:
        h, w = unit[0].shape
        buckets.setdefault((-(-h // quantum) * quantum, -(-w // quantum) * quantum), []).append(unit)
    bands: list[Band] = []
    for (h, w), bucket in buckets.items():
        per_call = max(1, budget // max(position_bytes * h * w, 1))
        batch: list[Rect] = []
        for unit in bucket:
            if batch and len(batch) + len(unit) > per_call:
                bands.append(Band(tuple(batch), (h, w)))
                batch = []
            batch += unit
        if batch:
            bands.append(Band(tuple(batch), (h, w)))
    return bands
