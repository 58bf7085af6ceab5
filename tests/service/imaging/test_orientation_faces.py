"""A face on a turned photo, in every format, is hidden where viewers show it: the ROI drawn on the displayed photo
(and the faces ``roi.detect`` finds) land on the face, judged by CenterFace (tests/service/face_oracle.py) on the
output as Pillow shows it. OpenCV turns a TIFF upright itself; turning it again put the box beside the face."""

from __future__ import annotations

import io

import numpy as np
import pytest
from face_oracle import THRESHOLD, face_scene, face_score
from metadata_oracle import pillow_view
from PIL import Image

from service.imaging.pipeline import process
from service.imaging.spec import Spec

FORMATS = {"jpeg": ("JPEG", {"quality": 95}), "png": ("PNG", {}), "webp": ("WEBP", {"lossless": True})}
FORMATS["tiff"] = ("TIFF", {})


def turned(scene: np.ndarray, fmt: str) -> bytes:
    """``scene`` (BGR, as viewers should show it) stored turned, with EXIF orientation 6 saying how to show it."""
    stored = np.ascontiguousarray(np.rot90(scene, 1))  # orientation 6 turns this 90° clockwise: back to the scene
    exif = Image.Exif()
    exif[0x0112] = 6
    name, options = FORMATS[fmt]
    buf = io.BytesIO()
    image = Image.fromarray(stored[:, :, ::-1])
    if fmt == "tiff":
        image.save(buf, name, tiffinfo={274: 6})
    else:
        image.save(buf, name, exif=exif.tobytes(), **options)
    return buf.getvalue()


@pytest.mark.parametrize("roi", ["box", "detect"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_turned_face_is_hidden_where_it_is_shown(fmt, roi):
    if roi == "detect":
        pytest.importorskip("torch")
    scene, box = face_scene(100, 512)
    data = turned(scene, fmt)
    np.testing.assert_array_equal(pillow_view(data).shape, scene.shape)  # the oracle shows the scene upright
    assert face_score(pillow_view(data), box) >= 0.5
    where = {"boxes": [list(box)]} if roi == "box" else {"detect": {"what": "faces"}}
    body = process(Spec.model_validate({"filter": "gaussian", "roi": where}), data, max_pixels=10**7)[0]
    shown = pillow_view(body)
    assert face_score(shown, box) < THRESHOLD
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    outside = np.ones(scene.shape[:2], bool)
    outside[max(0, y0 - h) : y1 + h, max(0, x0 - w) : x1 + w] = False  # the ROI and its filter's reach
    assert np.abs(shown[outside].astype(int) - pillow_view(data)[outside]).mean() < 3  # the photo, not turned


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_detect_answers_boxes_in_the_displayed_frame(fmt):
    """POST /detect on a turned photo: the box lands on the face as viewers show it (TIFF was turned twice)."""
    pytest.importorskip("torch")
    from service_support import run, running

    scene, (x0, y0, x1, y1) = face_scene(100, 512)

    async def detect():
        async with running() as (_, client):
            files = {"image": ("image", turned(scene, fmt))}
            return await client.post("/detect", files=files, data={"spec": '{"what": "faces"}'})

    r = run(detect())
    assert r.status_code == 200, r.text
    (found,) = r.json()["detections"]
    bx0, by0, bx1, by1 = found["box"]
    inter = max(0, min(x1, bx1) - max(x0, bx0)) * max(0, min(y1, by1) - max(y0, by0))
    union = (x1 - x0) * (y1 - y0) + (bx1 - bx0) * (by1 - by0) - inter
    assert inter / union > 0.5, (found["box"], (x0, y0, x1, y1))
