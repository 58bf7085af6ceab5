"""POST /convolve and the other endpoints, in process (httpx ASGITransport, the app's lifespan running)."""

from __future__ import annotations

import asyncio

import cv2
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_support import create_app, decode, encode, post, rand_image, run, running, settings

GAUSS = {"name": "gaussian", "ksize": 9, "sigma": 2.0}


def _within_one(a: np.ndarray, b: np.ndarray) -> bool:
    return np.abs(a.astype(np.float64) - b.astype(np.float64)).max() <= 1


def test_gaussian_box_roi_equals_cv2_inside_and_original_outside():
    img = rand_image(64, 80)

    async def main():
        async with running() as (_, client):
            return await post(client, encode(img), {"filter": GAUSS, "roi": {"boxes": [[10, 5, 50, 40]]}})

    r = run(main())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    out = decode(r.content)
    inside = np.zeros(img.shape[:2], bool)
    inside[5:40, 10:50] = True
    assert _within_one(out[inside], cv2.GaussianBlur(img, (9, 9), 2.0)[inside])
    assert np.array_equal(out[~inside], img[~inside])
    assert float(r.headers["X-ROI-Coverage"]) == pytest.approx(inside.mean(), abs=1e-6)
    assert r.headers["X-Batch-Size"] == "1" and r.headers["X-Device"] == "cpu"
    assert float(r.headers["X-Queue-Seconds"]) >= 0 and float(r.headers["X-Compute-Seconds"]) > 0


@pytest.mark.parametrize(
    ("roi", "draw"),
    [
        ({"polygons": [[[5, 5], [60, 10], [30, 50]]]},
         lambda m: cv2.fillPoly(m, [np.array([[5, 5], [60, 10], [30, 50]], np.int32)], 1)),
        ({"circles": [[40, 30, 12]]}, lambda m: cv2.circle(m, (40, 30), 12, 1, -1)),
        ({"boxes": [[0, 0, 20, 20]], "invert": True}, lambda m: m.__setitem__((slice(0, 20), slice(0, 20)), 1)),
    ],
    ids=["polygon", "circle", "invert"],
)  # fmt: skip
def test_roi_kinds(roi, draw):
    img = rand_image(48, 64, seed=2)

    async def main():
        async with running() as (_, client):
            return await post(client, encode(img), {"filter": {"name": "box", "ksize": 5}, "roi": roi})

    r = run(main())
    assert r.status_code == 200, r.text
    canvas = np.zeros((48, 64), np.uint8)
    draw(canvas)
    inside = canvas.astype(bool)
    if roi.get("invert"):
        inside = ~inside
    out = decode(r.content)
    assert _within_one(out[inside], cv2.blur(img, (5, 5))[inside])
    assert np.array_equal(out[~inside], img[~inside])


def test_mask_file_union_with_boxes_and_outside_zero():
    img = rand_image(30, 40, seed=3)
    mask = np.zeros((30, 40), np.uint8)
    mask[20:25, 30:38] = 255
    spec = {"filter": {"name": "laplacian", "ksize": 3}, "roi": {"boxes": [[0, 0, 5, 5]]}, "outside": "zero"}

    async def main():
        async with running() as (_, client):
            return await post(client, encode(img), spec, mask=encode(mask))

    r = run(main())
    assert r.status_code == 200, r.text
    inside = mask.astype(bool)
    inside[0:5, 0:5] = True
    out = decode(r.content)
    assert _within_one(out[inside], cv2.Laplacian(img, -1, ksize=3)[inside])
    assert not out[~inside].any()


@pytest.mark.parametrize(
    ("img", "ext", "spec_extra", "ctype", "dtype"),
    [
        (rand_image(20, 24, 1, np.uint16), ".png", {}, "image/png", np.uint16),
        (rand_image(20, 24, 3, np.uint16), ".tiff", {}, "image/tiff", np.uint16),
        (rand_image(20, 24, 3, np.float32), ".tiff", {}, "image/tiff", np.float32),
        (rand_image(20, 24, 3), ".png", {"depth": "float32", "format": "tiff"}, "image/tiff", np.float32),
        (rand_image(20, 24, 3), ".png", {"format": "npy"}, "application/x-npy", np.uint8),
        (rand_image(20, 24, 1, np.float32), ".npy", {}, "application/x-npy", np.float32),
        (rand_image(20, 24, 3), ".bmp", {}, "image/bmp", np.uint8),
        (rand_image(20, 24, 3), ".webp", {}, "image/webp", np.uint8),
    ],
    ids=["png16", "tiff16", "tiff32", "depth32", "npy-out", "npy-in", "bmp", "webp"],
)
def test_formats_and_depths(img, ext, spec_extra, ctype, dtype):
    async def main():
        async with running() as (_, client):
            return await post(client, encode(img, ext), {"filter": {"name": "gaussian", "ksize": 5}, **spec_extra})

    r = run(main())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == ctype
    out = decode(r.content)
    assert out.dtype == dtype and out.shape == img.shape
    ref = cv2.GaussianBlur(img, (5, 5), 0)
    tol = 1e-3 if dtype == np.float32 and img.dtype == np.float32 else 1
    assert np.abs(out.astype(np.float64) - ref.astype(np.float64)).max() <= tol


def test_jpeg_in_jpeg_out():
    img = rand_image(32, 32)

    async def main():
        async with running() as (_, client):
            return await post(client, encode(img, ".jpg"), {"filter": {"name": "box", "ksize": 3}})

    r = run(main())
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert decode(r.content).shape == (32, 32, 3)


def test_alpha_is_kept_unchanged():
    img = rand_image(30, 30, 4, seed=9)

    async def main():
        async with running() as (_, client):
            return await post(client, encode(img), {"filter": GAUSS, "roi": {"boxes": [[5, 5, 25, 25]]}})

    r = run(main())
    out = decode(r.content)
    assert out.shape == (30, 30, 4)
    assert np.array_equal(out[:, :, 3], img[:, :, 3])
    assert _within_one(out[5:25, 5:25, :3], cv2.GaussianBlur(img[:, :, :3], (9, 9), 2.0)[5:25, 5:25])


def test_mixed_size_concurrent_requests_are_batched_and_equal_single_results():
    sizes = [(40, 50, 3), (33, 61, 1), (64, 64, 3), (20, 24, 4), (50, 31, 3), (45, 45, 1)]
    images = [rand_image(h, w, c, seed=i) for i, (h, w, c) in enumerate(sizes)]
    adaptive = {"name": "adaptive_gaussian", "sigma_min": 0.5, "sigma_max": 2.0}  # the torch engine: batched
    specs = [{"filter": adaptive, "roi": {"boxes": [[i, i, 18 + i, 15 + 2 * i]]}} for i in range(len(sizes))]

    async def main():
        async with running(max_batch_delay_ms=300.0, max_batch=16) as (_, client):
            together = await asyncio.gather(*[post(client, encode(im), sp) for im, sp in zip(images, specs)])
        async with running(max_batch=1) as (_, client):
            alone = [await post(client, encode(im), sp) for im, sp in zip(images, specs)]
        return together, alone

    together, alone = run(main())
    assert all(r.status_code == 200 for r in together + alone)
    assert max(int(r.headers["X-Batch-Size"]) for r in together) > 1
    assert all(r.headers["X-Batch-Size"] == "1" for r in alone)
    for a, b in zip(together, alone):
        assert np.array_equal(decode(a.content), decode(b.content))


def test_filters_catalog_livez_info_docs():
    async def main():
        async with running(api_key="topsecret") as (_, client):
            key = {"X-API-Key": "topsecret"}
            return [await client.get(p, headers=key) for p in ("/filters", "/livez", "/info", "/docs", "/openapi.json")]

    filters, livez, info, docs, openapi = run(main())
    catalog = filters.json()
    assert {"gaussian", "box", "sobel", "scharr", "laplacian", "sharpen", "emboss", "kernel"} <= set(catalog)
    assert {"adaptive_gaussian", "dilate", "erode"} <= set(catalog)
    assert "ksize" in catalog["gaussian"]["schema"]["properties"]
    assert livez.json() == {"status": "ok"}
    assert info.json()["devices"] == ["cpu"] and info.json()["settings"]["api_key_set"] is True
    assert "topsecret" not in info.text
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text  # nothing fetched from a CDN
    assert "/convolve" in openapi.json()["paths"]


def test_readyz_503_until_started_and_while_draining():
    app = create_app(settings())

    async def before():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/readyz")

    assert run(before()).status_code == 503

    async def main():
        async with running() as (app, client):
            ready = await client.get("/readyz")
            app.state.roiconv.draining = True
            draining = await client.get("/readyz")
            refused = await post(client, encode(rand_image(10, 10)), {"filter": GAUSS})
            return ready, draining, refused

    ready, draining, refused = run(main())
    assert ready.status_code == 200 and ready.json()["devices"]["cpu"]["warm"] is True
    assert draining.status_code == 503 and draining.json()["draining"] is True
    assert refused.status_code == 503 and refused.json()["error"] == "draining"


def _metrics(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_present_and_counting():
    async def main():
        async with running() as (_, client):
            before = _metrics((await client.get("/metrics")).text)
            for _ in range(3):
                await post(client, encode(rand_image(20, 20)), {"filter": GAUSS, "roi": {"boxes": [[0, 0, 10, 20]]}})
            await post(client, encode(rand_image(20, 20)), {"filter": {"name": "nope"}})
            return before, _metrics((await client.get("/metrics")).text)

    before, after = run(main())
    key = ("roiconv_requests_total", (("filter", "gaussian"), ("status", "200")))
    assert before.get(key, 0) == 0 and after[key] == 3
    assert after[("roiconv_requests_total", (("filter", "invalid"), ("status", "422")))] == 1
    assert after[("roiconv_request_duration_seconds_count", ())] == 4
    assert after[("roiconv_batch_size_count", ())] >= 3
    assert after[("roiconv_roi_coverage_ratio_sum", ())] == pytest.approx(1.5)
    assert after[("roiconv_windows_computed_total", ())] == 3 * 200 * 3
    assert after[("roiconv_windows_skipped_total", ())] == 3 * 200 * 3
    assert after[("roiconv_compute_seconds_count", (("device", "cpu"),))] >= 3
    assert after[("roiconv_queue_wait_seconds_count", ())] >= 3
    assert ("roiconv_queue_depth", ()) in after
    assert ("roiconv_inflight_requests", (("device", "cpu"),)) in after


@pytest.mark.parametrize(
    ("flt", "ref"),
    [
        ({"name": "dilate", "ksize": 5, "shape": "ellipse"},
         lambda im: cv2.dilate(im, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))),
        ({"name": "erode", "ksize": 3}, lambda im: cv2.erode(im, np.ones((3, 3), np.uint8))),
        ({"name": "adaptive_gaussian", "sigma_min": 1.5, "sigma_max": 1.5, "ksize": 7},
         lambda im: cv2.GaussianBlur(im, (7, 7), 1.5)),
        ({"name": "scharr", "dx": 1, "dy": 0}, lambda im: cv2.Scharr(im, -1, 1, 0)),
        ({"name": "sharpen", "amount": 1.0},
         lambda im: cv2.filter2D(im, -1, np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32))),
    ],
    ids=["dilate", "erode", "adaptive", "scharr", "sharpen"],
)  # fmt: skip
def test_more_filters_over_http(flt, ref):
    img = rand_image(36, 44, seed=11)

    async def main():
        async with running() as (_, client):
            return await post(client, encode(img), {"filter": flt, "roi": {"boxes": [[4, 6, 30, 28]]}})

    r = run(main())
    assert r.status_code == 200, r.text
    out = decode(r.content)
    inside = np.zeros((36, 44), bool)
    inside[6:28, 4:30] = True
    assert _within_one(out[inside], ref(img)[inside])
    assert np.array_equal(out[~inside], img[~inside])
