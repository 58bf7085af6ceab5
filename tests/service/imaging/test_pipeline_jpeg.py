"""The pipeline's encode step for JPEG in, JPEG out (service/imaging/pipeline.py → jpeg_roi), end to end through
:func:`process`: cv2.imdecode of the upload and of the response is the oracle."""

from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from service.imaging import jpeg_roi
from service.imaging.pipeline import process
from service.imaging.spec import Spec

pytestmark = pytest.mark.skipif(
    not jpeg_roi.available() and os.environ.get("CI") != "true",  # CI installs it (.ci/run): a failure there
    reason="libturbojpeg is not installed (Debian: apt-get install libturbojpeg0)",
)


def photo(width: int = 512, height: int = 384) -> np.ndarray:
    rng = np.random.default_rng(7)
    small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def jpeg_with_metadata(img: np.ndarray, orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x010F], exif[0x0112] = "DashCam", orientation
    buf = io.BytesIO()
    Image.fromarray(img[:, :, ::-1]).save(buf, "JPEG", quality=90, exif=exif.tobytes(), icc_profile=b"icc" * 100)
    return buf.getvalue()


def run(data: bytes, **spec) -> tuple[bytes, dict]:
    spec = {"filter": {"name": "gaussian", "ksize": 15, "sigma": 5}, "roi": {"boxes": [[100, 80, 260, 200]]}, **spec}
    body, media, headers = process(Spec.model_validate(spec), data, max_pixels=10**8)
    assert media == "image/jpeg"
    return body, headers


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)


@pytest.mark.parametrize("policy", ["strip", "keep"])
def test_a_jpeg_comes_back_with_only_the_roi_blocks_changed_and_its_metadata_by_the_policy(policy):
    data = jpeg_with_metadata(photo())
    body, headers = run(data, metadata=policy)
    assert headers["X-JPEG"] == "blocks"
    changed = (decode(data) != decode(body)).any(2)
    ring = np.zeros(changed.shape, bool)
    ring[80 - 1 : 208 + 1, 96 - 1 : 272 + 1] = True  # the box's 16-pixel MCUs, one upsampling pixel around
    assert changed[80:200, 100:260].mean() > 0.5 and not changed[~ring].any()
    assert 0.95 < len(body) / len(data) < 1.03
    app1, app2 = (_segment(data, marker) for marker in (b"\xff\xe1", b"\xff\xe2"))
    assert app2 in body  # the ICC profile, always
    assert (app1 in body and b"DashCam" in body) == (policy == "keep") and (b"Exif" in body) == (policy == "keep")


def _segment(data: bytes, marker: bytes) -> bytes:
    at = data.index(marker)
    return data[at : at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")]


def test_the_roi_follows_the_exif_orientation_and_the_file_keeps_it():
    stored = photo()
    data = jpeg_with_metadata(stored, orientation=6)  # viewers turn it 90° clockwise: upright is 384 × 512
    body, headers = run(data)
    assert headers["X-JPEG"] == "blocks"
    upright_before = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    upright_after = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert upright_after.shape == (512, 384, 3)
    changed = (upright_before != upright_after).any(2)
    ys, xs = np.nonzero(changed)
    assert 80 - 17 <= ys.min() and ys.max() < 200 + 17 and 100 - 17 <= xs.min() and xs.max() < 260 + 17


def test_png_to_jpeg_uses_the_quality_option():
    png = cv2.imencode(".png", photo())[1].tobytes()
    low, _ = run(png, format="jpeg", quality=40)
    high, _ = run(png, format="jpeg")
    assert len(low) < 0.6 * len(high)


def test_a_cmyk_jpeg_is_reencoded_and_says_why():
    buf = io.BytesIO()
    Image.fromarray(photo()[:, :, ::-1]).convert("CMYK").save(buf, "JPEG")
    _, headers = run(buf.getvalue())
    assert headers["X-JPEG"].startswith("re-encoded: CMYK")
