"""service.client against a real uvicorn server: ROI-aware transfer equals the whole-image path, retries on 429/503,
typed errors, the async client under concurrency, PNG encoding without OpenCV, and an import that needs only
httpx and numpy."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import cv2
import httpx
import numpy as np
import pytest
from service_support import ROOT, rand_image, smooth

from service.client import (
    AsyncClient,
    Client,
    RequestRejected,
    ServerBusy,
    _client,
    crop_rect,
    encode_png,
    filter_halo,
)

CASES = [
    ("gaussian k31 box", {"filter": {"name": "gaussian", "ksize": 31}, "roi": {"boxes": [[60, 40, 110, 90]]}}),
    (
        "box touching edges",
        {"filter": {"name": "box", "ksize": 9}, "roi": {"boxes": [[-5, -5, 30, 20], [0, 100, 20, 160]]}},
    ),
    (
        "sobel polygon",
        {
            "filter": {"name": "sobel", "dx": 1, "dy": 0, "ksize": 5},
            "roi": {"polygons": [[[20, 30], [70, 35], [40, 80]]]},
        },
    ),
    (
        "dilate circle, outside zero",
        {"filter": {"name": "dilate", "ksize": 7}, "roi": {"circles": [[150, 60, 18]]}, "outside": "zero"},
    ),
    ("default ksize from the catalog", {"filter": {"name": "gaussian"}, "roi": {"boxes": [[100, 100, 130, 118]]}}),
    (
        "auto sizes: the largest shape sets the halo",
        {"filter": "median", "roi": {"boxes": [[100, 20, 112, 30]], "ellipses": [[60, 60, 20, 12, 30]]}},
    ),
    ("auto pixelate cells", {"filter": "pixelate", "roi": {"polygons": [[[150, 10], [200, 40], [160, 70]]]}}),
    (
        "reflect border",
        {"filter": {"name": "gaussian", "ksize": 15}, "roi": {"boxes": [[0, 0, 25, 25]]}, "border": "reflect"},
    ),
]


@pytest.mark.parametrize("name,spec", CASES, ids=[c[0] for c in CASES])
def test_roi_transfer_equals_whole_image(server, name, spec):
    img = smooth(150, 220)
    with Client(server.url) as roi_client, Client(server.url, roi_transfer=False) as whole_client:
        out = roi_client.convolve(img, spec)
        whole = whole_client.convolve(img, spec)
        assert roi_client.bytes_sent < whole_client.bytes_sent / 2, "the ROI path must upload less"
    assert out.shape == whole.shape and out.dtype == whole.dtype
    np.testing.assert_array_equal(out, whole)
    if spec.get("outside") != "zero":
        changed = np.argwhere((out != img).any(axis=-1))
        assert len(changed), "the filter changed nothing: the test would not see a broken paste"
    assert not np.shares_memory(out, img)


ANONYMIZATION = [
    ("pixelate straddling cells", {"filter": {"name": "pixelate", "block": 16}, "roi": {"boxes": [[37, 21, 90, 70]]}}),
    ("pixelate at the edge", {"filter": {"name": "pixelate", "block": 12}, "roi": {"boxes": [[200, 140, 220, 150]]}}),
    ("median ellipse", {"filter": {"name": "median", "ksize": 5}, "roi": {"ellipses": [[100, 70, 30, 18, 25]]}}),
    (
        "fill polygon",
        {"filter": {"name": "fill", "color": [0, 0, 255]}, "roi": {"polygons": [[[5, 5], [60, 9], [20, 50]]]}},
    ),
]


@pytest.mark.parametrize("name,spec", ANONYMIZATION, ids=[c[0] for c in ANONYMIZATION])
def test_roi_transfer_anonymization_filters(server, name, spec):
    img = smooth(150, 220, seed=4)
    with Client(server.url) as roi_client, Client(server.url, roi_transfer=False) as whole_client:
        whole = whole_client.convolve(img, spec)  # this tree's own server: a rejection is a failure
        out = roi_client.convolve(img, spec)
        assert roi_client.bytes_sent < whole_client.bytes_sent / 2
    np.testing.assert_array_equal(out, whole)
    assert (out != img).any()


@pytest.mark.parametrize("c,dtype", [(1, np.uint8), (4, np.uint8), (3, np.uint16), (3, np.float32)])
def test_roi_transfer_depths_and_channels(server, c, dtype):
    img = rand_image(90, 120, c, dtype, seed=3)
    spec = {"filter": {"name": "gaussian", "ksize": 9}, "roi": {"boxes": [[30, 20, 60, 50]]}}
    with Client(server.url) as a, Client(server.url, roi_transfer=False) as b:
        out, whole = a.convolve(img, spec), b.convolve(img, spec)
    np.testing.assert_array_equal(out, whole)
    assert out.shape == img.shape and out.dtype == img.dtype
    assert (out[20:50, 30:60] != img[20:50, 30:60]).any()
    np.testing.assert_array_equal(out[:20], img[:20])


def test_files_and_bytes_are_sent_whole(server, tmp_path):
    img = smooth(64, 80)
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), img)
    spec = {"filter": {"name": "box", "ksize": 5}, "roi": {"boxes": [[10, 10, 40, 30]]}}
    with Client(server.url) as client:
        from_path = client.convolve(path, spec)
        from_bytes = client.convolve(path.read_bytes(), json.dumps(spec))
        from_array = client.convolve(img, spec)
    np.testing.assert_array_equal(from_path, from_array)
    np.testing.assert_array_equal(from_bytes, from_array)


def test_typed_errors_name_the_field(server):
    img = smooth(40, 40)
    with Client(server.url) as client:
        with pytest.raises(RequestRejected) as err:
            client.convolve(img, {"filter": {"name": "gaussian", "ksize": 4}, "roi": {"boxes": [[1, 1, 9, 9]]}})
        assert err.value.status == 422 and err.value.field == "spec.filter.ksize" and "odd" in err.value.reason
        with pytest.raises(RequestRejected) as err:
            client.convolve(img, {"filter": {"name": "nope"}})
        assert err.value.field.startswith("spec.filter")
        with pytest.raises(ValueError, match="filter"):
            client.convolve(img, {"roi": {}})
        assert "gaussian" in json.dumps(client.filters()) and "version" in client.info()


def test_async_client_under_concurrency(server):
    imgs = [smooth(80, 100, seed=i) for i in range(16)]
    specs = [
        {"filter": {"name": "gaussian", "ksize": 3 + 2 * (i % 5)}, "roi": {"boxes": [[i, i, 40 + i, 50]]}}
        for i in range(16)
    ]

    async def go():
        async with AsyncClient(server.url) as client:
            return await asyncio.gather(*(client.convolve(im, sp) for im, sp in zip(imgs, specs)))

    outs = asyncio.run(go())
    with Client(server.url, roi_transfer=False) as whole:
        for img, spec, out in zip(imgs, specs, outs):
            np.testing.assert_array_equal(out, whole.convolve(img, spec))


def _scripted(statuses: list[int], retry_after: str | None, seen: list[float]):
    payload = np.zeros((2, 2, 3), np.uint8)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        status = statuses[min(len(seen) - 1, len(statuses) - 1)]
        if status == 200:
            import io

            buf = io.BytesIO()
            np.save(buf, payload)
            return httpx.Response(200, content=buf.getvalue())
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return httpx.Response(status, json={"error": "queue_full", "field": None, "reason": "busy"}, headers=headers)

    return httpx.MockTransport(handler)


def test_retries_429_honouring_retry_after():
    seen: list[float] = []
    client = Client("http://x", retries=3, transport=_scripted([429, 503, 200], "0.2", seen))
    out = client.convolve(b"any encoded image", {"filter": {"name": "box"}})
    assert out.shape == (2, 2, 3) and len(seen) == 3
    assert seen[1] - seen[0] >= 0.19 and seen[2] - seen[1] >= 0.19, "Retry-After was not waited"


def test_retries_are_bounded(monkeypatch):
    seen: list[float] = []
    waits: list[float] = []
    monkeypatch.setattr(_client.time, "sleep", waits.append)  # the waits asked for, none slept
    client = Client("http://x", retries=2, max_retry_wait=0.05, transport=_scripted([429], "3600", seen))
    with pytest.raises(ServerBusy) as err:
        client.convolve(b"x", {"filter": {"name": "box"}})
    assert len(seen) == 3 and waits == [0.05, 0.05], ("retries or their wait are unbounded", waits)
    assert err.value.status == 429 and err.value.code == "queue_full"
    seen.clear()
    with pytest.raises(RequestRejected):
        Client("http://x", transport=_scripted([400], None, seen)).convolve(b"x", {"filter": {"name": "box"}})
    assert len(seen) == 1, "a 4xx other than 429 must not be retried"


@pytest.mark.parametrize("c", [1, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_encode_png_decodes_with_opencv(c, dtype):
    img = rand_image(37, 53, c, dtype, seed=c)
    back = cv2.imdecode(np.frombuffer(encode_png(img), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back, img)


def test_halo_follows_the_rules_the_server_serves(server):
    from service.imaging.filters import halo  # the server's own reading of its rules: the oracle

    with Client(server.url) as c:
        catalog = c.filters()
    cases = [
        {"name": "gaussian", "ksize": 31},
        {"name": "box", "ksize": 9},
        {"name": "median", "ksize": 5},
        {"name": "sobel", "ksize": 1},  # a 3-tap kernel even at ksize 1
        {"name": "laplacian", "ksize": 1},
        {"name": "scharr"},
        {"name": "kernel", "weights": [[1, 2, 3, 4, 5]]},
        {"name": "pixelate", "block": 16},
        {"name": "fill", "color": [0]},
        {"name": "adaptive_gaussian", "sigma_min": 0.5, "sigma_max": 4.0},
        {"name": "dilate", "ksize": 7},
    ]
    for filt in cases:
        want = halo(filt)
        got = filter_halo(filt, catalog)
        assert got is not None and max(got) == want, (filt, got, want)
    assert filter_halo({"name": "gaussian", "ksize": [31, 9]}, catalog) == (15, 4)
    assert filter_halo({"name": "gaussian", "ksize": 9}) is None  # no catalog: the client knows no rule itself
    assert filter_halo({"name": "model:x"}, catalog) is None


def test_halo_and_crop_geometry():
    # the server's catalog: a number, or a rule applied to the parameters (schema defaults filled in)
    assert filter_halo({"name": "newfilter"}, {"filters": {"newfilter": {"halo": 6}}}) == (6, 6)
    assert filter_halo({"name": "newfilter"}, {"newfilter": {"halo": 2}}) == (2, 2)
    rules = {
        "gaussian": {"halo": {"rule": "ksize", "min": 0}, "schema": {"properties": {"ksize": {"default": 5}}}},
        "sobel": {"halo": {"rule": "ksize", "min": 1}, "schema": {"properties": {"ksize": {"default": 3}}}},
        "blur2": {"halo": {"rule": "fixed", "value": 3}},
        "pixelate": {"halo": {"rule": "block"}, "schema": {"properties": {"block": {"default": 8}}}},
        "model:m": {"halo": {"rule": "unknown"}},
    }
    assert filter_halo({"name": "gaussian"}, rules) == (2, 2)
    assert filter_halo({"name": "sobel", "ksize": 1}, rules) == (1, 1)
    assert filter_halo({"name": "blur2"}, rules) == (3, 3)
    assert filter_halo({"name": "pixelate"}, rules) == (7, 7)
    assert filter_halo({"name": "model:m"}, rules) is None
    spec = {"filter": {"name": "pixelate", "block": 16}, "roi": {"boxes": [[20, 5, 40, 9]]}}
    assert crop_rect(spec, 100, 100, rules) == (16, 0, 48, 16)  # whole cells of the grid anchored at (0, 0)
    assert crop_rect({"filter": {"name": "pixelate"}, "roi": spec["roi"]}, 100, 100, rules) == (16, 0, 40, 16)
    spec = {"filter": {"name": "box", "ksize": 5}, "roi": {"boxes": [[0, 90, 10, 120]], "circles": [[50, 50, 3]]}}
    rules["box"] = {"halo": {"rule": "ksize", "min": 0}}
    assert crop_rect(spec, 100, 60, rules) == (0, 45, 56, 100)
    assert crop_rect({**spec, "roi": {**spec["roi"], "invert": True}}, 100, 60, rules) is None


def test_import_needs_only_httpx_and_numpy():
    blocked = ["cv2", "torch", "fastapi", "starlette", "pydantic", "uvicorn", "convcore", "PIL"]
    code = (
        "import sys\n"
        f"for m in {blocked!r}: sys.modules[m] = None\n"
        "import service.client as c\n"
        f"assert c.__file__.startswith({str(ROOT)!r}), c.__file__\n"
        "assert c.encode_png(__import__('numpy').zeros((2, 2), 'uint8')).startswith(b'\\x89PNG')\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_roi_request_sends_the_region_and_states_the_full_image():
    import io
    import struct

    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.content  # a raw body: the image file, its spec in X-Spec
        assert request.headers["content-type"] == "application/octet-stream"
        seen["spec"] = json.loads(request.headers["x-spec"])
        png = body
        seen["size"] = struct.unpack(">II", png[16:24])  # IHDR width, height
        buf = io.BytesIO()
        np.save(buf, np.full((10, 10, 3), 7, np.uint8))
        return httpx.Response(200, content=buf.getvalue(), headers={"X-ROI-Rect": "50,40,60,50"})

    img = rand_image(100, 200, 3, np.uint8, seed=9)
    spec = {"filter": {"name": "gaussian", "ksize": 9}, "roi": {"boxes": [[50, 40, 60, 50]]}}
    catalog = {"gaussian": {"halo": {"rule": "ksize", "min": 0}, "schema": {"properties": {}}}}
    client = Client("http://x", transport=httpx.MockTransport(handler))
    client.catalog = catalog
    out = client.convolve(img, spec)
    assert seen["spec"]["crop"] == {"x": 46, "y": 36, "width": 200, "height": 100}
    assert seen["spec"]["output_region"] == "roi" and seen["spec"]["format"] == "npy"
    assert seen["size"] == (18, 18)  # 10x10 ROI + 4 pixels of halo each side
    want = img.copy()
    want[40:50, 50:60] = 7
    np.testing.assert_array_equal(out, want)
