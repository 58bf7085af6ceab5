"""ROI parameters → a boolean mask over the image (OpenCV rasterization: cv2.fillPoly, cv2.circle)."""

from __future__ import annotations

import time

import cv2
import numpy as np

from .schemas import Roi

__all__ = ["MAX_DRAW_COST", "RoiError", "build_mask", "draw_cost"]

MAX_DRAW_COST = 500_000_000
"""The most :func:`draw_cost` one request may have. Measured on this project's 2-core CI machine: a random 4,000-point
polygon on a 512-row image costs 9.4e8 and took 0.54 s; 2,000 points, 2.3e8 and 0.085 s."""


class RoiError(ValueError):
    """The ROI cannot be applied to this image (e.g. a mask file of another size); ``field`` names the input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _circle(canvas: np.ndarray, cx: int, cy: int, r: int) -> None:
    """cv2.circle, with the huge cases decided without drawing (their cost grows with the radius)."""
    h, w = canvas.shape
    near_x, near_y = min(max(cx, 0), w - 1), min(max(cy, 0), h - 1)
    if (near_x - cx) ** 2 + (near_y - cy) ** 2 > r * r:
        return  # no pixel of the image is inside
    far_x, far_y = max(abs(cx), abs(cx - (w - 1))), max(abs(cy), abs(cy - (h - 1)))
    if far_x**2 + far_y**2 < (r - 1) ** 2:
        canvas[:] = 1  # the whole image is inside, with a pixel to spare for OpenCV's polygon approximation
        return
    cv2.circle(canvas, (cx, cy), r, 1, thickness=-1)


def draw_cost(polygons: list[list[list[int]]], height: int) -> int:
    """An estimate of the work of filling ``polygons`` on an image ``height`` rows high.

    cv2.fillPoly keeps, for every image row, the sorted list of the edges that cross it; its time grows with the
    edge-rows (each edge's row span, clipped to the image) times the edges active on a row. An outline traced around
    a shape has about 2 active edges per row and costs little; a self-crossing polygon whose edges span the image
    has hundreds and costs the most.
    """
    total = 0
    for poly in polygons:
        ys = np.asarray(poly, np.int64)[:, 1]  # [V]
        lo, hi = np.minimum(ys, np.roll(ys, -1)), np.maximum(ys, np.roll(ys, -1))  # each edge's row span
        edge_rows = int((np.clip(hi, -1, height) - np.clip(lo, -1, height)).sum()) + len(poly)
        rows = max(1, min(int(ys.max()), height) - max(int(ys.min()), 0))
        total += edge_rows * max(1, edge_rows // rows)
    return total


def build_mask(
    roi: Roi,
    height: int,
    width: int,
    mask_pixels: np.ndarray | None = None,
    *,
    deadline: float | None = None,
) -> np.ndarray | None:
    """The ROI as bool (H, W): the union of boxes, polygons, circles and the mask file, inverted if asked.

    Returns None when nothing is given and ``invert`` is False (the whole image). Boxes are [x0, y0, x1, y1] with x1,
    y1 exclusive and are clipped to the image; ``mask_pixels`` (H, W, C) counts where any channel is nonzero.
    Polygons whose :func:`draw_cost` passes MAX_DRAW_COST raise RoiError; ``deadline`` (a ``time.perf_counter()``
    value) is checked before each shape is drawn and raises TimeoutError once passed.
    """
    cost = draw_cost(roi.polygons, height)
    if cost > MAX_DRAW_COST:
        raise RoiError(
            "spec.roi.polygons",
            f"the polygons would cost {cost:.3g} to draw on this {height}-row image, more than {MAX_DRAW_COST:.3g}; "
            "use fewer points, or polygons whose edges do not cross each other many times",
        )
    if mask_pixels is not None and mask_pixels.shape[:2] != (height, width):
        raise RoiError(
            "mask",
            f"mask is {mask_pixels.shape[1]}x{mask_pixels.shape[0]} but the image is {width}x{height}; "
            "they must have the same width and height",
        )
    if not roi.given and mask_pixels is None:
        return np.zeros((height, width), bool) if roi.invert else None
    canvas = np.zeros((height, width), np.uint8)  # [H, W]
    for x0, y0, x1, y1 in roi.boxes:
        canvas[max(y0, 0) : max(min(y1, height), 0), max(x0, 0) : max(min(x1, width), 0)] = 1
    for poly in roi.polygons:
        _check(deadline)
        cv2.fillPoly(canvas, [np.asarray(poly, np.int32).reshape(-1, 1, 2)], 1)  # one at a time: their union
    for cx, cy, r in roi.circles:
        _check(deadline)
        _circle(canvas, cx, cy, r)
    mask = canvas.astype(bool)
    if mask_pixels is not None:
        mask |= (mask_pixels != 0).any(axis=2)
    return ~mask if roi.invert else mask


def _check(deadline: float | None) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        raise TimeoutError("the deadline passed while drawing the ROI")
