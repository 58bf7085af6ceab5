"""ROI parameters → mask, and ROI shapes drawn in their own bounding rectangles, against OpenCV's own rasterization
on a full canvas."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.imaging.regions import RegionError, build_mask, build_pieces, pieces_mask
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


def test_nothing_given_is_the_whole_image():
    assert build_mask(Roi(), 10, 20) is None
    assert not build_mask(Roi(invert=True), 10, 20).any()


def test_boxes_are_exclusive_and_clipped():
    m = build_mask(Roi(boxes=[[2, 3, 5, 7], [-4, 8, 100, 100]]), 10, 20)
    ref = np.zeros((10, 20), bool)
    ref[3:7, 2:5] = True
    ref[8:10, 0:20] = True
    assert np.array_equal(m, ref)


def test_box_entirely_outside_is_empty():
    assert not build_mask(Roi(boxes=[[30, 30, 40, 40]]), 10, 20).any()


def test_polygons_and_circles_match_cv2():
    poly = [[1, 1], [15, 2], [8, 9]]
    m = build_mask(Roi(polygons=[poly], circles=[[15, 5, 3]]), 10, 20)
    ref = np.zeros((10, 20), np.uint8)
    cv2.fillPoly(ref, [np.array(poly, np.int32)], 1)
    cv2.circle(ref, (15, 5), 3, 1, -1)
    assert np.array_equal(m, ref.astype(bool))


def test_mask_file_union_and_invert():
    mask_pixels = np.zeros((10, 20, 1), np.uint8)
    mask_pixels[0, 0] = 7
    m = build_mask(Roi(boxes=[[5, 5, 6, 6]], invert=True), 10, 20, mask_pixels)
    assert not m[0, 0] and not m[5, 5] and m.sum() == 200 - 2


def test_mask_size_mismatch_names_the_mask():
    with pytest.raises(RegionError, match="same width and height") as info:
        build_mask(Roi(), 10, 20, np.zeros((10, 21, 1), np.uint8))
    assert info.value.field == "mask"


@pytest.mark.parametrize("circle", [[10, 10, 3], [100, -20, 25], [-5, -5, 8], [50, 40, 100], [30, 20, 36], [0, 0, 0]])
def test_circles_match_cv2_including_the_shortcuts(circle):
    ref = np.zeros((40, 60), np.uint8)
    cv2.circle(ref, tuple(circle[:2]), circle[2], 1, -1)
    assert np.array_equal(build_mask(Roi(circles=[circle]), 40, 60), ref.astype(bool))


def test_huge_circles_are_cheap():
    m = build_mask(Roi(circles=[[0, 0, 1 << 20]] * 255 + [[1 << 20, 1 << 20, 10]]), 500, 500)
    assert m.all()
