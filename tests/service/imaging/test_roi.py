"""ROI parameters → mask, against OpenCV's own rasterization."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.imaging.regions import RegionError as RoiError
from service.imaging.regions import build_mask
from service.imaging.spec import Roi


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
    with pytest.raises(RoiError, match="same width and height") as info:
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
