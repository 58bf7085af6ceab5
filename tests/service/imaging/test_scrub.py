"""The metadata policy on every output format, through the pipeline's per-file path (:func:`process`, the server's
own path): camera-like files (tests/service/crafted.py) lose everything that gives a person away by default, keep
their ICC profile and show the same picture in Pillow and cv2 (tests/service/metadata_oracle.py reads them back with
its own parsers); ``"metadata": "keep"`` copies the input's metadata byte for byte."""

from __future__ import annotations

import io

import numpy as np
import pytest
from crafted import SECRETS, XMP, camera_jpeg, camera_png, camera_tiff, camera_webp
from metadata_oracle import cv2_view, exif_blocks, leftovers, orientation_tag, pillow_view
from PIL import Image
from service_support import smooth

from service.imaging import jpeg_roi
from service.imaging.pipeline import process, unfiltered
from service.imaging.spec import Spec

BOX = [20, 30, 60, 70]  # in the displayed (upright) frame
CAMERA = {"jpeg": camera_jpeg, "png": camera_png, "webp": camera_webp, "tiff": camera_tiff}
needs_turbo = pytest.mark.skipif(not jpeg_roi.available(), reason="libturbojpeg is not installed")


def photo() -> np.ndarray:
    return smooth(96, 128, seed=4)  # stored 128 wide, 96 high: orientation 6 shows it 96 wide, 128 high


def run(data: bytes, **spec) -> tuple[bytes, dict]:
    spec = {"filter": {"name": "fill", "color": [0, 0, 255]}, "roi": {"boxes": [BOX]}, **spec}
    body, _, headers = process(Spec.model_validate(spec), data, max_pixels=10**7)
    return body, headers


def assert_filtered_where_shown(data: bytes, body: bytes) -> None:
    """Pillow and cv2 show the output alike; the box is red in that picture, the rest is the input as shown."""
    shown, seen = pillow_view(body), cv2_view(body)
    assert shown.shape == seen.shape and np.abs(shown.astype(int) - seen).max() <= 2
    before = pillow_view(data)
    assert shown.shape == before.shape
    x0, y0, x1, y1 = BOX
    inside = shown[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].astype(int)
    assert np.abs(inside - [0, 0, 255]).max() <= 12  # JPEG: within its quantization
    outside = np.ones(shown.shape[:2], bool)
    outside[y0 - 17 : y1 + 17, x0 - 17 : x1 + 17] = False  # the box's MCUs and the upsampling pixel
    assert np.abs(shown[outside].astype(int) - before[outside]).mean() < 3


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "tiff"])
def test_the_default_leaves_nothing_identifying_and_keeps_icc_and_the_picture(fmt):
    data, parts = CAMERA[fmt](photo())
    if fmt == "jpeg" and not jpeg_roi.available():
        pytest.skip("libturbojpeg is not installed")
    body, headers = run(data)
    assert leftovers(body, fmt) == []
    planted = [*SECRETS, XMP, *(parts[k] for k in ("thumbnail", "second") if k in parts)]
    assert not [p[:20] for p in planted if p in body]
    icc = parts["icc"][18:] if fmt == "jpeg" else parts["icc"]  # the JPEG helper gives the whole APP2 segment
    assert Image.open(io.BytesIO(body)).info.get("icc_profile") == icc
    assert_filtered_where_shown(data, body)
    if fmt == "jpeg":
        assert headers["X-JPEG"] == "blocks" and orientation_tag(body, fmt) == 6  # kept as stored, tag alone
    else:
        assert orientation_tag(body, fmt) == 1  # written upright


@needs_turbo
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_keep_copies_the_metadata_byte_for_byte(fmt):
    data, parts = CAMERA[fmt](photo())
    body, headers = run(data, metadata="keep")
    assert all(s in body for s in SECRETS) and parts["thumbnail"] in body and XMP in body
    if fmt == "jpeg":  # the blocks are kept as stored: every segment as it was, EXIF orientation included
        assert headers["X-JPEG"] == "blocks"
        assert all(parts[k] in body for k in ("exif", "xmp", "icc", "mpf", "iptc", "comment"))
    else:  # written upright: the same EXIF but its Orientation, now 1
        assert len(exif_blocks(body, fmt)) == 1 and orientation_tag(body, fmt) == 1
    assert_filtered_where_shown(data, body)


VARIANTS = {
    "short big-endian": {"order": ">"},
    "short little-endian": {"order": "<"},
    "long big-endian": {"order": ">", "typ": 4},
    "long little-endian": {"order": "<", "typ": 4},
    "listed twice": {"twice": True},
}


@needs_turbo
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_every_orientation_tag_gives_one_picture_in_every_viewer(fmt, variant):
    """A tag every viewer reads alike is kept (JPEG blocks) or applied (re-encoded); any other is applied as this
    service reads it (Pillow reads the same value) and dropped, so the output shows one picture everywhere."""
    data, _ = CAMERA[fmt](photo(), **VARIANTS[variant])
    body, headers = run(data)
    assert leftovers(body, fmt) == []
    assert_filtered_where_shown(data, body)
    clean = variant.startswith("short")
    assert orientation_tag(body, fmt) == (6 if clean and fmt == "jpeg" else 1)
    if fmt == "jpeg":
        assert headers["X-JPEG"] == "blocks" if clean else headers["X-JPEG"].startswith("re-encoded: its EXIF")


@pytest.mark.parametrize(
    ("make", "options"),
    [(camera_png, {"exif_after_data": True}), (camera_webp, {"exif_prefix": b"Exif\x00\x00"})],
    ids=["png eXIf after the image data", "webp EXIF with an Exif header"],
)
def test_exif_placed_where_viewers_differ_is_applied_and_dropped(make, options):
    data, _ = make(photo(), **options)
    fmt = "png" if make is camera_png else "webp"
    body, _ = run(data)
    assert leftovers(body, fmt) == [] and orientation_tag(body, fmt) == 1
    assert cv2_view(body).shape[:2] == pillow_view(body).shape[:2] == (128, 96)  # turned by the tag's 6


@needs_turbo
def test_an_odd_exif_header_fails_closed():
    """``Exif\\0\\xff``: some viewers read the tag, others do not; the pixels are written upright, the tag dropped."""
    data, _ = camera_jpeg(photo(), exif_header=b"Exif\x00\xff")
    body, headers = run(data)
    assert headers["X-JPEG"].startswith("re-encoded") and leftovers(body, "jpeg") == []
    assert orientation_tag(body, "jpeg") == 1
    assert cv2_view(body).shape[:2] == (128, 96)  # turned by the tag's 6, as the lenient viewers show it


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "tiff"])
def test_a_file_with_nothing_to_filter_keeps_its_coded_pixels(fmt):
    """``roiconv apply``'s copies: the pixels as they were (JPEG, PNG, WebP: the same coded data), the metadata
    stripped; ``keep`` gives the file back byte for byte."""
    data, _ = CAMERA[fmt](photo())
    body = unfiltered(data, "strip", max_pixels=10**7)
    assert leftovers(body, fmt) == [] and not [s for s in SECRETS if s in body]
    np.testing.assert_array_equal(pillow_view(body), pillow_view(data))
    assert unfiltered(data, "keep", max_pixels=10**7) == data


@needs_turbo
def test_an_rgb_coded_jpeg_is_reencoded_whole():
    """Components 'R', 'G', 'B' and no JFIF or Adobe marker: libjpeg decodes RGB; the block editor would write
    YCbCr into it (white came out (128, 128, 255))."""
    pixels = np.full((64, 64, 3), (200, 120, 40), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels[:, :, ::-1]).save(buf, "JPEG", keep_rgb=True, quality=95)
    rgb = buf.getvalue()
    at = rgb.index(b"\xff\xee")  # the Adobe marker Pillow writes: without it, only the component ids say RGB
    rgb = rgb[:at] + rgb[at + 2 + int.from_bytes(rgb[at + 2 : at + 4], "big") :]
    spec = {"filter": {"name": "fill", "color": [255, 255, 255]}, "roi": {"boxes": [[0, 0, 32, 32]]}}
    body, _, headers = process(Spec.model_validate(spec), rgb, max_pixels=10**6)
    assert headers["X-JPEG"].startswith("re-encoded: RGB-coded JPEG (component ids")
    out = cv2_view(body)
    assert (
        np.abs(out[4:28, 4:28].astype(int) - 255).max() <= 2
        and np.abs(out[40:, 40:].astype(int) - pixels[0, 0]).max() <= 3
    )


def test_an_encoders_png_with_nothing_to_add_is_written_as_it_is_and_anything_else_is_dropped():
    """A PNG of display chunks only comes back byte for byte; a text chunk among them, or bytes after IEND, are
    dropped (Pillow reads what is left: the same pixels, no text)."""
    import struct
    import zlib

    import cv2

    from service.imaging import scrub

    img = photo()
    body = cv2.imencode(".png", img)[1].tobytes()
    assert scrub.write(body, "png", None, None, "strip", 1) == body
    text = b"tEXt" + b"Author\x00someone"
    chunk = struct.pack(">I", len(text) - 4) + text + struct.pack(">I", zlib.crc32(text))
    at = body.index(b"IDAT") - 4
    for dirty in (body[:at] + chunk + body[at:], body + b"trailing bytes"):
        out = scrub.write(dirty, "png", None, None, "strip", 1)
        assert out == body
        with Image.open(io.BytesIO(out)) as shown:
            assert not shown.info.get("Author")
            np.testing.assert_array_equal(np.asarray(shown)[:, :, ::-1], img)
