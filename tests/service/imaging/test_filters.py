"""Every classic filter equals OpenCV within ±1 (8/16-bit) inside the ROI and keeps the original outside."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from service_support import rand_image

from service.imaging.filters import build_filter
from service.imaging.spec import Spec
from service.imaging.torch_engine import run_batch
from service.imaging.work import Work, finish

CPU = torch.device("cpu")


def _apply(spec: dict, img: np.ndarray, mask=None, outside="keep") -> np.ndarray:
    s = Spec.model_validate(spec)
    op = build_filter(s.filter, s.border)
    pixels = img if img.ndim == 3 else img[:, :, None]
    work = Work(pixels, mask, outside, s.depth)
    out = finish(run_batch(op, [work], CPU)[0], work)
    return out if img.ndim == 3 else out[:, :, 0]


def _k(a):
    return np.array(a, np.float32)


CASES = [
    ({"name": "gaussian", "ksize": 9, "sigma": 2.0}, lambda s, b: cv2.GaussianBlur(s, (9, 9), 2.0, borderType=b)),
    ({"name": "gaussian", "ksize": [3, 7]}, lambda s, b: cv2.GaussianBlur(s, (3, 7), 0, borderType=b)),
    ({"name": "gaussian", "ksize": 5, "sigma": 1.0, "sigma_y": 3.0},
     lambda s, b: cv2.GaussianBlur(s, (5, 5), 1.0, sigmaY=3.0, borderType=b)),
    ({"name": "box", "ksize": 5}, lambda s, b: cv2.blur(s, (5, 5), borderType=b)),
    ({"name": "box", "ksize": 3, "normalize": False},
     lambda s, b: cv2.boxFilter(s, -1, (3, 3), normalize=False, borderType=b)),
    ({"name": "sobel", "dx": 1, "dy": 0, "ksize": 3}, lambda s, b: cv2.Sobel(s, -1, 1, 0, ksize=3, borderType=b)),
    ({"name": "sobel", "dx": 1, "dy": 2, "ksize": 5, "scale": 0.25, "delta": 10},
     lambda s, b: cv2.Sobel(s, -1, 1, 2, ksize=5, scale=0.25, delta=10, borderType=b)),
    ({"name": "sobel", "dx": 1, "dy": 1, "ksize": 1}, lambda s, b: cv2.Sobel(s, -1, 1, 1, ksize=1, borderType=b)),
    ({"name": "scharr", "dx": 0, "dy": 1}, lambda s, b: cv2.Scharr(s, -1, 0, 1, borderType=b)),
    ({"name": "laplacian", "ksize": 1}, lambda s, b: cv2.Laplacian(s, -1, ksize=1, borderType=b)),
    ({"name": "laplacian", "ksize": 3}, lambda s, b: cv2.Laplacian(s, -1, ksize=3, borderType=b)),
    ({"name": "laplacian", "ksize": 5, "scale": 0.1},
     lambda s, b: cv2.Laplacian(s, -1, ksize=5, scale=0.1, borderType=b)),
    ({"name": "sharpen", "amount": 0.5},
     lambda s, b: cv2.filter2D(s, -1, _k([[0, -0.5, 0], [-0.5, 3, -0.5], [0, -0.5, 0]]), borderType=b)),
    ({"name": "emboss"}, lambda s, b: cv2.filter2D(s, -1, _k([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]), borderType=b)),
    ({"name": "kernel", "weights": [[0, 1, 0], [1, 2, 1], [0, 1, 3]], "delta": 5},
     lambda s, b: cv2.filter2D(s, -1, _k([[0, 1, 0], [1, 2, 1], [0, 1, 3]]), delta=5, borderType=b)),
]  # fmt: skip
BORDERS = {
    "reflect101": cv2.BORDER_REFLECT_101,
    "reflect": cv2.BORDER_REFLECT,
    "replicate": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
}


def _assert_within_one(out: np.ndarray, ref: np.ndarray, region) -> None:
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))[region]
    assert diff.max() <= 1, f"max difference {diff.max()} > 1"


@pytest.mark.parametrize("case", CASES, ids=[c[0]["name"] + str(i) for i, c in enumerate(CASES)])
@pytest.mark.parametrize("border", list(BORDERS))
def test_equals_cv2_inside_roi_and_original_outside(case, border):
    spec, ref_fn = case
    img = rand_image(40, 52, 3)
    mask = np.zeros((40, 52), bool)
    mask[:17, 30:] = True  # touches the top and right borders
    mask[25:33, 4:12] = True
    out = _apply({"filter": spec, "border": border}, img, mask)
    ref = ref_fn(img, BORDERS[border])
    _assert_within_one(out, ref, mask)
    assert np.array_equal(out[~mask], img[~mask])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 3])
def test_depths_and_channels(dtype, channels):
    img = rand_image(30, 31, channels, dtype, seed=3)
    out = _apply({"filter": {"name": "gaussian", "ksize": 7, "sigma": 1.5}}, img)
    ref = cv2.GaussianBlur(img, (7, 7), 1.5)
    assert out.dtype == dtype and out.shape == img.shape
    tol = 1e-4 if dtype == np.float32 else 1
    assert np.abs(out.astype(np.float64) - ref.astype(np.float64)).max() <= tol


def test_float32_depth_keeps_signed_gradients():
    img = rand_image(24, 24, 1, seed=5)
    out = _apply({"filter": {"name": "sobel", "dx": 1, "dy": 0}, "depth": "float32"}, img)
    ref = cv2.Sobel(img, cv2.CV_32F, 1, 0)
    assert out.dtype == np.float32 and out.min() < 0
    assert np.abs(out - ref).max() <= 1e-3


def test_wrap_border_equals_padded_cv2():
    img = rand_image(20, 26, 1, seed=2)
    out = _apply({"filter": {"name": "box", "ksize": 5}, "border": "wrap"}, img)
    padded = cv2.copyMakeBorder(img, 2, 2, 2, 2, cv2.BORDER_WRAP)
    ref = cv2.blur(padded, (5, 5))[2:-2, 2:-2]
    _assert_within_one(out, ref, np.ones(img.shape, bool))


def test_outside_zero():
    img = rand_image(20, 20, 3, seed=1)
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    out = _apply({"filter": {"name": "box", "ksize": 3}}, img, mask, outside="zero")
    assert not out[~mask].any()
    _assert_within_one(out, cv2.blur(img, (3, 3)), mask)


def test_mixing_kernel_equals_channel_sum():
    img = rand_image(20, 22, 3, seed=4)
    w = np.zeros((1, 3, 3, 3), np.float32)
    w[0, :, 1, 1] = [0.114, 0.587, 0.299]  # BGR → gray (1x1 centre weights)
    out = _apply({"filter": {"name": "kernel", "weights": w.tolist()}, "outside": "zero"}, img)
    ref = np.rint(img.astype(np.float32) @ np.array([0.114, 0.587, 0.299], np.float32))
    assert out.shape == (20, 22, 1)
    assert np.abs(out[:, :, 0].astype(np.float64) - ref).max() <= 1


def test_batched_equals_per_request():
    s = Spec.model_validate({"filter": {"name": "gaussian", "ksize": 5}})
    op = build_filter(s.filter, s.border)
    works = []
    for i, (h, w, c) in enumerate([(20, 30, 3), (33, 17, 1), (40, 40, 3), (25, 25, 1)]):
        mask = np.zeros((h, w), bool)
        mask[i : h // 2 + i, 2 : w - 3] = True
        works.append(Work(rand_image(h, w, c, seed=i).reshape(h, w, c), mask if i != 2 else None, "keep", "same"))
    together = run_batch(op, works, CPU)
    for work, result in zip(works, together):
        alone = run_batch(op, [work], CPU)[0]
        assert np.array_equal(result, alone)


MORPH_SHAPES = {"rect": cv2.MORPH_RECT, "ellipse": cv2.MORPH_ELLIPSE, "cross": cv2.MORPH_CROSS}


@pytest.mark.parametrize("shape", list(MORPH_SHAPES))
@pytest.mark.parametrize("name", ["dilate", "erode"])
@pytest.mark.parametrize("border", ["reflect101", "constant", "replicate"])
def test_morphology_equals_cv2(shape, name, border):
    img = rand_image(40, 52, 3, seed=8)
    mask = np.zeros((40, 52), bool)
    mask[3:30, 20:52] = True
    se = cv2.getStructuringElement(MORPH_SHAPES[shape], (5, 7))
    out = _apply({"filter": {"name": name, "ksize": [5, 7], "shape": shape}, "border": border}, img, mask)
    ref = getattr(cv2, name)(img, se, borderType=BORDERS[border])
    assert np.array_equal(out[mask], ref[mask])
    assert np.array_equal(out[~mask], img[~mask])


def test_adaptive_gaussian_with_equal_sigmas_is_a_gaussian_blur():
    img = rand_image(30, 34, 3, seed=6)
    out = _apply({"filter": {"name": "adaptive_gaussian", "sigma_min": 2.0, "sigma_max": 2.0, "ksize": 9}}, img)
    _assert_within_one(out, cv2.GaussianBlur(img, (9, 9), 2.0), np.ones(img.shape, bool))


def test_adaptive_gaussian_follows_intensity():
    img = rand_image(12, 14, 3, np.float32, seed=7)
    lo, hi, k = 0.5, 2.5, 7
    out = _apply({"filter": {"name": "adaptive_gaussian", "sigma_min": lo, "sigma_max": hi, "ksize": k}}, img)
    r = k // 2
    padded = cv2.copyMakeBorder(img, r, r, r, r, cv2.BORDER_REFLECT_101)
    d = np.arange(-r, r + 1, dtype=np.float64)
    ref = np.zeros(img.shape)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            sigma = lo + (hi - lo) * float(img[i, j].mean())  # naive loop: one kernel per pixel
            kern = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma**2))
            kern /= kern.sum()
            ref[i, j] = np.tensordot(kern, padded[i : i + k, j : j + k], axes=([0, 1], [0, 1]))
    assert np.abs(out - ref).max() < 1e-4
