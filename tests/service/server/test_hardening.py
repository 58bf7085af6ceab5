"""Hardening of POST /convolve: bounded ROI drawing, spec limits, strict numbers, header checks, slow clients,
error messages without internals, request accounting, the memory budget and the published OpenAPI schema."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from crafted import npy, tiff
from service_support import decode, encode, post, rand_image, run, running, settings

from service.imaging import codec, regions
from service.imaging.peak import estimate_peak
from service.imaging.regions import build_mask, draw_cost
from service.imaging.spec import Roi
from service.imaging.torch_engine import conv_in_bands, run_batch
from service.server.admission import MemoryBudget, NeverFits, memory_limit
from service.server.app import create_app

GAUSS = {"name": "gaussian", "ksize": 3}
IMG = encode(rand_image(24, 24))


def _metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} " if want else f"{name} "):
            return float(line.split()[-1])
    return 0.0


# ---- 1. ROI drawing is bounded and meets the deadline


def _scribble(n: int, lim: int, seed: int) -> list[list[int]]:
    return np.random.default_rng(seed).integers(-lim, lim, (n, 2)).tolist()


def test_costly_polygons_are_422_at_once_naming_the_field(monkeypatch):
    spec = {"filter": GAUSS, "roi": {"polygons": [_scribble(4096, 9999, i) for i in range(16)]}}
    drawn = []
    monkeypatch.setattr(regions.cv2, "fillPoly", lambda *a, **k: drawn.append(1))  # any drawing would be seen

    async def main():
        async with running(request_timeout_s=600) as (_, client):
            as_field = await post(client, encode(rand_image(512, 512)), spec)
            files = {"image": ("i", encode(rand_image(512, 512))), "spec": ("s.json", json.dumps(spec).encode())}
            as_file = await client.post("/convolve", files=files)
            return as_field, as_file

    as_field, as_file = run(main())
    for r in (as_field, as_file):
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "spec.roi.polygons"
    assert drawn == []  # refused from its cost, not attempted (it took 18 s once)


def test_outlines_cost_little_and_draw_as_a_union():
    t = np.linspace(0, 2 * np.pi, 4096, endpoint=False)
    ring = np.stack([300 + 290 * np.cos(t), 300 + 290 * np.sin(t)], 1).astype(int).tolist()
    assert draw_cost([ring] * 16, 600) < 10**7 < draw_cost([_scribble(4096, 600, 0)], 600)
    square = [[2, 2], [8, 2], [8, 8], [2, 8]]
    mask = build_mask(Roi(polygons=[square, square]), 10, 10)  # overlapping polygons: their union, no hole
    assert mask[5, 5] and mask.sum() == 49


def test_drawing_stops_at_the_deadline():
    roi = Roi(polygons=[[[0, 0], [5, 0], [5, 5]]] * 3)
    with pytest.raises(TimeoutError):
        build_mask(roi, 10, 10, deadline=time.perf_counter() - 1)


def test_too_many_vertices_in_all_is_422():
    spec = {"filter": GAUSS, "roi": {"polygons": [[[0, 0], [1, 0], [1, 1]] * 1000] * 30}}

    async def main():
        async with running() as (_, client):
            return await post(client, IMG, spec)

    r = run(main())
    assert r.status_code == 422 and r.json()["field"] == "spec.roi.polygons" and "65536" in r.json()["reason"]


# ---- 2. the spec limit holds however the spec arrives


@pytest.mark.parametrize("as_file", [False, True])
def test_spec_over_the_limit_is_413_naming_spec(as_file):
    big = json.dumps({"filter": GAUSS, "pad": "x" * 100_000})

    async def main():
        async with running(max_spec_bytes=65536) as (_, client):
            if as_file:
                return await client.post("/convolve", files={"image": ("i", IMG), "spec": ("s.json", big.encode())})
            return await post(client, IMG, big)

    r = run(main())
    assert r.status_code == 413 and r.json()["field"] == "spec", r.text


# ---- 3. TIFF size tags and the decoder's own limit


def test_tiff_with_duplicate_or_conflicting_size_tags_is_refused_before_decoding():
    for extra in ([(256, 20000)], [(257, 20000)]):
        data = tiff(20, 20, extra=extra)
        with pytest.raises(codec.DecodeError, match="more than once"):
            codec.decode(data, 10**6)
    assert codec.decode(tiff(20, 20), 10**6).pixels.shape == (20, 20, 1)


def test_create_app_caps_opencv_decoders_at_max_pixels(monkeypatch):
    monkeypatch.delenv("OPENCV_IO_MAX_IMAGE_PIXELS", raising=False)
    create_app(settings(max_pixels=123456))
    import os

    assert os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] == "123456"


def test_opencv_limit_stops_a_decoder_whose_header_disagrees_with_ours():
    # a child process whose OpenCV limit (set by create_app from MAX_PIXELS) is below what our header check admits:
    # the decoder refuses before allocating, as it would for a file whose two headers disagree
    import subprocess
    import sys

    from service_support import ROOT

    code = (
        "import numpy as np, cv2; from service.imaging import codec\n"
        "data = cv2.imencode('.png', np.zeros((100, 100), np.uint8))[1].tobytes()\n"
        "try:\n    codec.decode(data, 10**6)\nexcept codec.TooLarge as e:\n    print('TooLarge', e)\n"
    )
    env = {**__import__("os").environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "1000", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.startswith("TooLarge"), out.stdout + out.stderr


# ---- 5 and 6. 422 (not 500) naming the field, no internals, numbers strict and float32-finite


@pytest.mark.parametrize(
    ("image", "spec", "field", "absent"),
    [
        (npy(rand_image(6, 6, c=1, dtype=np.uint16).astype(">u2")), {}, "image", ""),
        (npy(rand_image(6, 6, c=3, dtype=np.float32).astype(">f4")), {}, "image", ""),
        (
            npy(header="{'descr': '|u1', 'fortran_order': False, 'shape': (4, 4, 1000000000000), }"),
            {},
            "image",
            "allocate",
        ),
        (npy(header="{'descr': '|u1', 'shape': (lambda: 1)}"), {}, "image", " at 0x"),
        (IMG, {"filter": {"name": "kernel", "weights": [[int("9" * 400)]]}}, "spec.filter.weights", "9999"),
        (IMG, {"filter": {"name": "kernel", "weights": [[1e308]]}}, "spec.filter.weights", ""),
        (IMG, {"filter": {"name": "kernel", "weights": [[3.5e38]]}}, "spec.filter.weights", ""),
        (encode(rand_image(4, 17000, c=1)), {"format": "webp"}, "spec.format", ""),
        (encode(rand_image(4, 66000, c=1)), {"format": "jpeg"}, "spec.format", ""),
        (IMG, {"filter": {"name": "gaussian", "ksize": [True, 1]}}, "spec.filter.ksize", ""),
        (IMG, {"filter": {"name": "gaussian", "ksize": "5"}}, "spec.filter.ksize", ""),
        (IMG, {"filter": GAUSS, "timeout_ms": True}, "spec.timeout_ms", ""),
    ],
    ids=[
        "npy >u2",
        "npy >f4",
        "npy alloc",
        "npy repr",
        "400 digits",
        "1e308",
        "3.5e38",
        "webp wide",
        "jpeg wide",
        "ksize bool",
        "ksize str",
        "timeout bool",
    ],
)
def test_bad_input_is_422_naming_the_field_without_internals(image, spec, field, absent):
    async def main():
        async with running(max_pixels=10**6) as (_, client):
            return await post(client, image, {"filter": GAUSS, **spec})

    r = run(main())
    assert r.status_code == 422, r.text
    assert r.json()["field"].startswith(field), r.text
    if absent:
        assert absent not in r.text


# ---- 4. slow clients: uploads bounded separately, body timeout, queue places only once the body is in


async def _slow_body(boundary: bytes, delay: float, chunks: int, size: int, sent: list | None):
    yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="i"\r\n\r\n'
    for _ in range(chunks):
        await asyncio.sleep(delay)
        if sent is not None:
            sent.append(size)
        yield b"x" * size


def _slow_post(client, delay: float, chunks: int, size: int = 1, sent: list | None = None):
    """A body that never ends in time: ``chunks`` chunks of ``size`` bytes, one every ``delay`` seconds."""
    boundary = b"slowboundary"
    headers = {"content-type": "multipart/form-data; boundary=slowboundary"}
    return client.post("/convolve", content=_slow_body(boundary, delay, chunks, size, sent), headers=headers)


async def _until(condition, what: str) -> None:
    """Wait for a state the test needs (polled; a guard against a hang, not a timing)."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never saw {what}")


def test_slow_upload_holds_no_queue_place_and_times_out_with_408():
    async def main():
        async with running(max_queue=1, body_timeout_s=0.6) as (app, client):
            slow = asyncio.create_task(_slow_post(client, 0.05, 100))
            await _until(lambda: app.state.roiconv.uploads == 1, "the slow upload begin")
            uploading = app.state.roiconv.uploads
            fast = await post(client, IMG, {"filter": GAUSS})  # the only queue place is free: the slow one is uploading
            slow = await slow
            metrics = (await client.get("/metrics")).text
            return uploading, fast, slow, metrics

    uploading, fast, slow, metrics = run(main())
    assert uploading == 1 and fast.status_code == 200
    assert slow.status_code == 408 and slow.json()["field"] == "body" and slow.headers["connection"] == "close"
    assert _metric(metrics, "roiconv_requests_total", filter="invalid", status="408") == 1


def test_uploads_beyond_max_uploads_get_429():
    async def main():
        async with running(max_uploads=1, body_timeout_s=600) as (app, client):
            # 20 KiB/s: above the rate under which an upload loses its slot to a new one
            slow = asyncio.create_task(_slow_post(client, 0.05, 12_000, size=1024))
            await _until(lambda: app.state.roiconv.uploads == 1, "the slow upload begin")
            second = await post(client, IMG, {"filter": GAUSS})
            slow.cancel()
            await asyncio.gather(slow, return_exceptions=True)
            return second

    r = run(main())
    assert r.status_code == 429 and r.json()["error"] == "uploads_full" and r.headers["Retry-After"] == "1"


def test_request_deadline_applies_to_the_upload():
    async def main():
        async with running(request_timeout_s=0.3, body_timeout_s=600) as (_, client):
            sent = []
            return await _slow_post(client, 0.05, 12_000, sent=sent), len(sent)

    r, sent = run(main())
    assert r.status_code == 408, r.text
    assert sent < 12_000  # the answer came before the body was sent: the request's deadline, not the body's


# ---- 7. every request counted once: disconnects 499, body-limit 413, 500 with its filter


async def _asgi_call(app, chunks: list[bytes], disconnect: bool, headers: list | None = None) -> list[dict]:
    sent: list[dict] = []
    body = iter(chunks)

    async def receive():
        try:
            chunk = next(body)
            return {"type": "http.request", "body": chunk, "more_body": True}
        except StopIteration:
            if disconnect:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    hdrs = headers or [(b"content-type", b"multipart/form-data; boundary=xyz")]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/convolve",
        "headers": hdrs,
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("t", 80),
        "client": ("c", 1),
        "root_path": "",
    }
    await app(scope, receive, send)
    return sent


def test_disconnect_mid_upload_is_counted_as_499_and_logged_at_info(caplog):
    async def main():
        async with running() as (app, client):
            await _asgi_call(
                app, [b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="i"\r\n\r\nab'], disconnect=True
            )
            return (await client.get("/metrics")).text

    with caplog.at_level("INFO"):
        metrics = run(main())
    assert _metric(metrics, "roiconv_requests_total", filter="invalid", status="499") == 1
    assert _metric(metrics, "roiconv_requests_total", filter="invalid", status="500") == 0
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_disconnect_while_a_rejected_body_is_discarded_is_still_counted():
    async def main():
        async with running(api_key="k") as (app, client):
            sent = await _asgi_call(app, [b"x" * 100], disconnect=True)
            return sent, (await client.get("/metrics", headers={"Authorization": "Bearer k"})).text

    sent, metrics = run(main())
    assert sent[0]["status"] == 401
    assert _metric(metrics, "roiconv_requests_total", filter="invalid", status="401") == 1
    assert _metric(metrics, "roiconv_rejected_total", reason="unauthorized") == 1


def test_body_limit_413_is_counted_and_500_carries_its_filter():
    def broken(op, works, device, models):
        raise RuntimeError("simulated fault")

    async def main():
        async with running(max_body_bytes=4096) as (app, client):
            too_big = await post(client, encode(rand_image(64, 64)), {"filter": GAUSS})
            app.state.roiconv.pool.run = broken
            adaptive = {"name": "adaptive_gaussian", "sigma_min": 0.5, "sigma_max": 2.0}  # the torch engine: the pool
            failed = await post(client, IMG, {"filter": adaptive})
            return too_big, failed, (await client.get("/metrics")).text

    too_big, failed, metrics = run(main())
    assert too_big.status_code == 413 and failed.status_code == 500
    assert _metric(metrics, "roiconv_requests_total", filter="invalid", status="413") == 1
    assert _metric(metrics, "roiconv_requests_total", filter="adaptive_gaussian", status="500") == 1


# ---- 8. drain: requests answered 503 are not work to wait for


def test_requests_answered_503_while_draining_do_not_hold_the_drain():
    async def main():
        async with running() as (app, client):
            state = app.state.roiconv
            state.draining = True
            stop = False

            async def retrying():
                while not stop:
                    await post(client, IMG, {"filter": GAUSS})

            registry = state.metrics.registry
            clients = [asyncio.create_task(retrying()) for _ in range(8)]
            busy = []
            while (
                registry.get_sample_value("roiconv_rejected_total", {"reason": "draining"}) or 0
            ) < 200:  # sample the drain's view while 200 requests are answered 503
                busy.append(state.busy)
                await asyncio.sleep(0)
            stop = True
            await asyncio.gather(*clients)
            return busy

    busy = run(main())
    assert busy and not any(busy)  # a request answered 503 never counts as work the drain waits for


# ---- 9. the memory budget


def test_budget_waits_then_admits_and_refuses_what_never_fits():
    async def main():
        budget = MemoryBudget(100)
        await budget.acquire(60, 1)
        second = asyncio.create_task(budget.acquire(60, 5))
        await asyncio.sleep(0.05)
        waiting = not second.done()
        budget.release(60)
        await second
        with pytest.raises(asyncio.TimeoutError):
            await budget.acquire(60, 0.05)
        with pytest.raises(NeverFits):
            await budget.acquire(101, 1)
        return waiting, budget.used

    waiting, used = run(main())
    assert waiting and used == 60


def test_request_that_can_never_fit_is_413():
    async def main():
        async with running(max_inflight_bytes=8 * 2**20) as (_, client):
            return await post(client, encode(rand_image(1000, 1000)), {"filter": GAUSS})

    r = run(main())
    assert r.status_code == 413 and r.json()["error"] == "too_much_memory" and r.json()["field"] == "image"


def test_large_dense_convolution_runs_in_bands_with_the_same_result():
    peak = estimate_peak(6000, 6000, 3, 1, "conv", 2**34)
    assert peak.bands > 1 and peak.bytes < 3 * 2**30
    assert estimate_peak(100, 100, 3, 1, "conv", 2**34).bands == 1
    x = torch.rand(3, 40, 30, dtype=torch.float64)
    w = torch.rand(3, 1, 5, 3, dtype=torch.float64)
    mask = torch.rand(40, 30) > 0.3
    out = torch.zeros(3, 40, 30, dtype=torch.float64)
    conv_in_bands(x, w, None, mask, out, 7, padding_mode="reflect", groups=3)
    ref = F.conv2d(F.pad(x[None], (1, 1, 2, 2), mode="reflect"), w, groups=3)[0]
    assert torch.allclose(out[:, mask], ref[:, mask]) and (out[:, ~mask] == 0).all()


def test_banded_request_equals_cv2():
    import cv2

    img = rand_image(90, 70)
    from service.imaging.filters import build_filter
    from service.imaging.spec import GaussianFilter
    from service.imaging.work import Work

    op = build_filter(GaussianFilter(name="gaussian", ksize=5), "reflect101")
    (res,) = run_batch(op, [Work(img, None, "keep", "same", bands=6)], torch.device("cpu"))
    assert np.abs(np.rint(res) - cv2.GaussianBlur(img, (5, 5), 0)).max() <= 1


def test_memory_limit_reads_cgroups_then_meminfo(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal:       16000000 kB\nMemFree: 1 kB\n")
    assert memory_limit(tmp_path) == 16000000 * 1024
    (tmp_path / "sys/fs/cgroup").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/memory.max").write_text("2147483648\n")
    assert memory_limit(tmp_path) == 2 * 2**30
    (tmp_path / "sys/fs/cgroup/memory.max").write_text("max\n")
    assert memory_limit(tmp_path) == 16000000 * 1024


# ---- 10. OpenAPI and the documented error shape


def test_openapi_publishes_the_spec_schema_and_405_has_the_error_shape():
    async def main():
        async with running() as (_, client):
            return (await client.get("/openapi.json")).json(), await client.get("/convolve"), await client.get("/docs")

    api, get, docs = run(main())
    schemas = api["components"]["schemas"]
    assert {"Spec", "Roi", "GaussianFilter", "KernelFilter", "Error"} <= set(schemas)
    body = api["paths"]["/convolve"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["properties"]["spec"] == {"$ref": "#/components/schemas/Spec"}
    assert body["encoding"]["spec"]["contentType"] == "application/json"
    assert get.status_code == 405 and get.json()["error"] == "method_not_allowed" and "POST" in get.headers["allow"]
    assert set(get.json()) == {"error", "field", "reason", "errors"}
    assert "components" in docs.text


def test_result_still_decodes_after_all_the_checks():
    async def main():
        async with running() as (_, client):
            return await post(client, IMG, {"filter": GAUSS})

    r = run(main())
    assert r.status_code == 200 and decode(r.content).shape == (24, 24, 3)


def test_an_escaped_exception_is_a_json_500_counted_once_with_its_filter(monkeypatch):
    import service.imaging.pipeline

    def explode(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(service.imaging.pipeline, "encode_result", explode)  # box: OpenCV encodes in pipeline

    async def main():
        async with running() as (_, client):
            r = await post(client, IMG, {"filter": {"name": "box", "ksize": 3}})
            return r, (await client.get("/metrics")).text

    r, metrics = run(main())
    assert r.status_code == 500 and r.json()["error"] == "internal_error" and "a bug" not in r.text
    assert _metric(metrics, "roiconv_requests_total", filter="box", status="500") == 1
