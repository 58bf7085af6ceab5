"""A real uvicorn process on a loopback port: serving, and SIGTERM draining in-flight requests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import cv2
import httpx
import numpy as np
import pytest
import torch
from service_support import ROOT, decode, encode, rand_image

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")]


def _post(url: str, img: np.ndarray, spec: dict, timeout: float = 120) -> httpx.Response:
    files = {"image": ("image.png", encode(img), "image/png")}
    return httpx.post(url + "/convolve", files=files, data={"spec": json.dumps(spec)}, timeout=timeout)


def test_real_server_serves_and_counts(server_process):
    server = server_process()
    img = rand_image(50, 60)
    r = _post(server.url, img, {"filter": {"name": "sobel", "dx": 0, "dy": 1}, "roi": {"circles": [[30, 25, 15]]}})
    assert r.status_code == 200, r.text
    inside = np.zeros((50, 60), np.uint8)
    cv2.circle(inside, (30, 25), 15, 1, -1)
    inside = inside.astype(bool)
    out = decode(r.content)
    assert np.abs(out[inside].astype(int) - cv2.Sobel(img, -1, 0, 1)[inside]).max() <= 1
    assert np.array_equal(out[~inside], img[~inside])
    metrics = httpx.get(server.url + "/metrics").text
    assert 'roiconv_requests_total{filter="sobel",status="200"} 1.0' in metrics


class Slow(torch.nn.Module):
    """An identity CNN that takes a while: 3x3 identity convolutions applied many times."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            for c in range(3):
                self.conv.weight[c, c, 1, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(1000):
            x = self.conv(x)
        return x


def _inflight(url: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith('roiconv_inflight_requests{device="cpu"}'):
            return float(line.split()[-1])
    return 0.0


def test_sigterm_drains_in_flight_requests(server_process, tmp_path):
    torch.jit.script(Slow()).save(str(tmp_path / "slow.pt"))
    server = server_process({"ROICONV_MODELS_DIR": str(tmp_path), "ROICONV_DRAIN_TIMEOUT_S": "60"})
    img = rand_image(384, 384, seed=7)
    results: list[httpx.Response] = []
    client = threading.Thread(target=lambda: results.append(_post(server.url, img, {"filter": {"name": "model:slow"}})))
    client.start()
    deadline = time.monotonic() + 60
    while _inflight(server.url) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _inflight(server.url) == 1, "the slow request never started computing"
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    try:
        ready = httpx.get(server.url + "/readyz", timeout=5)
        refused = _post(server.url, rand_image(10, 10), {"filter": {"name": "box"}}, timeout=5)
        still_computing = _inflight(server.url)
    finally:
        client.join(120)
        if server.proc.poll() is not None:
            print(results and (results[0].status_code, results[0].text[:300]), server.stop())
    assert ready.status_code == 503 and ready.json()["draining"] is True
    assert refused.status_code == 503
    assert still_computing == 1, "the drain checks must run while the slow request is in flight"
    assert results and results[0].status_code == 200, results and results[0].text
    assert np.abs(decode(results[0].content).astype(int) - img).max() <= 1
    assert server.proc.wait(60) == 0
    assert "drained" in server.stop()


def test_module_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "--port" in out.stdout
