"""EXIF orientation: read the tag (JPEG APP1, TIFF IFD0, WebP EXIF chunk, PNG eXIf chunk) and turn pixels upright.

OpenCV's ``IMREAD_UNCHANGED`` (needed for 16-bit and alpha) ignores the orientation; :func:`upright` applies it the
way cv2.imread does for IMREAD_COLOR (ApplyExifOrientation), so the ROI refers to the image as viewers show it.
"""

from __future__ import annotations

import struct

import numpy as np

from .codec import jpeg_segments

__all__ = ["orientation", "upright"]


def orientation(data: bytes, fmt: str) -> int:
    """The EXIF orientation (1..8) stored in the file, 1 when absent or unreadable."""
    try:
        blob = _exif_blob(data, fmt)
        value = _ifd0_orientation(blob) if blob else 1
    except (struct.error, IndexError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def upright(pixels: np.ndarray, value: int) -> np.ndarray:
    """``pixels`` (H, W, C) transformed for EXIF orientation ``value`` (as OpenCV's ApplyExifOrientation)."""
    if value in (5, 6, 7, 8):
        pixels = pixels.transpose(1, 0, 2)  # [W, H, C]
    if value in (2, 6):
        pixels = pixels[:, ::-1]
    elif value in (3, 7):
        pixels = pixels[::-1, ::-1]
    elif value in (4, 8):
        pixels = pixels[::-1]
    return np.ascontiguousarray(pixels) if value != 1 else pixels


def _exif_blob(data: bytes, fmt: str) -> bytes | None:
    if fmt == "tiff":
        return data
    if fmt == "jpeg":
        return _jpeg_exif(data)
    if fmt == "webp":
        return _riff_chunk(data, b"EXIF")
    if fmt == "png":
        return _png_chunk(data, b"eXIf")
    return None


def _jpeg_exif(data: bytes) -> bytes | None:
    try:
        for marker, pos, length in jpeg_segments(data):
            if marker == 0xDA:  # start of scan: the metadata is over
                return None
            if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
                return data[pos + 10 : pos + 2 + length]
    except ValueError:  # not a marker where one should be
        return None
    return None


def _riff_chunk(data: bytes, tag: bytes) -> bytes | None:
    pos = 12
    while pos + 8 <= len(data):
        name, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if name == tag:
            body = data[pos + 8 : pos + 8 + size]
            return body[6:] if body.startswith(b"Exif\x00\x00") else body
        pos += 8 + size + (size & 1)
    return None


def _png_chunk(data: bytes, tag: bytes) -> bytes | None:
    pos = 8
    while pos + 8 <= len(data):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        name = data[pos + 4 : pos + 8]
        if name == tag:
            return data[pos + 8 : pos + 8 + size]
        if name == b"IDAT":
            return None
        pos += 12 + size
    return None


def _ifd0_orientation(tiff: bytes) -> int:
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    (offset,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[offset : offset + 2])
    for i in range(min(count, 4096)):
        entry = tiff[offset + 2 + 12 * i : offset + 14 + 12 * i]
        tag, typ = struct.unpack(order + "HH", entry[:4])
        if tag == 0x0112:
            return (
                struct.unpack(order + "H", entry[8:10])[0] if typ == 3 else struct.unpack(order + "I", entry[8:12])[0]
            )
    return 1
