"""The benchmarks' shared parts: the OpenCV floor does the work the service does (so the ratios compare like with
like), and a served benchmark's server starts, answers and stops."""

from __future__ import annotations

import cv2
import httpx
import numpy as np
import pytest

from service.bench.harness import floor_call, photo, serve
from service.imaging.pipeline import process
from service.imaging.spec import Spec


@pytest.mark.parametrize("filt", [{"name": "gaussian", "ksize": 15, "sigma": 4}, {"name": "pixelate", "block": 8}])
def test_the_floor_computes_what_the_pipeline_computes(filt):
    img = photo(160, 120, seed=3)
    data = cv2.imencode(".png", img)[1].tobytes()
    boxes = [[10, 12, 60, 50], [100, 70, 150, 118]]
    floor = cv2.imdecode(np.frombuffer(floor_call(data, filt, boxes, ".png"), np.uint8), cv2.IMREAD_UNCHANGED)
    body, _, _ = process(Spec.model_validate({"filter": filt, "roi": {"boxes": boxes}}), data, max_pixels=10**6)
    ours = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (floor != img).any()
    assert np.abs(floor.astype(int) - ours).max() <= 1  # OpenCV's fixed-point rounding at most


def test_serve_starts_a_ready_server_and_stops_it():
    with serve({"ROICONV_DEVICES": "cpu"}) as url:
        assert httpx.get(url + "/readyz", timeout=5).status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/livez", timeout=2)
