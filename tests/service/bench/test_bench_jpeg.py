"""``python -m service.bench.jpeg`` runs and compares like with like (a smoke run on a small image)."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from service.bench import jpeg
from service.imaging import jpeg_roi


@pytest.mark.skipif(not jpeg_roi.available() and os.environ.get("CI") != "true", reason="libturbojpeg is not installed")
def test_floor_and_ours_blur_the_same_box():
    data = cv2.imencode(".jpg", jpeg.photo(256, 192))[1].tobytes()
    box = jpeg.centred_box(256, 192, 0.10)
    assert abs((box[2] - box[0]) * (box[3] - box[1]) / (256 * 192) - 0.10) < 0.01
    floor = cv2.imdecode(np.frombuffer(jpeg.floor_call(data, box), np.uint8), cv2.IMREAD_COLOR)
    ours = cv2.imdecode(np.frombuffer(jpeg.ours_call(data, box), np.uint8), cv2.IMREAD_COLOR)
    x0, y0, x1, y1 = box
    assert np.abs(floor[y0:y1, x0:x1].astype(int) - ours[y0:y1, x0:x1]).mean() < 2
