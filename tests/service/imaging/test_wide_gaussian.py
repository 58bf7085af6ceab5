"""Large-kernel gaussians on 8-bit images (computed only inside the ROI) against cv2.GaussianBlur on the whole image.

The oracle is the cv2 call a user would make on the whole image; the engine's result must equal it bit for bit inside
each piece (boxes, circles, ellipses, at the edges and in the middle, an image shorter than the kernel, every border
the fast path takes) and leave every other pixel as it was.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from service_support import encode

from service.imaging.pipeline import process
from service.imaging.spec import Spec
from service.imaging.wide_gaussian import wide_gaussian

FLAGS = {
    "reflect101": cv2.BORDER_REFLECT_101,
    "reflect": cv2.BORDER_REFLECT,
    "replicate": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
}
# (filter spec, OpenCV's ksize (width, height) as the spec gives it, sigma x, sigma y)
BLURS = [
    ({"name": "gaussian", "ksize": 151, "sigma": 25.0}, (151, 151), 25.0, 0.0),
    ({"name": "gaussian", "ksize": [61, 201], "sigma": 9.0, "sigma_y": 30.0}, (61, 201), 9.0, 30.0),
    ({"name": "gaussian", "ksize": 255}, (255, 255), 0.0, 0.0),  # sigma derived from the size by OpenCV
    ({"name": "gaussian", "ksize": 41, "sigma": 6.5}, (41, 41), 6.5, 0.0),
]
ROI = {
    "boxes": [[0, 0, 90, 70], [300, 110, 420, 180], [150, 40, 190, 80]],
    "circles": [[250, 30, 45]],
    "ellipses": [[60, 150, 50, 25, 30]],
}


def _image(h: int, w: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = cv2.resize(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, channels), dtype=np.uint8), (w, h))
    noise = rng.integers(-40, 41, (h, w, channels))
    return np.clip(smooth.reshape(h, w, channels) + noise, 0, 255).astype(np.uint8)  # edges and noise


def _inside(shape: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    for x0, y0, x1, y1 in ROI["boxes"]:
        canvas[y0:y1, x0:x1] = 1
    for cx, cy, r in ROI["circles"]:
        cv2.circle(canvas, (cx, cy), r, 1, -1)
    for cx, cy, ax, ay, angle in ROI["ellipses"]:
        cv2.ellipse(canvas, (cx, cy), (ax, ay), angle, 0, 360, 1, -1)
    return canvas.astype(bool)


def _run(spec: dict, img: np.ndarray) -> np.ndarray:
    body, _, _ = process(Spec.model_validate(spec), encode(img, ".npy"), None, max_pixels=10**8)
    out = np.load(__import__("io").BytesIO(body))
    return out.reshape(out.shape[0], out.shape[1], -1)


@pytest.mark.parametrize("border", list(FLAGS))
@pytest.mark.parametrize("blur", range(len(BLURS)), ids=[str(b[1]) for b in BLURS])
def test_large_gaussians_equal_opencv_on_the_whole_image(blur, border):
    spec, ksize, sx, sy = BLURS[blur]
    img = _image(180, 420, 3, seed=blur)  # shorter than the 201- and 255-row kernels
    full = cv2.GaussianBlur(img, ksize, sx, sigmaY=sy, borderType=FLAGS[border])
    inside = _inside(img.shape[:2])
    out = _run({"filter": spec, "roi": ROI, "border": border, "format": "npy"}, img)
    assert np.array_equal(out[inside], full[inside]), np.argwhere((out != full).any(axis=2) & inside)[:5].tolist()
    assert np.array_equal(out[~inside], img[~inside])


def test_alpha_is_kept_and_colour_blurred():
    img = _image(120, 200, 4, seed=7)
    out = _run({"filter": BLURS[0][0], "roi": {"boxes": [[20, 10, 180, 110]]}, "format": "npy"}, img)
    full = cv2.GaussianBlur(img[:, :, :3], (151, 151), 25.0)
    assert np.array_equal(out[10:110, 20:180, :3], full[10:110, 20:180])
    assert np.array_equal(out[:, :, 3], img[:, :, 3])
    out = _run({"filter": BLURS[0][0], "roi": {"boxes": [[0, 0, 90, 60]]}, "format": "npy"}, img)  # at the corner
    assert np.array_equal(out[:60, :90, :3], full[:60, :90])
    assert np.array_equal(out[:, :, 3], img[:, :, 3])


@pytest.mark.parametrize("rect", [(0, 0, 64, 48), (100, 70, 260, 180), (230, 150, 300, 200), (0, 0, 300, 200)])
def test_the_fast_path_runs_and_equals_opencv(rect):
    img = _image(200, 300, 3, seed=3)
    x0, y0, x1, y1 = rect
    for ksize, sigma in [((91, 91), (15.0, 15.0)), ((63, 127), (0.0, 0.0)), ((255, 201), (40.0, 33.0))]:
        got = wide_gaussian(img, rect, ksize, sigma, cv2.BORDER_REFLECT_101)
        assert got is not None, (rect, ksize)  # a face-sized piece with a large kernel takes the fast path
        full = cv2.GaussianBlur(img, ksize, sigma[0], sigmaY=sigma[1])
        assert np.array_equal(got, full[y0:y1, x0:x1]), (rect, ksize)


def test_small_kernels_and_other_depths_are_left_to_opencv():
    img = _image(100, 100, 3, seed=1)
    assert wide_gaussian(img, (10, 10, 60, 60), (9, 9), (2.0, 2.0), cv2.BORDER_REFLECT_101) is None
    assert wide_gaussian(img.astype(np.uint16), (10, 10, 60, 60), (91, 91), (15.0, 15.0), 4) is None
    wide = _image(400, 1000, 3, seed=2)  # a wide box with a mid-size kernel: OpenCV's own pass costs less
    assert wide_gaussian(wide, (0, 0, 1000, 400), (41, 41), (6.0, 6.0), cv2.BORDER_REFLECT_101) is None
