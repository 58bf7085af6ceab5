"""The pipeline's two entries agree: pixels in / pixels out (``process_pixels``) equals bytes in / bytes out
(``process``), both equal OpenCV on the whole image inside the ROI (the oracle) and keep the rest; in place only the
ROI's rectangles are written; refusals name the field."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from service_support import decode, encode, rand_image, smooth

from service.imaging.pipeline import Refused, process, process_pixels
from service.imaging.spec import Spec

BOXES = [[5, 6, 30, 22], [40, 30, 60, 44]]


def _inside(shape: tuple[int, ...]) -> np.ndarray:
    m = np.zeros(shape[:2], bool)
    for x0, y0, x1, y1 in BOXES:
        m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize("c,dtype", [(3, np.uint8), (1, np.uint8), (4, np.uint8), (3, np.uint16), (3, np.float32)])
def test_pixels_entry_equals_bytes_entry_and_opencv(c, dtype):
    img = smooth(50, 70, c, dtype, seed=c)
    spec = Spec.model_validate({"filter": {"name": "gaussian", "ksize": 9}, "roi": {"boxes": BOXES}})
    out = process_pixels(spec, img, max_pixels=10**6)
    ext = ".npy" if dtype == np.float32 else ".png"
    body, _, _ = process(spec, encode(img, ext), max_pixels=10**6)
    np.testing.assert_array_equal(out, decode(body))
    whole = cv2.GaussianBlur(img, (9, 9), 0, borderType=cv2.BORDER_REFLECT_101)
    if c == 4:
        whole[:, :, 3] = img[:, :, 3]  # the alpha channel is kept, not filtered
    inside = _inside(img.shape)
    np.testing.assert_array_equal(out[inside], whole[inside])
    np.testing.assert_array_equal(out[~inside], img[~inside])
    assert out.shape == img.shape and out.dtype == img.dtype


def test_inplace_writes_the_roi_into_the_caller_array_and_a_copy_leaves_it():
    img = rand_image(40, 60, 3, np.uint8, seed=1)
    before = img.copy()
    spec = Spec.model_validate({"filter": {"name": "pixelate", "block": 4}, "roi": {"boxes": [[4, 4, 20, 16]]}})
    copy = process_pixels(spec, img, max_pixels=10**6)
    np.testing.assert_array_equal(img, before)
    same = process_pixels(spec, img, max_pixels=10**6, inplace=True)
    assert np.shares_memory(same, img)
    np.testing.assert_array_equal(img, copy)
    assert (img[4:16, 4:20] != before[4:16, 4:20]).any() and (img[16:] == before[16:]).all()


def test_the_torch_engine_through_the_pixels_entry_equals_the_bytes_entry():
    img = smooth(40, 50, 3, np.uint8, seed=2)
    weights = np.random.default_rng(0).normal(0, 0.2, (3, 3, 3, 3)).round(3).tolist()
    spec = Spec.model_validate({"filter": {"name": "kernel", "weights": weights}, "roi": {"boxes": BOXES[:1]}})
    out = process_pixels(spec, img, max_pixels=10**6)
    body, _, headers = process(spec, encode(img), max_pixels=10**6)
    assert headers["X-Engine"] == "torch"
    np.testing.assert_array_equal(out, decode(body))


@pytest.mark.parametrize(
    "pixels,field",
    [(np.zeros((4, 4, 2), np.uint8), "image"), (np.zeros((4, 4), np.int32), "image"), (np.zeros((2000, 600)), "image")],
)
def test_bad_pixels_are_refused_naming_the_field(pixels, field):
    spec = Spec.model_validate({"filter": {"name": "box", "ksize": 3}, "roi": {"boxes": [[0, 0, 2, 2]]}})
    with pytest.raises(Refused) as info:
        process_pixels(spec, pixels, max_pixels=10**6)
    assert info.value.status == 422 and info.value.field == field
