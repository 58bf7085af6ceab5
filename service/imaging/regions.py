"""ROI parameters → rectangles with local masks, each shape rasterized only inside its own bounding rectangle.

The CPU engine works per rectangle, so the ROI is kept as a list of :class:`Piece`: a rectangle of the (uploaded)
image and, when the shape is not the rectangle itself, a bool mask over it. Shapes are drawn by OpenCV exactly as
on a full-size canvas (cv2.fillPoly with an integer offset, cv2.circle and cv2.ellipse with a shifted centre, all
translation invariant for integer shifts), so the union of the pieces equals the full-image rasterization.
Coordinates are full-image coordinates; ``origin`` is where the uploaded image sits in the full image.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import cv2
import numpy as np

from .spec import Roi

__all__ = [
    "MAX_DRAW_COST",
    "Piece",
    "RegionError",
    "bounding_rect",
    "build_mask",
    "build_pieces",
    "check_inside",
    "draw_cost",
    "pieces_mask",
]

MAX_DRAW_COST = 500_000_000
"""The most :func:`draw_cost` one request may have. Measured on this project's 2-core CI machine: a random 4,000-point
polygon on a 512-row image costs 9.4e8 and took 0.54 s; 2,000 points, 2.3e8 and 0.085 s."""


class RegionError(ValueError):
    """The ROI cannot be applied to this image (e.g. a mask file of another size); ``field`` names the input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Piece:
    """Rows ``y0:y1`` and columns ``x0:x1`` of the uploaded image; ``mask`` bool (y1-y0, x1-x0) or None (all)."""

    x0: int
    y0: int
    x1: int
    y1: int
    mask: np.ndarray | None = None

    @property
    def area(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)

    @property
    def positions(self) -> int:
        return self.area if self.mask is None else int(self.mask.sum())


def _clip(x0: int, y0: int, x1: int, y1: int, w: int, h: int) -> tuple[int, int, int, int] | None:
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _drawn(bbox, draw, ox: int, oy: int, w: int, h: int, full: tuple[int, int]) -> Piece | None:
    """Run ``draw(canvas, dx, dy)`` over the shape's bounding box ``bbox`` (upload coordinates) and keep the part
    inside the upload. OpenCV draws a shape's edges as lines clipped to the canvas, so the canvas is clipped where
    the full image ends (not where the upload does): a crop rasterizes exactly as the full image."""
    bx0, by0, bx1, by1 = bbox
    if _clip(bx0, by0, bx1, by1, w, h) is None:
        return None
    fx0, fy0, fx1, fy1 = _clip(bx0 + ox, by0 + oy, bx1 + ox, by1 + oy, *full)  # full-image coordinates
    x0, y0, x1, y1 = fx0 - ox, fy0 - oy, fx1 - ox, fy1 - oy
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)  # [h, w]: the bounding box within the full image
    draw(canvas, -x0, -y0)
    cx0, cy0, cx1, cy1 = _clip(x0, y0, x1, y1, w, h)
    piece = _mask_piece(canvas[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0].astype(bool))  # tight around the shape
    if piece is None:
        return None
    return Piece(piece.x0 + cx0, piece.y0 + cy0, piece.x1 + cx0, piece.y1 + cy0, piece.mask)


def _polygon(points: list[list[int]], ox: int, oy: int, w: int, h: int, full: tuple[int, int]) -> Piece | None:
    pts = np.asarray(points, np.int64) - (ox, oy)  # [P, 2] in the upload's coordinates
    bbox = (int(pts[:, 0].min()), int(pts[:, 1].min()), int(pts[:, 0].max()) + 1, int(pts[:, 1].max()) + 1)

    def draw(canvas, dx, dy):
        cv2.fillPoly(canvas, [(pts + (dx, dy)).astype(np.int32).reshape(-1, 1, 2)], 1)

    return _drawn(bbox, draw, ox, oy, w, h, full)


def _circle(cx: int, cy: int, r: int, w: int, h: int) -> Piece | None:
    rect = _clip(cx - r, cy - r, cx + r + 1, cy + r + 1, w, h)
    if rect is None:
        return None
    x0, y0, x1, y1 = rect
    near_x, near_y = min(max(cx, x0), x1 - 1), min(max(cy, y0), y1 - 1)
    if (near_x - cx) ** 2 + (near_y - cy) ** 2 > r * r:
        return None  # the circle misses the rectangle
    far_x, far_y = max(abs(cx - x0), abs(cx - (x1 - 1))), max(abs(cy - y0), abs(cy - (y1 - 1)))
    if far_x**2 + far_y**2 < (r - 1) ** 2:
        return Piece(x0, y0, x1, y1)  # the whole rectangle is inside (a pixel to spare for OpenCV's rounding)
    # cv2.circle (filled, 8-connected) fills rows between integer bounds: no clipped edge lines, any canvas will do
    return _drawn(rect, lambda c, dx, dy: cv2.circle(c, (cx + dx, cy + dy), r, 1, thickness=-1), 0, 0, w, h, (w, h))


def _ellipse_extent(ax: int, ay: int, angle: float) -> tuple[int, int]:
    """Half the width and height of a rotated ellipse's bounding box, with 2 pixels for OpenCV's rounding."""
    t = math.radians(angle)
    return math.ceil(math.hypot(ax * math.cos(t), ay * math.sin(t))) + 2, math.ceil(
        math.hypot(ax * math.sin(t), ay * math.cos(t))
    ) + 2


def _ellipse(cx: int, cy: int, ax: int, ay: int, angle: float, ox, oy, w: int, h: int, full) -> Piece | None:
    ex, ey = _ellipse_extent(ax, ay, angle)
    bbox = (cx - ex, cy - ey, cx + ex + 1, cy + ey + 1)
    draw = lambda c, dx, dy: cv2.ellipse(c, (cx + dx, cy + dy), (ax, ay), angle, 0, 360, 1, -1)  # noqa: E731
    return _drawn(bbox, draw, ox, oy, w, h, full)


def build_pieces(
    roi: Roi,
    height: int,
    width: int,
    mask_pixels: np.ndarray | None = None,
    origin: tuple[int, int] = (0, 0),
    full_size: tuple[int, int] | None = None,
    *,
    deadline: float | None = None,
) -> list[Piece]:
    """The ROI over an uploaded image (height, width) placed at ``origin`` (x, y) of the full image of
    ``full_size`` (width, height; default: the upload's).

    Boxes are [x0, y0, x1, y1] (x1, y1 exclusive), ellipses [cx, cy, axis_x, axis_y, angle_deg] as
    cv2.ellipse(thickness=-1), circles [cx, cy, r] as cv2.circle(thickness=-1), polygons as cv2.fillPoly, all in
    full-image coordinates and clipped to the upload; ``mask_pixels`` (H, W, C) counts where any channel is nonzero.
    Nothing given (and no ``invert``) is the whole image; pieces may overlap (their union is the ROI).
    Polygons whose :func:`draw_cost` passes MAX_DRAW_COST raise RegionError; ``deadline`` (a ``time.perf_counter()``
    value) is checked before each shape is drawn and raises TimeoutError once passed.
    """
    ox, oy = origin
    full = full_size or (width + ox, height + oy)
    cost = draw_cost(roi.polygons, full[1])  # fillPoly draws on the full image's rows (see _drawn), not the upload's
    if cost > MAX_DRAW_COST:
        raise RegionError(
            "spec.roi.polygons",
            f"the polygons would cost {cost:.3g} to draw on this {full[1]}-row image, more than {MAX_DRAW_COST:.3g}; "
            "use fewer points, or polygons whose edges do not cross each other many times",
        )
    if mask_pixels is not None and mask_pixels.shape[:2] != (height, width):
        raise RegionError(
            "mask",
            f"mask is {mask_pixels.shape[1]}x{mask_pixels.shape[0]} but the image is {width}x{height}; "
            "they must have the same width and height",
        )
    if not roi.given and mask_pixels is None:
        return [] if roi.invert else [Piece(0, 0, width, height)]
    full = full_size or (width + ox, height + oy)
    pieces: list[Piece | None] = []
    for x0, y0, x1, y1 in roi.boxes:
        rect = _clip(x0 - ox, y0 - oy, x1 - ox, y1 - oy, width, height)
        pieces.append(None if rect is None else Piece(*rect))
    for p in roi.polygons:
        _check(deadline)
        pieces.append(_polygon(p, ox, oy, width, height, full))
    for cx, cy, r in roi.circles:
        _check(deadline)
        pieces.append(_circle(cx - ox, cy - oy, r, width, height))
    for e in roi.ellipses:
        _check(deadline)
        pieces.append(_ellipse(e[0] - ox, e[1] - oy, e[2], e[3], e[4], ox, oy, width, height, full))
    if mask_pixels is not None:
        pieces.append(_mask_piece((mask_pixels != 0).any(axis=2)))
    found = [p for p in pieces if p is not None]
    if roi.invert:
        inverted = ~pieces_mask(found, height, width)
        return [] if not inverted.any() else [_mask_piece(inverted)]
    return found


def _shape_bounds(roi: Roi):
    """(field, [x0, y0, x1, y1]) of every shape, in full-image coordinates (x1, y1 exclusive)."""
    for i, box in enumerate(roi.boxes):
        yield f"spec.roi.boxes[{i}]", box
    for i, poly in enumerate(roi.polygons):
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
        yield f"spec.roi.polygons[{i}]", [min(xs), min(ys), max(xs) + 1, max(ys) + 1]
    for i, (cx, cy, r) in enumerate(roi.circles):
        yield f"spec.roi.circles[{i}]", [cx - r, cy - r, cx + r + 1, cy + r + 1]
    for i, (cx, cy, ax, ay, angle) in enumerate(roi.ellipses):
        ex, ey = _ellipse_extent(ax, ay, angle)
        yield f"spec.roi.ellipses[{i}]", [cx - ex, cy - ey, cx + ex + 1, cy + ey + 1]


def check_inside(roi: Roi, width: int, height: int) -> None:
    """RegionError naming the first shape wholly outside the full image (width × height): almost always a
    coordinate bug (swapped axes, another scale). :func:`build_pieces` clips shapes partly outside and drops those
    wholly outside; callers that must not lose a shape silently call this first."""
    for field, (x0, y0, x1, y1) in _shape_bounds(roi):
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise RegionError(
                field,
                f"{field.removeprefix('spec.roi.')} [{x0}, {y0}, {x1}, {y1}) lies wholly outside the {width}x{height} "
                "image (x, y from its top-left corner); check the axes' order and the scale",
            )


def build_mask(
    roi: Roi,
    height: int,
    width: int,
    mask_pixels: np.ndarray | None = None,
    *,
    deadline: float | None = None,
) -> np.ndarray | None:
    """The ROI as one bool (height, width) mask, the union of :func:`build_pieces`; None when nothing is given
    (the whole image)."""
    pieces = build_pieces(roi, height, width, mask_pixels, deadline=deadline)
    if not roi.given and mask_pixels is None and not roi.invert:
        return None
    return pieces_mask(pieces, height, width)


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


def _check(deadline: float | None) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        raise TimeoutError("the deadline passed while drawing the ROI")


def _mask_piece(mask: np.ndarray) -> Piece | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    local = mask[y0:y1, x0:x1]
    return Piece(x0, y0, x1, y1, None if local.all() else local.copy())


def pieces_mask(pieces: list[Piece], height: int, width: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The union of the pieces as a bool (height, width) mask over the rectangle at ``offset`` (x, y) of the image
    (for the engines that take a mask); the pieces must lie inside that rectangle."""
    mask = np.zeros((height, width), bool)
    ox, oy = offset
    for p in pieces:
        view = mask[p.y0 - oy : p.y1 - oy, p.x0 - ox : p.x1 - ox]
        view |= True if p.mask is None else p.mask
    return mask


def bounding_rect(pieces: list[Piece]) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) around every piece (x1, y1 exclusive), or None when there are none."""
    if not pieces:
        return None
    return min(p.x0 for p in pieces), min(p.y0 for p in pieces), max(p.x1 for p in pieces), max(p.y1 for p in pieces)
