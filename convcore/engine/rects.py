"""The one planner: a ROI → in-mask positions (windows engine) and → rectangles and bands (tiles engine).

A ROI comes as a dense bool mask (N, H_out, W_out) or as a :class:`convcore.RectRoi` checked into
:class:`RoiRects` (its boxes as disjoint rectangles, each with its local mask). Rectangles are planned from the
boxes directly (a box with a local mask is reduced to tiles inside the box only), positions are read from the boxes,
and the dense mask is built only where a path asks for it (:meth:`RoiRects.dense`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..checks import check_mask
from ..roi import RectRoi
from .policy import drop_full

__all__ = [
    "Band",
    "Rect",
    "RoiRects",
    "check_roi",
    "dense_roi",
    "image_positions",
    "plan_bands",
    "positions",
    "rects_from_mask",
    "same_roi",
]


@dataclass(frozen=True)
class Rect:
    """An output rectangle [y0, y1) × [x0, x1) of image ``n`` of source ``src``; ``full`` when the ROI covers it.

    ``local`` (bool Tensor[y1 - y0, x1 - x0]) is the ROI inside a partial rectangle planned from a :class:`RoiRects`
    (None when ``full``, or when the source's dense mask says it).
    """

    n: int
    y0: int
    y1: int
    x0: int
    x1: int
    full: bool
    src: int = 0
    local: torch.Tensor | None = field(default=None, compare=False, repr=False)

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


@dataclass(frozen=True, eq=False)
class RoiRects:
    """A :class:`convcore.RectRoi` checked against an output (N, H_out, W_out) and planned: its boxes as disjoint
    rectangles (``boxes``: image 0's; every image of the batch has the same), each with its local mask on
    ``device`` (``Rect.local``; None when the box is full), and ``count``, the in-ROI positions of the batch.

    Overlaps are resolved in box order: a box keeps only the positions no earlier box covers (a box left empty is
    dropped). The work is proportional to the boxes' area; :meth:`dense` builds the full-size mask for the paths
    that need one (the dense strategy, the fused kernel, a traced op).
    """

    boxes: tuple[Rect, ...]
    shape: tuple[int, int, int]
    count: int
    device: torch.device

    def positions(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """In-ROI positions of image ``n``: (oy, ox), long Tensor[P] each, box by box (raster order in a box)."""
        oys, oxs = [], []
        for r in self.boxes:
            h, w = r.shape
            if r.local is None:
                flat = torch.arange(h * w, device=self.device)  # [h*w]
            else:
                flat = r.local.reshape(-1).nonzero().squeeze(1)  # [p]
            oys.append(flat // w + r.y0)
            oxs.append(flat % w + r.x0)
        if not oys:
            empty = torch.zeros(0, dtype=torch.long, device=self.device)
            return empty, empty
        return torch.cat(oys), torch.cat(oxs)

    def dense(self) -> torch.Tensor:
        """The ROI as a bool Tensor[N, H_out, W_out] (one (H_out, W_out) mask expanded over the batch)."""
        N, H, W = self.shape
        mask = torch.zeros(H, W, dtype=torch.bool, device=self.device)  # [H_out, W_out]
        for r in self.boxes:
            view = mask[r.y0 : r.y1, r.x0 : r.x1]  # [h, w] view; boxes may overlap, their local masks do not
            if r.local is None:
                view.fill_(True)
            else:
                view |= r.local
        return mask.unsqueeze(0).expand(N, H, W)

    @classmethod
    def build(cls, roi: RectRoi, n: int, out_hw: Sequence[int], device: torch.device | str) -> RoiRects:
        """Check ``roi`` against an output (n, *out_hw) and plan its disjoint rectangles on ``device``."""
        roi.check(out_hw)
        device = torch.device(device)
        coords = np.asarray(roi.boxes, dtype=np.int64).reshape(-1, 4)  # [K, 4]: x0, y0, x1, y1
        boxes: list[Rect] = []
        per_image = 0
        for i, (x0, y0, x1, y1) in enumerate(roi.boxes):
            area = (y1 - y0) * (x1 - x0)
            if area == 0:
                continue
            local = None if roi.masks[i] is None else roi.masks[i].to(device)  # [h, w]
            earlier = np.nonzero(
                (coords[:i, 0] < x1) & (coords[:i, 2] > x0) & (coords[:i, 1] < y1) & (coords[:i, 3] > y0)
            )[0].tolist()
            if earlier:  # a copy of the box's mask (never the caller's), less what earlier boxes cover
                whole = torch.ones(y1 - y0, x1 - x0, dtype=torch.bool, device=device)  # [h, w]
                local = whole if local is None else local.clone()
                for j in earlier:
                    _subtract(local, roi.boxes[i], roi.boxes[j], roi.masks[j])
            covered = area if local is None else int(local.count_nonzero())
            if covered:
                boxes.append(Rect(0, y0, y1, x0, x1, covered == area, local=None if covered == area else local))
                per_image += covered
        return cls(tuple(boxes), (n, *(int(s) for s in out_hw)), per_image * n, device)


def _subtract(local: torch.Tensor, box: Sequence[int], other: Sequence[int], other_mask: torch.Tensor | None) -> None:
    """Clear in ``local`` (bool Tensor[h, w], the ROI inside ``box``) the positions that ``other`` covers."""
    x0, y0, _, _ = box
    ox0, oy0, _, _ = other
    ix0, iy0, ix1, iy1 = max(x0, ox0), max(y0, oy0), min(box[2], other[2]), min(box[3], other[3])
    view = local[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]  # [h', w'] view of the overlap
    if other_mask is None:
        view.fill_(False)
    else:
        view &= ~other_mask[iy0 - oy0 : iy1 - oy0, ix0 - ox0 : ix1 - ox0].to(local.device)


def check_roi(
    mask: object, n: int, out_hw: Sequence[int], device: torch.device | str | None
) -> tuple[torch.Tensor | RoiRects | None, int]:
    """The one entry of a ROI given as ``mask=``: a bool tensor (checked by :func:`convcore.checks.check_mask`) or a
    :class:`convcore.RectRoi` (planned into :class:`RoiRects`, no dense mask built).

    Returns (None if the ROI covers every position else the checked ROI, the in-ROI positions; -1 for None).
    """
    if isinstance(mask, RectRoi):
        planned = RoiRects.build(mask, n, out_hw, device if device is not None else "cpu")
        total = n * int(out_hw[0]) * int(out_hw[1])
        return (None, total) if planned.count == total else (planned, planned.count)
    return drop_full(check_mask(mask, n, out_hw, device))


def dense_roi(mask: torch.Tensor | RoiRects | None) -> torch.Tensor | None:
    """A checked ROI as a bool Tensor[N, H_out, W_out] (built from the boxes of a :class:`RoiRects`), or None."""
    return mask.dense() if isinstance(mask, RoiRects) else mask


def same_roi(a: torch.Tensor | RoiRects | None, b: torch.Tensor | RoiRects | None) -> bool:
    """Whether two checked ROIs (from :func:`check_roi`) cover the same positions."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, RoiRects) and isinstance(b, RoiRects):
        if a.shape != b.shape or len(a.boxes) != len(b.boxes):
            return False
        return all(
            r == q and (r.local is None) == (q.local is None) and (r.local is None or torch.equal(r.local, q.local))
            for r, q in zip(a.boxes, b.boxes)
        )
    dense_a, dense_b = dense_roi(a), dense_roi(b)
    return dense_a.shape == dense_b.shape and torch.equal(dense_a, dense_b)


def image_positions(
    mask: torch.Tensor | RoiRects | None, n: int, out_hw: Sequence[int], device: torch.device
) -> tuple[torch.Tensor, ...]:
    """In-ROI positions (oy, ox) of image ``n`` of a checked ROI in either form (all positions for None)."""
    if isinstance(mask, RoiRects):
        return mask.positions(n)
    return positions(None if mask is None else mask[n], out_hw, device)


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
    masks: Sequence[np.ndarray | RoiRects | None],
    out_hws: Sequence[tuple[int, int, int]],
    position_bytes: int,
    budget: int,
    tile: int,
    quantum: int = 1,
) -> list[Band]:
    """The tiles engine's calls for one or more sources (a batch tensor, or the images of a batch call).

    ``masks[s]`` is source s's bool mask (N_s, H_out, W_out) as numpy, a :class:`RoiRects`, or None for everywhere;
    ``out_hws[s]`` is (N_s, H_out, W_out). The images of a source that share a rectangle (a mask shared by the
    batch) form one unit; each unit is cut into row bands whose working set (``position_bytes`` per output
    position) stays under ``budget``; bands of equal size — rounded up to a multiple of ``quantum`` — are packed
    into one call up to the budget, a unit never split across calls.
    """
    units: list[list[Rect]] = []
    for s, (mask, (N, H_out, W_out)) in enumerate(zip(masks, out_hws)):
        for (y0, y1, x0, x1), ns, local in _shared_rects(mask, N, H_out, W_out, tile):
            rows = max(1, budget // max(position_bytes * len(ns) * (x1 - x0), 1))
            for b0 in range(y0, y1, rows):
                b1 = min(b0 + rows, y1)
                if isinstance(mask, np.ndarray):
                    units.append([Rect(n, b0, b1, x0, x1, bool(mask[n, b0:b1, x0:x1].all()), s) for n in ns])
                    continue
                part = None if local is None else local[b0 - y0 : b1 - y0]  # [rows, w] view
                full = part is None or bool(part.all())
                units.append([Rect(n, b0, b1, x0, x1, full, s, None if full else part) for n in ns])
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


def _shared_rects(mask, N: int, H: int, W: int, tile: int) -> list[tuple[tuple[int, int, int, int], list[int], object]]:
    """The rectangles of one source before they are cut into bands: ((y0, y1, x0, x1), the images that share it,
    its local mask for a :class:`RoiRects` source (None: full)). A box with a local mask is reduced to tiles inside
    the box (:func:`rects_from_mask` on the box's mask), so the work follows the boxes, not the image."""
    if mask is None:
        return [((0, H, 0, W), list(range(N)), None)]
    if isinstance(mask, RoiRects):
        found = []
        for box in mask.boxes:
            if box.local is None:
                found.append(((box.y0, box.y1, box.x0, box.x1), list(range(N)), None))
                continue
            for r in rects_from_mask(box.local.cpu().numpy()[None], tile):
                part = None if r.full else box.local[r.y0 : r.y1, r.x0 : r.x1]  # [h, w] view
                found.append(((box.y0 + r.y0, box.y0 + r.y1, box.x0 + r.x0, box.x0 + r.x1), list(range(N)), part))
        return found
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for r in rects_from_mask(mask, tile):
        groups.setdefault((r.y0, r.y1, r.x0, r.x1), []).append(r.n)
    return [(key, ns, None) for key, ns in groups.items()]
