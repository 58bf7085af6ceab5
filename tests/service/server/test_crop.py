"""Anonymization filters, crop, output_region, EXIF orientation, memory that follows the ROI, and 422s naming the
field. Oracles: per-cell loops, the whole-image request, cv2.imdecode(IMREAD_COLOR) (which applies EXIF)."""

from __future__ import annotations

import io
import tracemalloc

import cv2
import numpy as np
import pytest
from crafted import jpeg_with_orientation, png_with_orientation
from service_support import decode, encode, post, run, running

from service.imaging.filters import halo
from service.imaging.pipeline import prepare, process, run_opencv
from service.imaging.spec import Spec


def _process(spec: dict, img: np.ndarray, ext: str = ".npy"):
    body, _, headers = process(Spec.model_validate(spec), encode(img, ext), max_pixels=10**8)
    out = np.load(io.BytesIO(body)) if body.startswith(b"\x93NUMPY") else decode(body)
    return out.reshape(out.shape[0], out.shape[1], -1), headers


def _pixelate_loop(img: np.ndarray, block: int, inside: np.ndarray, origin=(0, 0), full=None) -> np.ndarray:
    """Each ROI pixel ← the mean of its whole block×block cell, cells anchored at the full image's (0, 0)."""
    out = img.astype(np.float64)
    h, w = img.shape[:2]
    ox, oy = origin
    fh, fw = full or (h, w)
    for y in range(h):
        for x in range(w):
            if not inside[y, x]:
                continue
            cy, cx = (y + oy) // block * block, (x + ox) // block * block  # the cell in full coordinates
            ys = slice(max(cy - oy, 0), min(cy + block, fh) - oy)
            xs = slice(max(cx - ox, 0), min(cx + block, fw) - ox)
            cell = img[ys, xs].astype(np.float64)
            for c in range(img.shape[2]):
                mean = cell[:, :, c].sum() / cell[:, :, c].size
                out[y, x, c] = mean if img.dtype == np.float32 else round(mean)  # round: half to even
    return out.astype(img.dtype)


@pytest.mark.parametrize(("dtype", "block"), [(np.uint8, 7), (np.uint16, 4), (np.float32, 5), (np.uint8, 1)])
def test_pixelate_equals_a_per_cell_loop(dtype, block):
    rng = np.random.default_rng(1)
    img = (rng.random((37, 45, 3)) * (1 if dtype == np.float32 else np.iinfo(dtype).max)).astype(dtype)
    roi = {"boxes": [[3, 2, 19, 11], [40, 30, 45, 37]], "ellipses": [[22, 25, 9, 5, 20.0]]}
    canvas = np.zeros((37, 45), np.uint8)
    cv2.ellipse(canvas, (22, 25), (9, 5), 20.0, 0, 360, 1, -1)
    inside = canvas.astype(bool)
    inside[2:11, 3:19] = inside[30:37, 40:45] = True
    out, _ = _process({"filter": {"name": "pixelate", "block": block}, "roi": roi, "format": "npy"}, img)
    assert np.array_equal(out, _pixelate_loop(img, block, inside))


def test_pixelate_rounds_half_to_even():
    img = np.array([[[1], [2]], [[3], [4]]], np.uint8).repeat(1, 0)  # one 2×2 cell: mean 2.5 → 2
    img = np.concatenate([img, np.array([[[3], [4]], [[3], [4]]], np.uint8)], axis=1)  # next cell: 3.5 → 4
    out, _ = _process({"filter": {"name": "pixelate", "block": 2}, "format": "npy"}, img)
    assert out[:, :2].ravel().tolist() == [2, 2, 2, 2] and out[:, 2:].ravel().tolist() == [4, 4, 4, 4]


def test_fill_one_value_or_one_per_channel_alpha_kept():
    img = np.random.default_rng(2).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    out, _ = _process({"filter": {"name": "fill", "color": [10, 20, 30]}, "roi": {"boxes": [[5, 5, 15, 10]]}}, img)
    assert (out[5:10, 5:15, :3] == [10, 20, 30]).all() and np.array_equal(out[:, :, 3], img[:, :, 3])
    assert np.array_equal(out[10:], img[10:])
    gray = img[:, :, :1].copy()
    out, _ = _process({"filter": {"name": "fill", "color": [255]}, "roi": {"circles": [[15, 10, 4]]}}, gray)
    canvas = np.zeros((20, 30), np.uint8)
    cv2.circle(canvas, (15, 10), 4, 1, -1)
    assert (out[canvas == 1] == 255).all() and np.array_equal(out[canvas == 0], gray[canvas == 0])


CROP_FILTERS = [
    {"name": "gaussian", "ksize": 31, "sigma": 6},
    {"name": "median", "ksize": 7},
    {"name": "dilate", "ksize": 5, "shape": "ellipse"},
    {"name": "pixelate", "block": 9},
    {"name": "sobel", "dx": 1, "dy": 1, "ksize": 5},
]


@pytest.mark.parametrize("filt", CROP_FILTERS, ids=[f["name"] for f in CROP_FILTERS])
def test_crop_equals_the_whole_image_inside_the_roi(filt):
    rng = np.random.default_rng(4)
    full = cv2.GaussianBlur(rng.integers(0, 256, (120, 170, 3), dtype=np.uint8), (3, 3), 0)
    h = halo(filt)
    rois = [[[40, 30, 75, 61]], [[0, 0, 20, 14]], [[150, 100, 170, 120]], [[5, 50, 166, 58]]]  # inside, at edges
    for boxes in rois:
        whole, _ = _process({"filter": filt, "roi": {"boxes": boxes}, "format": "npy"}, full)
        x0, y0, x1, y1 = boxes[0]
        cx0, cy0 = max(x0 - h, 0), max(y0 - h, 0)  # the smallest correct crop: the ROI grown by the halo
        cx1, cy1 = min(x1 + h, 170), min(y1 + h, 120)
        crop = {"x": cx0, "y": cy0, "width": 170, "height": 120}
        spec = {"filter": filt, "roi": {"boxes": boxes}, "crop": crop, "format": "npy"}
        part, _ = _process(spec, np.ascontiguousarray(full[cy0:cy1, cx0:cx1]))
        assert part.shape == (cy1 - cy0, cx1 - cx0, 3)
        assert np.array_equal(part, whole[cy0:cy1, cx0:cx1]), (filt, boxes)  # ROI equal, the rest the input's
        spec["output_region"] = "roi"
        roi_only, headers = _process(spec, np.ascontiguousarray(full[cy0:cy1, cx0:cx1]))
        assert headers["X-ROI-Rect"] == f"{x0},{y0},{min(x1, 170)},{min(y1, 120)}"
        assert np.array_equal(roi_only, whole[y0:y1, x0:x1])


def test_pixelate_cells_straddling_the_crop_use_the_full_image_origin():
    rng = np.random.default_rng(6)
    full = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    whole, _ = _process({"filter": {"name": "pixelate", "block": 8}, "roi": {"boxes": [[13, 13, 30, 22]]}}, full)
    crop = full[6:29, 6:37]  # the ROI grown by the halo (block - 1 = 7): cut mid-cell on every side
    spec = {
        "filter": {"name": "pixelate", "block": 8},
        "roi": {"boxes": [[13, 13, 30, 22]]},
        "crop": {"x": 6, "y": 6, "width": 64, "height": 64},
    }
    part, _ = _process(spec, np.ascontiguousarray(crop))
    assert np.array_equal(part, whole[6:29, 6:37])


def test_output_region_roi_with_ellipse_and_outside_zero():
    img = np.random.default_rng(7).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    spec = {"filter": {"name": "box", "ksize": 9}, "roi": {"ellipses": [[40, 25, 15, 8, 45.0]]}, "outside": "zero"}
    whole, _ = _process({**spec, "format": "npy"}, img)
    part, headers = _process({**spec, "format": "npy", "output_region": "roi"}, img)
    x0, y0, x1, y1 = map(int, headers["X-ROI-Rect"].split(","))
    canvas = np.zeros((50, 80), np.uint8)
    cv2.ellipse(canvas, (40, 25), (15, 8), 45.0, 0, 360, 1, -1)
    ys, xs = np.nonzero(canvas)
    assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert np.array_equal(part, whole[y0:y1, x0:x1])


@pytest.mark.parametrize("container", ["jpeg", "png"])
@pytest.mark.parametrize("value", range(1, 9))
def test_exif_orientation_upright_by_default_or_ignored(value, container):
    stored = np.random.default_rng(value).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    if container == "jpeg":
        data = jpeg_with_orientation(cv2.imencode(".jpg", stored)[1].tobytes(), value)
    else:
        data = png_with_orientation(cv2.imencode(".png", stored)[1].tobytes(), value)
    viewer = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # applies the orientation
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # does not
    spec = {"filter": {"name": "fill", "color": [0, 0, 255]}, "roi": {"boxes": [[0, 0, 6, 3]]}, "format": "png"}
    body, _, _ = process(Spec.model_validate(spec), data, max_pixels=10**6)
    out = decode(body)
    expected = viewer.copy()
    expected[0:3, 0:6] = (0, 0, 255)  # the box lands on the upright image's top-left corner
    assert np.array_equal(out, expected)
    body, _, _ = process(Spec.model_validate({**spec, "exif": "ignore"}), data, max_pixels=10**6)
    expected = raw.copy()
    expected[0:3, 0:6] = (0, 0, 255)
    assert np.array_equal(decode(body), expected)


def test_a_4k_request_with_a_1_percent_roi_allocates_no_full_size_buffer():
    img = np.random.default_rng(8).integers(0, 256, (2160, 3840, 3), dtype=np.uint8)
    data = encode(img, ".npy")
    full_u8 = img.nbytes
    for outside, limit in (("keep", full_u8 // 20), ("zero", full_u8 * 1.1)):
        spec = Spec.model_validate(
            {
                "filter": {"name": "gaussian", "ksize": 31},
                "roi": {"boxes": [[1000, 800, 1384, 1016]]},
                "outside": outside,
            }
        )
        prepared = prepare(spec, data, None, 10**8)
        tracemalloc.start()
        out = run_opencv(prepared)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert out.dtype == np.uint8
        assert peak < limit, f"outside={outside}: peak {peak} bytes, one 4K uint8 image is {full_u8}"
        if outside == "keep":
            assert out is prepared.work.pixels  # the decoded image is the output buffer


BAD = [
    ({"name": "pixelate", "block": 0}, {}, None, "spec.filter.block"),
    ({"name": "pixelate", "block": "x"}, {}, None, "spec.filter.block"),
    ({"name": "fill", "color": [1, 2]}, {}, None, "spec.filter.color"),
    ({"name": "fill", "color": [300]}, {}, None, "spec.filter.color"),
    ({"name": "fill", "color": [1, 2, 3, 4]}, {}, None, "spec.filter.color"),
    ({"name": "fill", "color": []}, {}, None, "spec.filter.color"),
    ({"name": "median", "ksize": 4}, {}, None, "spec.filter.ksize"),
    ({"name": "fill"}, {"ellipses": [[10, 10, -3, 4, 0]]}, None, "spec.roi.ellipses"),
    ({"name": "fill"}, {"ellipses": [[10, 10, 3, 4]]}, None, "spec.roi.ellipses"),
    ({"name": "fill"}, {"ellipses": [[10.5, 10, 3, 4, 0]]}, None, "spec.roi.ellipses"),
    ({"name": "fill"}, {}, {"x": 10, "y": 0, "width": 30, "height": 20}, "spec.crop"),
    ({"name": "fill"}, {}, {"x": 0, "y": 0, "width": 25, "height": 25}, "spec.crop"),
    ({"name": "fill"}, {}, {"x": -1, "y": 0, "width": 99, "height": 99}, "spec.crop.x"),
    ({"name": "fill"}, {}, {"x": 0, "y": 0, "width": 1 << 20, "height": 1 << 20}, "spec.crop"),  # over MAX_PIXELS
]


def test_bad_block_color_ellipse_crop_values_are_422_naming_the_field():
    img = encode(np.zeros((20, 30, 3), np.uint8))  # the crop cases: a 30×20 upload

    async def main():
        async with running() as (_, client):
            out = [await post(client, img, {"filter": f, "roi": roi, "crop": crop}) for f, roi, crop, _ in BAD]
            out.append(
                await post(client, encode(np.zeros((20, 30), np.uint16)), {"filter": {"name": "median", "ksize": 7}})
            )
            return out

    responses = run(main())
    fields = [f for *_, f in BAD] + ["spec.filter.ksize"]
    for r, field in zip(responses, fields):
        assert r.status_code == 422 and r.json()["field"].startswith(field), (field, r.status_code, r.text)


def test_http_headers_and_filters_catalog():
    img = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)

    async def main():
        async with running() as (_, client):
            spec = {
                "filter": {"name": "median", "ksize": 5},
                "roi": {"boxes": [[10, 5, 30, 25]]},
                "output_region": "roi",
            }
            return await post(client, encode(img), spec), await client.get("/filters")

    r, catalog = run(main())
    assert r.status_code == 200 and r.headers["X-ROI-Rect"] == "10,5,30,25" and r.headers["X-Engine"] == "opencv"
    assert np.array_equal(decode(r.content), cv2.medianBlur(img, 5)[5:25, 10:30])
    c = catalog.json()
    auto = {"fraction": 0.75, "odd": True, "least": 3, "most": 255}
    assert c["gaussian"]["halo"] == {"rule": "ksize", "min": 0, "auto": auto}
    cells = {"fraction": 1 / 6, "odd": False, "least": 2, "most": 4096}
    assert c["pixelate"]["halo"] == {"rule": "block", "auto": cells}
    assert c["gaussian"]["engine"] == {"cpu": "opencv", "cuda": "torch"}
    assert c["adaptive_gaussian"]["engine"]["cpu"] == "torch"
    assert halo({"name": "gaussian", "ksize": [31, 9]}) == 15 and halo({"name": "sobel", "ksize": 1}) == 1


def test_torch_engine_output_region_and_crop_follow_the_same_rules():
    img = np.random.default_rng(12).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    filt = {"name": "adaptive_gaussian", "sigma_min": 0.5, "sigma_max": 1.5}  # convcore on every device
    spec = {"filter": filt, "roi": {"boxes": [[20, 10, 40, 25]]}, "format": "npy"}
    whole, headers = _process(spec, img)
    assert headers["X-Engine"] == "torch"
    part, headers = _process({**spec, "output_region": "roi"}, img)
    assert headers["X-ROI-Rect"] == "20,10,40,25" and np.array_equal(part, whole[10:25, 20:40])
    h = halo(filt)
    crop = {"x": 20 - h, "y": 10 - h, "width": 64, "height": 40}
    cut, _ = _process({**spec, "crop": crop}, np.ascontiguousarray(img[10 - h : 25 + h, 20 - h : 40 + h]))
    assert np.array_equal(cut, whole[10 - h : 25 + h, 20 - h : 40 + h])


@pytest.mark.parametrize(
    "filt",
    [
        {"name": "gaussian", "ksize": 9, "sigma": 2.0},
        {"name": "dilate", "ksize": 5, "shape": "ellipse"},
        {"name": "adaptive_gaussian", "sigma_min": 0.5, "sigma_max": 2.0},
        {"name": "kernel", "weights": np.full((3, 3, 3, 3), 0.05).tolist()},
    ],
    ids=lambda f: f["name"],
)
@pytest.mark.parametrize("outside", ["keep", "zero"])
def test_torch_engine_reads_only_the_roi_window_and_equals_the_whole_image_run(filt, outside):
    from service.imaging.regions import build_pieces, pieces_mask
    from service.imaging.spec import Roi
    from service.imaging.torch_engine import run_batch
    from service.imaging.work import Work, finish

    img = np.random.default_rng(13).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    roi = {"boxes": [[0, 3, 12, 20]], "ellipses": [[45, 30, 10, 6, 15.0]]}
    spec = Spec.model_validate({"filter": filt, "roi": roi, "outside": outside, "format": "npy"})
    prepared = prepare(spec, encode(img, ".npy"), None, 10**8, prefer_torch=True)
    assert prepared.engine == "torch" and prepared.window is not None
    assert prepared.work.pixels.shape[:2] < img.shape[:2]  # only the ROI's bounding rectangle + halo
    import torch

    from service.imaging.pipeline import encode_result

    got = np.load(io.BytesIO(encode_result(run_batch(prepared.op, [prepared.work], torch.device("cpu"))[0], prepared)))
    mask = pieces_mask(build_pieces(Roi.model_validate(roi), 50, 70), 50, 70)
    whole = Work(img.copy(), mask, outside, "same")  # the whole image through convcore, as before windows
    expected = finish(run_batch(prepared.op, [whole], torch.device("cpu"))[0], whole)
    assert np.array_equal(got, expected)
