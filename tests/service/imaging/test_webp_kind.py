"""WebP out keeps the input's kind: a lossy WebP (or a JPEG) comes out lossy at about its size, a lossless WebP (or a
PNG) comes out lossless with the pixels outside the ROI exact. The oracle reads the kind from the RIFF chunk ids
(VP8 lossy, VP8L lossless) and the pixels with Pillow; the files are written by Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from service_support import post, run, running, smooth

SPEC = {"filter": {"name": "gaussian", "ksize": 9}, "roi": {"boxes": [[40, 40, 120, 100]]}}


def _webp(rgb: np.ndarray, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "WEBP", **options)
    return buf.getvalue()


def _kind(data: bytes) -> str:
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP", data[:16]
    return {b"VP8 ": "lossy", b"VP8L": "lossless"}[data[12:16]]


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _convolve(image: bytes, spec: dict) -> bytes:
    async def main():
        async with running() as (_, client):
            return await post(client, image, spec)

    r = run(main())
    assert r.status_code == 200, r.text
    return r.content


@pytest.fixture
def photo() -> np.ndarray:
    return smooth(320, 480, seed=3)[:, :, ::-1].copy()  # RGB


def test_a_lossy_webp_comes_out_lossy_at_about_its_size(photo):
    src = _webp(photo, quality=80)
    out = _convolve(src, SPEC)
    assert _kind(src) == _kind(out) == "lossy"
    assert len(out) <= 1.25 * len(src), (len(src), len(out))


def test_a_lossless_webp_comes_out_lossless_and_exact_outside_the_roi(photo):
    src = _webp(photo, lossless=True)
    out = _convolve(src, SPEC)
    assert _kind(out) == "lossless"
    outside = np.ones(photo.shape[:2], bool)
    outside[40:100, 40:120] = False
    np.testing.assert_array_equal(_rgb(out)[outside], photo[outside])
    assert (_rgb(out)[~outside] != photo[~outside]).any()


@pytest.mark.parametrize("source, kind", [("jpeg", "lossy"), ("png", "lossless")])
def test_webp_asked_for_keeps_the_kind_of_the_input(photo, source, kind):
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, source.upper())
    assert _kind(_convolve(buf.getvalue(), {**SPEC, "format": "webp"})) == kind
