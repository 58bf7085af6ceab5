"""Every error path of POST /convolve: status, JSON body naming the field, and the server staying up."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest
from crafted import png_bomb
from service_support import decode, encode, post, rand_image, run, running

from service.imaging.torch_engine import run_batch

GAUSS = {"name": "gaussian", "ksize": 5}
BATCHED = {"name": "adaptive_gaussian", "sigma_min": 0.5, "sigma_max": 2.0}  # the torch engine: the batching pool
IMG = encode(rand_image(24, 24))


@pytest.mark.parametrize(
    ("spec", "field", "needle"),
    [
        ("{not json", "spec", "not valid JSON"),
        ({"filter": {"name": "nope"}}, "spec.filter", "unknown filter"),
        ({"filter": {"name": "gaussian", "ksize": 4}}, "spec.filter.ksize", "odd"),
        ({"filter": {"name": "gaussian", "ksize": 257}}, "spec.filter.ksize", "255"),
        ({"filter": {"name": "gaussian", "sigma": 0}}, "spec.filter.sigma", "greater than 0"),
        ('{"filter": {"name": "gaussian", "sigma": NaN}}', "spec.filter.sigma", "finite"),
        ('{"filter": {"name": "gaussian", "sigma": 1e999}}', "spec.filter.sigma", "finite"),
        ({"filter": {"name": "gaussian", "sigma": "2"}}, "spec.filter.sigma", "valid number"),
        ({"filter": GAUSS, "roi": {"polygons": [[]]}}, "spec.roi.polygons", "at least 3"),
        ({"filter": GAUSS, "roi": {"boxes": [[5, 5, 5, 9]]}}, "spec.roi.boxes", "empty"),
        ({"filter": GAUSS, "roi": {"circles": [[1, 1, -2]]}}, "spec.roi.circles", "negative"),
        ({"filter": GAUSS, "border": "mirror"}, "spec.border", ""),
        ({"filter": GAUSS, "colour": "red"}, "spec.colour", "colour: unknown field; valid fields: filter, roi"),
        ({"filter": {"name": "gaussian", "kernel_size": 9}}, "spec.filter.kernel_size", "did you mean ksize?"),
        ({"filter": "gaussian", "roi": {"box": [[0, 0, 4, 4]]}}, "spec.roi.box", "did you mean boxes?"),
        ({"filter": {"name": "gaussian", "ksize": "big"}}, "spec.filter.ksize", 'a number or "auto"'),
        ({"filter": {"name": "sobel", "dx": 0, "dy": 0}}, "spec.filter", "dx + dy"),
        ({"filter": {"name": "kernel", "weights": [[1, 2], [3, 4]]}}, "spec.filter.weights", "odd"),
        ({"filter": {"name": "kernel", "weights": [[1, "x", 1]]}}, "spec.filter.weights", ""),
        ({"filter": {"name": "model:missing"}}, "spec.filter", "unknown model"),
        ({"filter": {"name": "model:../../etc/passwd"}}, "spec.filter.name", ""),
        ({"filter": GAUSS, "format": "jpeg", "depth": "float32"}, "spec.format", "jpeg cannot hold float32"),
        ({"filter": {"name": "kernel", "weights": [[[[1]]]]}}, "spec.filter.weights", "C=1"),
    ],
)
def test_bad_spec_is_422_naming_the_field(spec, field, needle):
    async def main():
        async with running() as (_, client):
            return await post(client, IMG, spec)

    r = run(main())
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == field and needle in body["reason"]
    assert body["errors"][0]["field"] == field


def test_image_too_small_for_the_kernel_is_422():
    async def main():
        async with running() as (_, client):
            spec = {"filter": {"name": "adaptive_gaussian", "ksize": 31}}  # the torch engine pads inside the image
            return await post(client, encode(rand_image(10, 12)), spec)

    r = run(main())
    assert r.status_code == 422 and r.json()["field"] == "spec.filter.ksize" and "too small" in r.json()["reason"]


def _form(client, files: dict, data: dict):
    return client.post("/convolve", files=files, data=data)


@pytest.mark.parametrize(
    ("files", "data", "field"),
    [
        ({"other": ("x", b"1")}, {"spec": json.dumps({"filter": GAUSS})}, "image"),
        ({"image": ("a", IMG)}, {}, "spec"),
        ({"image": ("a", b"this is not an image")}, {"spec": json.dumps({"filter": GAUSS})}, "image"),
        ({"image": ("a", IMG[:200])}, {"spec": json.dumps({"filter": GAUSS})}, "image"),
        ({"image": ("a", IMG), "mask": ("m", encode(np.zeros((24, 25), np.uint8)))},
         {"spec": json.dumps({"filter": GAUSS})}, "mask"),
        ({"image": ("a", IMG), "mask": ("m", b"garbage")}, {"spec": json.dumps({"filter": GAUSS})}, "mask"),
    ],
    ids=["no-image", "no-spec", "not-an-image", "truncated", "mask-size", "mask-corrupt"],
)  # fmt: skip
def test_bad_form_is_422(files, data, field):
    async def main():
        async with running() as (_, client):
            return await _form(client, files, data)

    r = run(main())
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


def test_not_multipart_is_422():
    async def main():
        async with running() as (_, client):
            return await client.post("/convolve", json={"filter": GAUSS})

    r = run(main())
    assert r.status_code == 422 and r.json()["field"] == "body"


def test_image_over_max_pixels_is_413_from_the_header():
    async def main():
        async with running(max_pixels=1000) as (_, client):
            big = await post(client, encode(rand_image(40, 40)), {"filter": GAUSS})
            bomb = await post(client, png_bomb(60000, 60000), {"filter": GAUSS})
            ok = await post(client, encode(rand_image(30, 30)), {"filter": GAUSS})
            return big, bomb, ok

    big, bomb, ok = run(main())
    assert big.status_code == 413 and big.json()["field"] == "image"
    assert bomb.status_code == 413 and "60000x60000" in bomb.json()["reason"]
    assert ok.status_code == 200


def test_body_over_max_bytes_is_413_without_reading_it_all():
    sent = []

    async def chunks():
        yield b'--abc\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\n'
        for i in range(64):
            sent.append(i)
            yield b"x" * 1024

    async def main():
        async with running(max_body_bytes=4096) as (app, client):
            declared = await post(client, b"\0" * 8192, {"filter": GAUSS})
            streamed = await client.post(
                "/convolve", content=chunks(), headers={"content-type": "multipart/form-data; boundary=abc"}
            )
            metrics = (await client.get("/metrics")).text
            return declared, streamed, metrics

    declared, streamed, metrics = run(main())
    assert declared.status_code == 413 and declared.json()["field"] == "body"
    assert streamed.status_code == 413
    assert len(sent) < 64  # stopped reading once past the limit
    assert 'roiconv_rejected_total{reason="body_too_large"} 2.0' in metrics


def test_api_key_is_required_when_set():
    async def main():
        async with running(api_key="k3y") as (_, client):
            missing = await post(client, IMG, {"filter": GAUSS})
            wrong = await post(client, IMG, {"filter": GAUSS}, headers={"X-API-Key": "k3z"})
            right = await post(client, IMG, {"filter": GAUSS}, headers={"X-API-Key": "k3y"})
            health = await client.get("/readyz")
            return missing, wrong, right, health

    missing, wrong, right, health = run(main())
    assert missing.status_code == 401 and wrong.status_code == 401
    assert missing.json()["field"] == "X-API-Key"
    assert right.status_code == 200 and health.status_code == 200


class Gate:
    """A run function that blocks every batch until released (to fill the queue or pass a deadline)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, *args):
        self.event.wait(30)
        return run_batch(*args)


def test_full_queue_is_429_with_retry_after_and_the_rest_succeed():
    gate = Gate()

    async def main():
        async with running(max_queue=2, max_batch=1) as (app, client):
            app.state.roiconv.pool.run = gate
            pool = app.state.roiconv.pool

            async def until(cond):
                for _ in range(1000):
                    if cond():
                        return
                    await asyncio.sleep(0.01)

            tasks = [asyncio.create_task(post(client, IMG, {"filter": BATCHED}))]
            await until(lambda: pool.devices[0].load == 1)  # the first one computing (blocked)
            tasks += [asyncio.create_task(post(client, IMG, {"filter": BATCHED})) for _ in range(2)]
            await until(pool.queue.full)  # two waiting: the queue is full
            rejected = await post(client, IMG, {"filter": BATCHED})
            gate.event.set()
            done = await asyncio.gather(*tasks)
            metrics = (await client.get("/metrics")).text
            return rejected, done, metrics

    rejected, done, metrics = run(main())
    assert rejected.status_code == 429 and rejected.headers["Retry-After"] == "1"
    assert [r.status_code for r in done] == [200, 200, 200]
    assert 'roiconv_rejected_total{reason="queue_full"} 1.0' in metrics


def test_deadline_passed_is_504_and_server_continues():
    gate = Gate()

    async def main():
        async with running() as (app, client):
            app.state.roiconv.pool.run = gate
            late = await post(client, IMG, {"filter": BATCHED, "timeout_ms": 100})
            gate.event.set()
            ok = await post(client, IMG, {"filter": BATCHED})
            return late, ok

    late, ok = run(main())
    assert late.status_code == 504 and late.json()["error"] == "timeout"
    assert ok.status_code == 200


def test_failing_batch_fails_only_the_poisoned_request_and_worker_keeps_serving():
    def flaky(op, works, device, models):
        if any(w.pixels.shape[1] == 13 for w in works):
            raise RuntimeError("simulated kernel fault")
        return run_batch(op, works, device, models)

    async def main():
        async with running(max_batch_delay_ms=200.0) as (app, client):
            app.state.roiconv.pool.run = flaky
            images = [rand_image(20, 13 if i == 2 else 20, seed=i) for i in range(5)]
            batch = await asyncio.gather(*[post(client, encode(im), {"filter": BATCHED}) for im in images])
            after = await post(client, IMG, {"filter": BATCHED})
            ready = await client.get("/readyz")
            return batch, after, ready

    batch, after, ready = run(main())
    assert [r.status_code for r in batch] == [200, 200, 500, 200, 200]
    assert "simulated kernel fault" in batch[2].json()["reason"]
    assert decode(batch[0].content).shape == (20, 20, 3)
    assert after.status_code == 200 and ready.status_code == 200
    assert ready.json()["devices"]["cpu"]["failures"] >= 1


def test_mutated_images_never_cause_a_500():
    rng = np.random.default_rng(0)
    img = rand_image(32, 40, seed=1)
    cases = []
    for ext in (".png", ".jpg", ".tiff", ".bmp", ".webp"):
        data = bytearray(encode(img, ext))
        for _ in range(6):
            mutated = bytearray(data)
            for pos in rng.integers(0, min(len(data), 64), 3):
                mutated[pos] = int(rng.integers(0, 256))
            cases.append(bytes(mutated))
        cases.append(bytes(data[: len(data) // 3]))

    async def main():
        async with running(max_pixels=10**6) as (_, client):
            statuses = [(await post(client, c, {"filter": GAUSS})).status_code for c in cases]
            alive = await client.get("/livez")
            return statuses, alive

    statuses, alive = run(main())
    assert set(statuses) <= {200, 413, 422}, statuses
    assert 422 in statuses and alive.status_code == 200


@pytest.mark.parametrize("limit, expected_reads", [(10**6, 5), (2500, 3)])
def test_rejected_request_body_is_drained_up_to_the_limit(limit, expected_reads):
    from starlette.requests import Request

    from service.server.routes import discard_body

    chunks = [b"x" * 1000] * 5
    reads = []

    async def receive():
        reads.append(1)
        i = len(reads) - 1
        return {"type": "http.request", "body": chunks[i], "more_body": i < len(chunks) - 1}

    request = Request({"type": "http", "method": "POST", "headers": [], "path": "/convolve"}, receive)
    run(discard_body(request, limit))
    assert len(reads) == expected_reads  # everything read, or stopped just past the limit
