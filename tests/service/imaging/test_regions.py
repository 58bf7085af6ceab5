"""ROI shapes drawn in their own bounding rectangles equal the same shapes drawn by cv2 on a full canvas."""

from __future__ import annotations

import cv2
import numpy as np

from service.imaging.regions import build_pieces, pieces_mask
from service.imaging.spec import Roi


def test_random_shapes_equal_full_canvas_rasterization():
    rng = np.random.default_rng(0)
    h, w = 90, 130
    for _ in range(150):
        ellipses = [
            [
                int(rng.integers(-20, w + 20)),
                int(rng.integers(-20, h + 20)),
                int(rng.integers(0, 60)),
                int(rng.integers(0, 60)),
                float(rng.uniform(-360, 360)),
            ]
            for _ in range(2)
        ]
        circles = [[int(rng.integers(-30, w + 30)), int(rng.integers(-30, h + 30)), int(rng.integers(0, 50))]]
        poly = rng.integers(-30, 160, (int(rng.integers(3, 7)), 2)).tolist()
        ox, oy = int(rng.integers(0, 40)), int(rng.integers(0, 30))  # the upload's place in a larger image
        roi = Roi(ellipses=ellipses, circles=circles, polygons=[poly])
        canvas = np.zeros((h + oy, w + ox), np.uint8)  # the full image
        for cx, cy, ax, ay, a in ellipses:
            cv2.ellipse(canvas, (cx, cy), (ax, ay), a, 0, 360, 1, -1)
        cv2.circle(canvas, tuple(circles[0][:2]), circles[0][2], 1, -1)
        cv2.fillPoly(canvas, [np.int32(poly).reshape(-1, 1, 2)], 1)
        pieces = build_pieces(roi, h, w, origin=(ox, oy))
        assert np.array_equal(pieces_mask(pieces, h, w), canvas[oy:, ox:].astype(bool)), (ellipses, circles, poly)
        for p in pieces:  # tight: every piece's border rows and columns hold a ROI pixel
            m = np.ones((p.y1 - p.y0, p.x1 - p.x0), bool) if p.mask is None else p.mask
            assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()


def test_invert_and_empty():
    assert build_pieces(Roi(invert=True), 10, 10) == []
    assert build_pieces(Roi(boxes=[[20, 20, 30, 30]]), 10, 10) == []
    (whole,) = build_pieces(Roi(), 10, 12)
    assert (whole.x0, whole.y0, whole.x1, whole.y1, whole.mask) == (0, 0, 12, 10, None)
    (inv,) = build_pieces(Roi(boxes=[[0, 0, 12, 4]], invert=True), 10, 12)
    assert (inv.x0, inv.y0, inv.x1, inv.y1) == (0, 4, 12, 10) and inv.mask is None
