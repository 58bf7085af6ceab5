"""Image decoding and encoding (OpenCV), with the size limits checked from the file header before decoding.

Pixels travel as numpy arrays (H, W, C) in OpenCV's channel order: gray (C=1), BGR (C=3) or BGRA (C=4), with depth
uint8, uint16 or float32. ``npy`` is accepted and produced as well (``allow_pickle=False``: never code).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "CONTENT_TYPES",
    "DecodeError",
    "Image",
    "TooLarge",
    "decode",
    "encode",
    "header_size",
    "sniff_format",
]

CONTENT_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "tiff": "image/tiff",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "npy": "application/x-npy",
}
_EXT = {"png": ".png", "jpeg": ".jpg", "tiff": ".tiff", "webp": ".webp", "bmp": ".bmp"}
_DEPTHS = {"png": ("uint8", "uint16"), "jpeg": ("uint8",), "webp": ("uint8",), "bmp": ("uint8",)}
_DEPTHS["tiff"] = ("uint8", "uint16", "float32")
_DEPTHS["npy"] = ("uint8", "uint16", "float32")
_NO_ALPHA = ("jpeg",)


class DecodeError(ValueError):
    """The bytes are not an image this server can read; the message says why."""


class TooLarge(ValueError):
    """The image has more pixels than allowed (decided from its header)."""


@dataclass
class Image:
    """Decoded pixels (H, W, C) and the format they came in."""

    pixels: np.ndarray
    format: str

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]


def sniff_format(data: bytes) -> str:
    """The container format from the magic bytes, or DecodeError."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"BM"):
        return "bmp"
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    raise DecodeError("unsupported or corrupt image: expected PNG, JPEG, TIFF, BMP, WebP or npy data")


def header_size(data: bytes, fmt: str) -> tuple[int, int]:
    """(width, height) read from the header alone, without decoding pixels; DecodeError when unreadable."""
    try:
        size = _HEADER_READERS[fmt](data)
    except (struct.error, IndexError, ValueError) as exc:
        raise DecodeError(f"corrupt {fmt} header: {exc}") from None
    if size is None or size[0] <= 0 or size[1] <= 0:
        raise DecodeError(f"corrupt {fmt} header: no valid image size found")
    return size


def _png_size(data: bytes) -> tuple[int, int]:
    if data[12:16] != b"IHDR":
        raise ValueError("IHDR chunk missing")
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"bad marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    found: dict[int, int] = {}
    for i in range(count):
        entry = data[offset + 2 + 12 * i : offset + 14 + 12 * i]
        tag, typ = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            found[tag] = struct.unpack(order + ("H" if typ == 3 else "I"), entry[8:10] if typ == 3 else entry[8:12])[0]
    if 256 not in found or 257 not in found:
        return None
    return found[256], found[257]


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    return None


def _bmp_size(data: bytes) -> tuple[int, int]:
    (dib,) = struct.unpack("<I", data[14:18])
    if dib == 12:
        return struct.unpack("<HH", data[18:22])
    w, h = struct.unpack("<ii", data[18:26])
    return w, abs(h)


def _npy_size(data: bytes) -> tuple[int, int]:
    shape, _, _ = _npy_header(io.BytesIO(data))
    return shape[1], shape[0]


def _npy_header(stream: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(stream)
    if len(shape) not in (2, 3):
        raise ValueError(f"npy image must have shape (H, W) or (H, W, C), got {shape}")
    return shape, fortran, dtype


_HEADER_READERS = {
    "png": _png_size,
    "jpeg": _jpeg_size,
    "tiff": _tiff_size,
    "webp": _webp_size,
    "bmp": _bmp_size,
    "npy": _npy_size,
}


def decode(data: bytes, max_pixels: int, *, field: str = "image") -> Image:
    """Decode ``data`` into (H, W, C) pixels; TooLarge (from the header, before decoding) or DecodeError."""
    if not data:
        raise DecodeError(f"{field} is empty")
    fmt = sniff_format(data)
    width, height = header_size(data, fmt)
    if width * height > max_pixels:
        raise TooLarge(f"{field} is {width}x{height} = {width * height} pixels, more than the limit {max_pixels}")
    if fmt == "npy":
        pixels = _decode_npy(data)
    else:
        try:
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as exc:
            raise DecodeError(f"corrupt {fmt} image: {str(exc).strip().splitlines()[-1]}") from None
        if pixels is None:
            raise DecodeError(f"corrupt or unsupported {fmt} image: OpenCV could not decode it")
    if pixels.shape[0] * pixels.shape[1] > max_pixels:
        raise TooLarge(f"{field} has {pixels.shape[0] * pixels.shape[1]} pixels, more than the limit {max_pixels}")
    return Image(_normalize(pixels, fmt), fmt)


def _decode_npy(data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DecodeError(f"corrupt npy image: {exc}") from None


def _normalize(pixels: np.ndarray, fmt: str) -> np.ndarray:
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise DecodeError(f"{fmt} image must have 1, 3 or 4 channels, got shape {pixels.shape}")
    if pixels.dtype == np.float64:
        pixels = pixels.astype(np.float32)
    if pixels.dtype.name not in ("uint8", "uint16", "float32"):
        raise DecodeError(f"unsupported pixel depth {pixels.dtype.name}: use 8- or 16-bit unsigned or float32")
    if pixels.dtype == np.float32 and not np.isfinite(pixels).all():
        raise DecodeError("float32 image contains NaN or infinity")
    return np.ascontiguousarray(pixels)


def check_encodable(fmt: str, depth: str, channels: int) -> str | None:
    """Why ``fmt`` cannot hold pixels of ``depth`` with ``channels`` channels, or None when it can."""
    if fmt not in CONTENT_TYPES:
        return f"unknown format {fmt!r}"
    if depth not in _DEPTHS[fmt]:
        allowed = sorted(f for f, d in _DEPTHS.items() if depth in d)
        return f"{fmt} cannot hold {depth} pixels; use one of {', '.join(allowed)}"
    if channels == 4 and fmt in _NO_ALPHA:
        return f"{fmt} cannot hold an alpha channel; use png, tiff, webp, bmp or npy"
    return None


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    """Encode (H, W, C) pixels as ``fmt``; the caller has checked :func:`check_encodable`."""
    if pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, pixels, allow_pickle=False)
        return buf.getvalue()
    ok, out = cv2.imencode(_EXT[fmt], pixels)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {pixels.dtype} {pixels.shape} image as {fmt}")
    return out.tobytes()
