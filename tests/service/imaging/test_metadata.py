"""Container metadata on its own: the EXIF orientation read and applied as OpenCV's IMREAD_COLOR does (the oracle),
and format ↔ suffix for every format."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from crafted import jpeg_with_orientation, png_with_orientation

from service.imaging import metadata


@pytest.mark.parametrize("order", [">", "<"])
@pytest.mark.parametrize("value", range(1, 9))
def test_upright_by_the_stored_orientation_equals_opencv(value, order):
    stored = np.random.default_rng(value).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    jpeg = jpeg_with_orientation(cv2.imencode(".jpg", stored)[1].tobytes(), value, order)
    raw = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)  # as stored
    viewer = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)  # OpenCV applies the orientation
    assert metadata.orientation(jpeg, "jpeg") == value
    np.testing.assert_array_equal(metadata.upright(raw, metadata.orientation(jpeg, "jpeg")), viewer)
    png = png_with_orientation(cv2.imencode(".png", stored)[1].tobytes(), value)
    assert metadata.orientation(png, "png") == value


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff", b"\xff\xd8\x00\x00garbage", b"\x89PNG\r\n\x1a\n"])
def test_unreadable_metadata_is_orientation_1(data):
    assert metadata.orientation(data, "jpeg") == 1 and metadata.orientation(data, "png") == 1


def test_every_suffix_names_a_format_opencv_encodes_by_its_suffix():
    img = np.zeros((8, 8, 3), np.uint8)
    for suffix, fmt in metadata.SUFFIXES.items():
        assert metadata.format_of(f"a/b{suffix.upper()}") == fmt
        ok, _ = cv2.imencode(metadata.suffix_of(fmt), img)
        assert ok, fmt
    assert metadata.format_of("notes.txt") == ""
