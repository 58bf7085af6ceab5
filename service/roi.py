"""ROI parameters → a boolean mask over the image (OpenCV rasterization: cv2.fillPoly, cv2.circle)."""

from __future__ import annotations

import cv2
import numpy as np

from .schemas import Roi

__all__ = ["RoiError", "build_mask"]


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


def build_mask(roi: Roi, height: int, width: int, mask_pixels: np.ndarray | None = None) -> np.ndarray | None:
    """The ROI as bool (H, W): the union of boxes, polygons, circles and the mask file, inverted if asked.

    Returns None when nothing is given and ``invert`` is False (the whole image). Boxes are [x0, y0, x1, y1] with x1,
    y1 exclusive and are clipped to the image; ``mask_pixels`` (H, W, C) counts where any channel is nonzero.
    """
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
    if roi.polygons:
        cv2.fillPoly(canvas, [np.asarray(p, np.int32).reshape(-1, 1, 2) for p in roi.polygons], 1)
    for cx, cy, r in roi.circles:
        _circle(canvas, cx, cy, r)
    mask = canvas.astype(bool)
    if mask_pixels is not None:
        mask |= (mask_pixels != 0).any(axis=2)
    return ~mask if roi.invert else mask
