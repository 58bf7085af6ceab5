"""Decoding with limits from the header, encoding to every format."""

from __future__ import annotations

import zlib

import cv2
import numpy as np
import pytest
from crafted import png_bomb
from service_support import encode, rand_image

from service.imaging import codec


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tiff", ".webp", ".bmp", ".npy"])
def test_header_size_matches_the_image(ext):
    img = rand_image(37, 53)
    data = encode(img, ext)
    fmt = codec.sniff_format(data)
    assert codec.header_size(data, fmt) == (53, 37)
    assert codec.decode(data, 10**6).pixels.shape == (37, 53, 3)


def test_lossy_webp_header():
    data = cv2.imencode(".webp", rand_image(20, 30), [cv2.IMWRITE_WEBP_QUALITY, 50])[1].tobytes()
    assert codec.header_size(data, "webp") == (30, 20)


def test_too_many_pixels_is_decided_from_the_header():
    # the header claims 100000 x 100000 and no pixel data follows: decoding would fail, the header check comes first
    with pytest.raises(codec.TooLarge, match="100000x100000"):
        codec.decode(png_bomb(100000, 100000), 40_000_000)


@pytest.mark.parametrize("data", [b"", b"hello world", b"\x89PNG\r\n\x1a\n" + b"\0" * 30, b"\xff\xd8\xff" + b"\0" * 20])
def test_corrupt_input(data):
    with pytest.raises(codec.DecodeError):
        codec.decode(data, 10**6)


def test_truncated_png_is_corrupt():
    data = encode(rand_image(40, 40))
    with pytest.raises(codec.DecodeError):
        codec.decode(data[: len(data) // 2], 10**6)


@pytest.mark.parametrize(
    ("dtype", "fmt"), [(np.uint8, "png"), (np.uint16, "png"), (np.uint16, "tiff"), (np.float32, "tiff"),
                       (np.float32, "npy"), (np.uint8, "webp"), (np.uint8, "bmp")]
)  # fmt: skip
def test_lossless_round_trips(dtype, fmt):
    img = rand_image(16, 24, 3, dtype)
    assert codec.check_encodable(fmt, np.dtype(dtype).name, 3) is None
    back = codec.decode(codec.encode(img, fmt), 10**6).pixels
    assert back.dtype == dtype and np.array_equal(back, img)


def test_formats_that_cannot_hold_the_result():
    assert "jpeg cannot hold float32" in codec.check_encodable("jpeg", "float32", 3)
    assert "alpha" in codec.check_encodable("jpeg", "uint8", 4)
    assert codec.check_encodable("png", "uint16", 4) is None


def test_npy_with_objects_is_refused():
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}] * 4, dtype=object).reshape(2, 2), allow_pickle=True)
    with pytest.raises(codec.DecodeError):
        codec.decode(buf.getvalue(), 10**6)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 21844, 1), (3, 21844, 1), (3, 21845, 1), (40, 900, 3), (300, 500, 3)])
def test_the_png_handed_to_the_decoder_decodes_as_the_original(shape):
    """The image data is inflated once and handed over in stored deflate blocks (at most 65535 bytes each: the
    shapes put the rows' bytes below, at and past one block): zlib and cv2 read it as the original file."""
    img = np.random.default_rng(shape[1]).integers(0, 256, shape, dtype=np.uint8)
    data = cv2.imencode(".png", img)[1].tobytes()
    fmt, _, _, handed = codec.check(data, 10**7)
    assert fmt == "png" and handed != data
    idat = handed[handed.index(b"IDAT") + 4 : handed.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == shape[0] * (1 + shape[1] * shape[2])
    want = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(handed, np.uint8), cv2.IMREAD_UNCHANGED), want)
    np.testing.assert_array_equal(codec.decode(data, 10**7).pixels.reshape(want.shape), want)
