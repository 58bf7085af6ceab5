"""Strong by default: "auto" sizes per ROI piece, a bare filter name, unknown fields with the closest
valid one, shapes wholly outside the image. Oracle: OpenCV on the whole image with the size written out from the
documented rule (docs/anonymization.md), pasted inside each piece."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from service_support import decode, encode, post, rand_image, run, running


def odd_near(value: float) -> int:
    """The odd number within 1 of ``value``, at least 3, at most 255 (the documented rule for ksize "auto")."""
    return min(max(2 * math.floor(value / 2) + 1, 3), 255)


def cells(img: np.ndarray, block: int) -> np.ndarray:
    """Every pixel the rounded (half to even) mean of its block×block cell anchored at (0, 0): explicit loops."""
    out = np.empty_like(img)
    for y in range(0, img.shape[0], block):
        for x in range(0, img.shape[1], block):
            cell = img[y : y + block, x : x + block].astype(np.float64)
            out[y : y + block, x : x + block] = np.rint(cell.mean(axis=(0, 1)))
    return out


def whole_image(name: str, img: np.ndarray, side: int) -> np.ndarray:
    """OpenCV on the whole image with the auto size of a piece whose longer side is ``side``."""
    if name == "gaussian":
        k = odd_near(0.75 * side)
        return cv2.GaussianBlur(img, (k, k), side / 8, borderType=cv2.BORDER_REFLECT_101)
    if name == "box":
        k = odd_near(0.5 * side)
        return cv2.blur(img, (k, k), borderType=cv2.BORDER_REFLECT_101)
    if name == "median":
        return cv2.medianBlur(img, odd_near(0.5 * side))
    return cells(img, max(2, round(side / 6)))


BOXES = [[4, 6, 40, 30], [50, 20, 130, 90], [-30, 70, 20, 100]]  # longer sides 36, 80 and 50 (clipped at x = 0)


@pytest.mark.parametrize("name", ["gaussian", "box", "median", "pixelate"])
def test_auto_is_the_default_and_sizes_each_piece(name):
    yy, xx = np.mgrid[0:100, 0:140]
    board = np.where((yy // 12 + xx // 12) % 2 == 0, 230, 20).astype(np.uint8)  # edges that show a blur's size
    img = np.dstack([board, np.roll(board, 5, axis=1), rand_image(100, 140, 1, seed=4).reshape(100, 140)])

    async def main():
        async with running() as (_, client):
            return await post(client, encode(img), {"filter": {"name": name}, "roi": {"boxes": BOXES}})

    r = run(main())
    assert r.status_code == 200, r.text
    got = decode(r.content)
    want = img.copy()
    for x0, y0, x1, y1 in BOXES:
        x0 = max(x0, 0)
        want[y0:y1, x0:x1] = whole_image(name, img, max(x1 - x0, y1 - y0))[y0:y1, x0:x1]
    tolerance = 1 if name in ("gaussian", "box") else 0  # OpenCV's fixed-point rounding on a window vs the whole
    assert np.abs(got.astype(int) - want).max() <= tolerance


def test_explicit_sizes_keep_working_and_a_bare_name_is_a_filter():
    img = rand_image(40, 50, seed=5)

    async def main():
        async with running() as (_, client):
            roi = {"boxes": [[5, 5, 30, 30]]}
            explicit = await post(client, encode(img), {"filter": {"name": "gaussian", "ksize": 7}, "roi": roi})
            bare = await post(client, encode(img), {"filter": "gaussian", "roi": roi})
            named = await post(client, encode(img), {"filter": {"name": "gaussian"}, "roi": roi})
            return explicit, bare, named

    explicit, bare, named = run(main())
    want = img.copy()
    want[5:30, 5:30] = cv2.GaussianBlur(img, (7, 7), 0)[5:30, 5:30]
    assert np.abs(decode(explicit.content).astype(int) - want).max() <= 1
    assert bare.status_code == 200 and bare.content == named.content


@pytest.mark.parametrize(
    ("roi", "field"),
    [
        ({"boxes": [[10, 10, 20, 20], [60, 5, 90, 20]]}, "spec.roi.boxes[1]"),  # x and y swapped: x0 >= width
        ({"boxes": [[-40, 0, -1, 10]]}, "spec.roi.boxes[0]"),
        ({"circles": [[25, 200, 10]]}, "spec.roi.circles[0]"),
        ({"polygons": [[[100, 100], [120, 100], [110, 130]]]}, "spec.roi.polygons[0]"),
        ({"ellipses": [[-30, 10, 20, 5, 0]]}, "spec.roi.ellipses[0]"),
    ],
)
def test_a_shape_wholly_outside_the_image_is_a_422_naming_it(roi, field):
    async def main():
        async with running() as (_, client):
            return await post(client, encode(rand_image(30, 50)), {"filter": "box", "roi": roi})

    r = run(main())
    assert r.status_code == 422 and r.json()["field"] == field and "outside" in r.json()["reason"]


def test_a_shape_partly_outside_is_clipped():
    img = rand_image(30, 50, seed=6)

    async def main():
        async with running() as (_, client):
            spec = {"filter": {"name": "box", "ksize": 5}, "roi": {"boxes": [[40, -10, 80, 12]]}}
            return await post(client, encode(img), spec)

    r = run(main())
    want = img.copy()
    want[0:12, 40:50] = cv2.blur(img, (5, 5))[0:12, 40:50]
    assert r.status_code == 200 and np.abs(decode(r.content).astype(int) - want).max() <= 1


def test_auto_median_on_16_bit_names_the_size():
    img = rand_image(40, 40, dtype=np.uint16)

    async def main():
        async with running() as (_, client):
            return await post(client, encode(img), {"filter": "median", "roi": {"boxes": [[0, 0, 30, 30]]}})

    r = run(main())
    assert r.status_code == 422 and r.json()["field"] == "spec.filter.ksize" and "auto gives 15" in r.json()["reason"]
