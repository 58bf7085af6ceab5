"""The standing abuse suite, decode bombs: files whose decode would cost more than their
declared size, and ROI drawing measured on the canvas actually drawn. Each reproducer is scaled down to run in well
under a second once refused; without its check each is decoded (200) or drawn at length."""

from __future__ import annotations

import cv2
import pytest
from crafted import crop_bypass_spec, png_trailing_bomb, scan_bomb, tiff, tiled_tiff
from service_support import encode, post, rand_image, run, running

from service.imaging import codec, peak, pipeline, structure
from service.imaging.spec import Spec

SPEC = {"filter": {"name": "gaussian", "ksize": 3}}


def _answers(image: bytes, spec: dict = SPEC, mask: bytes | None = None, **settings) -> list:
    async def main():
        async with running(**settings) as (_, client):
            r = await post(client, image, spec, mask)
            small = await post(client, encode(rand_image(16, 16)), SPEC)
            return r, small

    return run(main())


BOMBS = {
    "progressive scans repeated": scan_bomb(512, 512, 1200),
    "zlib zeros after the last row": png_trailing_bomb(256 * 2**20),
    "a 4096x4096 tile on a 1x1 image": tiled_tiff(1, 1, 4096, 4096),
}


@pytest.mark.parametrize("name", list(BOMBS))
@pytest.mark.parametrize("budget_bytes", [None, 64 * 2**20])
def test_decode_bombs_are_422_naming_the_image_and_others_are_served(name, budget_bytes):
    r, small = _answers(BOMBS[name], max_inflight_bytes=budget_bytes)
    assert r.status_code == 422 and r.json()["field"] == "image", (name, r.text)
    assert small.status_code == 200


def test_legitimate_progressive_interlaced_and_tiled_images_still_decode():
    img = rand_image(40, 300, seed=4)
    progressive = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert structure.jpeg_scan_count(progressive) == 10  # libjpeg's script, counted by walking the segments
    assert codec.decode(progressive, 10**6).pixels.shape == (40, 300, 3)
    assert codec.decode(tiled_tiff(300, 40, 304, 48), 10**6).pixels.shape == (40, 300, 1)
    assert codec.decode(tiled_tiff(20, 20, 256, 256), 10**6).pixels.shape == (20, 20, 1)  # a common tile size
    for bits in (8, 16):
        for h, w in [(1, 1), (7, 5), (40, 300)]:
            data = encode(rand_image(h, w, dtype="uint16" if bits == 16 else "uint8"))
            assert codec.decode(data, 10**6).pixels.shape == (h, w, 3)


def test_png_data_size_counts_adam7_passes():
    # the passes of an interlaced 5x3 8-bit gray image: (cols, rows) 1x1, 0x1 (x0=4 < 5: 1x1), ... by hand
    ihdr = bytes.fromhex("00000005000000030800000001")
    passes = [(1, 1), (1, 1), (0, 0), (1, 1), (3, 1), (2, 2), (5, 1)]  # pass 3 (0, 4) starts below the image
    assert structure.png_data_size(ihdr) == sum(r * (1 + c) for c, r in passes if c and r)
    ihdr = bytes.fromhex("00000005000000030802000000")  # RGB, not interlaced
    assert structure.png_data_size(ihdr) == 3 * (1 + 15)


def test_scan_limit_follows_the_image_size():
    assert structure.max_scans(1) == 500 and structure.max_scans(40_000_000) == structure.MIN_SCANS
    assert structure.max_scans(6000 * 6000) * 6000 * 6000 <= max(structure.MAX_SCAN_PIXELS, 32 * 6000 * 6000)


def test_a_mask_of_another_size_is_refused_before_anything_is_decoded(monkeypatch):
    decoded = []
    real = codec.decode
    monkeypatch.setattr(codec, "decode", lambda data, *a, **k: decoded.append(len(data)) or real(data, *a, **k))
    mask = tiff(1024, 1024, bps=8)
    with pytest.raises(pipeline.Refused) as err:
        pipeline.prepare(Spec.model_validate(SPEC), encode(rand_image(1, 1)), mask, 10**7)
    assert err.value.status == 422 and err.value.field == "mask" and decoded == []


def test_the_mask_is_budgeted_at_the_image_size_not_its_header():
    spec = Spec.model_validate(SPEC)
    small = peak.request_peak(spec, encode(rand_image(1, 1)), tiff(6324, 6324, data=b"\0" * 64), 2**30, 10**8)
    assert small.bytes < 2**20


def test_polygons_are_costed_on_the_full_image_the_crop_draws_on():
    spec = crop_bypass_spec(100_000, polygons=1, points=512)  # 512 edges spanning 100,000 rows of a 40-wide image
    r, small = _answers(encode(rand_image(1, 1)), spec)
    assert r.status_code == 422 and r.json()["field"] == "spec.roi.polygons", r.text
    assert small.status_code == 200
