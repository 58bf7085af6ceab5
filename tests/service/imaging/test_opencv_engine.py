"""The CPU engine against OpenCV on the whole image: bit for bit inside the ROI, the input (or zero) outside.

The oracle is the cv2 call a user would make on the whole image, the ROI drawn on a full canvas by cv2
(fillPoly, circle, ellipse) or sliced for boxes; ``wrap`` (refused by most cv2 filters) is cv2.copyMakeBorder with
BORDER_WRAP then the filter (bit for bit where OpenCV sums in fixed point; within float rounding where it sums in
float, as the padded oracle lays the row out differently). Every filter × border × depth runs over every ROI kind
and both outside modes.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from service_support import encode

from service.imaging.pipeline import process
from service.imaging.spec import Spec

H, W = 61, 150  # wider than the 64-column alignment of float windows
FLAGS = {
    "reflect101": cv2.BORDER_REFLECT_101,
    "reflect": cv2.BORDER_REFLECT,
    "replicate": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
    "wrap": cv2.BORDER_WRAP,
}
K2 = np.array([[0.1, -0.3, 0.2, 0.05, 0.0], [0.4, 1.0, -0.6, 0.3, 0.1], [0.0, 0.2, 0.5, -0.1, 0.25]], np.float32)


K31 = (np.random.default_rng(11).random((31, 31), dtype=np.float32) - 0.3) / 300  # a large 2-D kernel


def _se(shape: int, k: tuple[int, int]) -> np.ndarray:
    return cv2.getStructuringElement(shape, k)


# name → (filter spec, oracle(img, ddepth, border flag), halo)
FILTERS = {
    "gaussian7": ({"name": "gaussian", "ksize": 7}, lambda s, d, b: cv2.GaussianBlur(s, (7, 7), 0, borderType=b)),
    "gaussian5x9": (
        {"name": "gaussian", "ksize": [5, 9], "sigma": 2.0, "sigma_y": 3.0},
        lambda s, d, b: cv2.GaussianBlur(s, (5, 9), 2.0, sigmaY=3.0, borderType=b),
    ),
    "box5": ({"name": "box", "ksize": 5}, lambda s, d, b: cv2.boxFilter(s, d, (5, 5), borderType=b)),
    "box7x3": (
        {"name": "box", "ksize": [7, 3], "normalize": False},
        lambda s, d, b: cv2.boxFilter(s, d, (7, 3), normalize=False, borderType=b),
    ),
    "sobel": ({"name": "sobel", "dx": 1, "dy": 0}, lambda s, d, b: cv2.Sobel(s, d, 1, 0, ksize=3, borderType=b)),
    "sobel5": (
        {"name": "sobel", "dx": 1, "dy": 1, "ksize": 5, "scale": 0.5, "delta": 3},
        lambda s, d, b: cv2.Sobel(s, d, 1, 1, ksize=5, scale=0.5, delta=3, borderType=b),
    ),
    "scharr": ({"name": "scharr", "dx": 0, "dy": 1}, lambda s, d, b: cv2.Scharr(s, d, 0, 1, borderType=b)),
    "laplacian1": ({"name": "laplacian", "ksize": 1}, lambda s, d, b: cv2.Laplacian(s, d, ksize=1, borderType=b)),
    "laplacian5": ({"name": "laplacian", "ksize": 5}, lambda s, d, b: cv2.Laplacian(s, d, ksize=5, borderType=b)),
    "sharpen": (
        {"name": "sharpen", "amount": 0.7},
        lambda s, d, b: cv2.filter2D(s, d, np.float32([[0, -0.7, 0], [-0.7, 3.8, -0.7], [0, -0.7, 0]]), borderType=b),
    ),
    "emboss": (
        {"name": "emboss"},
        lambda s, d, b: cv2.filter2D(s, d, np.float32([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]), borderType=b),
    ),
    "kernel": (
        {"name": "kernel", "weights": K2.tolist(), "delta": 1.5},
        lambda s, d, b: cv2.filter2D(s, d, K2, delta=1.5, borderType=b),
    ),
    "dilate": (
        {"name": "dilate", "ksize": 5, "shape": "ellipse"},
        lambda s, d, b: cv2.dilate(s, _se(cv2.MORPH_ELLIPSE, (5, 5)), **_morph_border(b)),
    ),
    "erode": (
        {"name": "erode", "ksize": [3, 5], "shape": "cross"},
        lambda s, d, b: cv2.erode(s, _se(cv2.MORPH_CROSS, (3, 5)), **_morph_border(b)),
    ),
    "median5": ({"name": "median", "ksize": 5}, lambda s, d, b: cv2.medianBlur(s, 5)),
}
FIXED_POINT = ("gaussian7", "gaussian5x9", "box5", "box7x3", "dilate", "erode", "median5")
HALO = 4  # the largest halo above (gaussian 5x9): the wrap oracle's padding


def _morph_border(flag: int) -> dict:
    return {} if flag == cv2.BORDER_CONSTANT else {"borderType": flag}  # constant: cv2's default (never wins)


def _oracle(name: str, img: np.ndarray, border: str, float_out: bool) -> np.ndarray:
    fn = FILTERS[name][1]
    src = img
    if float_out and name.startswith("gaussian"):
        src = img.astype(np.float32)  # GaussianBlur keeps the depth: the float result is a float input's
    d = cv2.CV_32F if float_out else -1
    if border == "wrap" and not name.startswith("median"):
        padded = cv2.copyMakeBorder(src, HALO, HALO, HALO, HALO, cv2.BORDER_WRAP)
        out = fn(padded, d, cv2.BORDER_REFLECT_101)[HALO:-HALO, HALO:-HALO]
    else:
        out = fn(src, d, FLAGS[border])
    if float_out and out.dtype != np.float32:
        out = out.astype(np.float32)  # median / morphology: computed in the input's depth
    return out.reshape(img.shape[0], img.shape[1], -1)


def _image(dtype, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.random((H, W, channels), dtype=np.float32) * 4 - 1
    top = np.iinfo(dtype).max
    return rng.integers(0, top + 1, (H, W, channels), dtype=dtype)


def _mask_file(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blob = cv2.GaussianBlur(rng.random((H, W), dtype=np.float32), (0, 0), 4)
    return ((blob > np.quantile(blob, 0.8)) * 255).astype(np.uint8)


def _rois() -> list[tuple[str, dict, bytes | None, np.ndarray]]:
    """(kind, roi spec, mask file, expected bool mask drawn independently on a full canvas)."""
    out = []
    boxes = [[0, 0, 20, 15], [W - 17, H - 9, W + 5, H + 3], [60, -4, 75, 12], [-3, 30, 9, 41], [70, 52, 110, H]]
    m = np.zeros((H, W), bool)
    for x0, y0, x1, y1 in boxes:
        m[max(y0, 0) : y1, max(x0, 0) : x1] = True
    out.append(("boxes at every edge", {"boxes": boxes}, None, m))
    ellipses = [[30, 20, 18, 9, 30.0], [W - 5, H - 3, 12, 20, -15.5], [100, 30, 0, 6, 0.0]]
    canvas = np.zeros((H, W), np.uint8)
    for cx, cy, ax, ay, a in ellipses:
        cv2.ellipse(canvas, (cx, cy), (ax, ay), a, 0, 360, 1, -1)
    out.append(("ellipses", {"ellipses": ellipses}, None, canvas.astype(bool)))
    poly = [[5, 5], [40, 12], [20, 58], [-5, 30]]
    canvas = np.zeros((H, W), np.uint8)
    cv2.fillPoly(canvas, [np.int32(poly).reshape(-1, 1, 2)], 1)
    cv2.circle(canvas, (W - 30, 10), 14, 1, -1)
    out.append(("polygon + circle", {"polygons": [poly], "circles": [[W - 30, 10, 14]]}, None, canvas.astype(bool)))
    mask = _mask_file()
    out.append(("mask file", {}, encode(mask, ".npy"), mask != 0))
    inv = np.ones((H, W), bool)
    inv[10:40, 20:90] = False
    out.append(("inverted box", {"boxes": [[20, 10, 90, 40]], "invert": True}, None, inv))
    return out


ROIS = _rois()


def _run(spec: dict, img: np.ndarray, mask: bytes | None = None):
    body, ctype, headers = process(Spec.model_validate(spec), encode(img, ".npy"), mask, max_pixels=10**8)
    assert ctype == "application/x-npy"
    out = np.load(__import__("io").BytesIO(body))
    return out.reshape(out.shape[0], out.shape[1], -1), headers


CASES = [(n, np.uint8, 3) for n in FILTERS] + [(n, np.uint16, 1) for n in FILTERS]
CASES += [(n, np.float32, 4) for n in FILTERS]
CASES += [(n, "u8->f32", 3) for n in FILTERS if not n.startswith(("median", "dilate", "erode"))]


@pytest.mark.parametrize(
    ("name", "depth", "channels"),
    CASES,
    ids=[f"{n}-{d if isinstance(d, str) else d.__name__}-c{c}" for n, d, c in CASES],
)
def test_cpu_engine_equals_opencv_on_the_whole_image(name, depth, channels):
    dtype = np.uint8 if depth == "u8->f32" else depth
    float_out = depth != np.uint8 and depth != np.uint16
    if name == "median5" and dtype == np.float32:
        pass  # cv2.medianBlur takes float32 for ksize 3 and 5
    img = _image(dtype, channels)
    color = img[:, :, :3] if channels == 4 else img
    for border in FLAGS:
        if name.startswith("median") and border != "reflect101":
            continue  # median always extrapolates as cv2.medianBlur does (replicate)
        full = _oracle(name, np.ascontiguousarray(color), border, float_out)
        for kind, roi, mask_file, inside in ROIS:
            for outside in ("keep", "zero"):
                spec = {"filter": FILTERS[name][0], "roi": roi, "border": border, "outside": outside, "format": "npy"}
                if depth == "u8->f32":
                    spec["depth"] = "float32"
                out, headers = _run(spec, img, mask_file)
                assert headers["X-Engine"] == "opencv"
                base = img.astype(out.dtype) if outside == "keep" else np.zeros_like(out)
                if outside == "zero" and channels == 4:
                    base[:, :, 3] = img[:, :, 3]
                expected = base.copy()
                expected[:, :, : color.shape[2]][inside] = full[inside]
                where = f"{name} {border} {kind} outside={outside}"
                assert out.dtype == expected.dtype, where
                if border == "wrap" and (float_out or name not in FIXED_POINT):
                    # no whole-image wrap in cv2 for these: the oracle pads first, so its float sums run on
                    # another SIMD lane layout than the engine's window; equal up to float rounding
                    diff = np.abs(out.astype(np.float64) - expected.astype(np.float64))
                    assert diff.max() <= (1e-4 * max(1.0, np.abs(expected).max()) if float_out else 1), where
                    continue
                assert np.array_equal(out, expected), f"{where}: {np.argwhere(out != expected)[:5].tolist()}"


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_large_blurs_equal_opencv(dtype):
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (220, 300, 3)).astype(dtype)
    boxes = [[0, 0, 40, 30], [250, 180, 300, 220], [120, 90, 170, 130], [280, 0, 300, 10], [0, 200, 30, 220]]
    inside = np.zeros(img.shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        inside[y0:y1, x0:x1] = True
    for spec, full in [
        ({"name": "gaussian", "ksize": 101}, cv2.GaussianBlur(img, (101, 101), 0)),
        ({"name": "gaussian", "ksize": 255, "sigma": 40}, cv2.GaussianBlur(img, (255, 255), 40)),
        ({"name": "box", "ksize": 255}, cv2.blur(img, (255, 255))),
        ({"name": "box", "ksize": [51, 201]}, cv2.blur(img, (51, 201))),
        ({"name": "kernel", "weights": K31.tolist()}, cv2.filter2D(img, -1, K31)),
    ]:
        out, _ = _run({"filter": spec, "roi": {"boxes": boxes}, "format": "npy"}, img)
        assert np.array_equal(out[inside], full[inside]), spec
        assert np.array_equal(out[~inside], img[~inside]), spec


def test_median_large_ksize_on_8_bit():
    img = _image(np.uint8, 3, seed=9)
    out, _ = _run({"filter": {"name": "median", "ksize": 31}, "roi": {"boxes": [[0, 0, 50, 61]]}, "format": "npy"}, img)
    assert np.array_equal(out[:, :50], cv2.medianBlur(img, 31)[:, :50])
    assert np.array_equal(out[:, 50:], img[:, 50:])


def test_overlapping_pieces_read_the_input_not_each_other():
    img = _image(np.uint8, 3, seed=2)
    boxes = [[10, 10, 60, 40], [40, 20, 100, 55]]
    out, _ = _run({"filter": {"name": "gaussian", "ksize": 15}, "roi": {"boxes": boxes}, "format": "npy"}, img)
    full = cv2.GaussianBlur(img, (15, 15), 0)
    assert np.array_equal(out[10:40, 10:60], full[10:40, 10:60]) and np.array_equal(
        out[20:55, 40:100], full[20:55, 40:100]
    )
