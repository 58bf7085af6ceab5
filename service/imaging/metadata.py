"""What image containers hold around the pixels: JPEG marker segments, PNG chunks, RIFF (WebP) chunks, the EXIF
orientation, ICC profiles, and which file suffix is which format.

- Reading: :func:`jpeg_segments` and :func:`png_chunks` walk the containers (the codec sizes a JPEG from its
  segments); :func:`orientation` reads the EXIF orientation (JPEG APP1, TIFF IFD0, WebP EXIF, PNG eXIf) and
  :func:`upright` applies it as cv2.imread does for IMREAD_COLOR (ApplyExifOrientation): OpenCV's
  ``IMREAD_UNCHANGED`` (needed for 16-bit and alpha) ignores it, and the ROI refers to the image as viewers show it.
- Writing: :func:`copy_metadata` puts a JPEG's or PNG's EXIF (orientation reset to 1: the pixels come out upright)
  and ICC profile into a re-encoded file of the same format.
- Names: :data:`SUFFIXES` (suffix → format), :func:`format_of` and :func:`suffix_of`.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "SUFFIXES",
    "copy_metadata",
    "format_of",
    "jpeg_segments",
    "orientation",
    "png_chunks",
    "suffix_of",
    "upright",
]

SUFFIXES = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".webp": "webp",
    ".bmp": "bmp",
}
"""File suffix (lower case) → format name, for the formats OpenCV reads and writes."""

# the end of entropy-coded data: 0xFF followed by neither a stuffed 0x00, a restart marker, nor another fill byte
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SUFFIX = {"png": ".png", "jpeg": ".jpg", "tiff": ".tiff", "webp": ".webp", "bmp": ".bmp"}
_KEPT_PNG_CHUNKS = (b"iCCP", b"eXIf", b"sRGB", b"gAMA", b"cHRM")  # color and EXIF: what the pixels need to look right


def format_of(path: str | Path) -> str:
    """The format of a file name by its suffix ("jpeg" for ``a.JPG``); "" when it is not an image suffix."""
    return SUFFIXES.get(Path(path).suffix.lower(), "")


def suffix_of(fmt: str) -> str:
    """The suffix OpenCV encodes ``fmt`` by (".jpg" for "jpeg")."""
    return _SUFFIX[fmt]


# --- containers -----------------------------------------------------------------------------------------------------


def jpeg_segments(data: bytes, *, scans: bool = False) -> Iterator[tuple[int, int, int]]:
    """The marker segments of a JPEG up to its end-of-image: (marker, offset of the 0xFF, length field).

    Stand-alone markers (SOI, TEM, RSTn) and fill bytes are skipped. Entropy-coded data after a start-of-scan (0xDA)
    is not parsed: callers that read metadata stop there; with ``scans`` the walk skips each scan's entropy-coded data
    to the next marker and goes on (every scan of a progressive JPEG). A byte that is not a marker raises ValueError.
    """
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"corrupt JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker == 0xD9:  # end of image
            return
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        yield marker, pos, length
        pos += 2 + length
        if scans and marker == 0xDA:
            found = _MARKER.search(data, pos)
            if found is None:
                return
            pos = found.start()


def _jpeg_head(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, whole segment) for each segment before the image data; stops at a bad marker."""
    try:
        for marker, pos, length in jpeg_segments(data):
            if marker == 0xDA:  # start of scan: the metadata is over
                return
            yield marker, data[pos : pos + 2 + length]
    except ValueError:  # not a marker where one should be
        return


def _is_exif(marker: int, segment: bytes) -> bool:
    return marker == 0xE1 and segment[4:10] == b"Exif\x00\x00"


def _is_icc(marker: int, segment: bytes) -> bool:
    return marker == 0xE2 and segment[4:16] == b"ICC_PROFILE\x00"


def png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, whole chunk with length and CRC) for each chunk of a PNG, up to IEND or the first damaged chunk."""
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos : pos + 12 + length]
        if len(chunk) < 12 + length or zlib.crc32(chunk[4:-4]) != struct.unpack(">I", chunk[-4:])[0]:
            return
        yield kind, chunk
        if kind == b"IEND":
            return
        pos += 12 + length


def _riff_chunk(data: bytes, tag: bytes) -> bytes | None:
    pos = 12
    while pos + 8 <= len(data):
        name, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if name == tag:
            body = data[pos + 8 : pos + 8 + size]
            return body[6:] if body.startswith(b"Exif\x00\x00") else body
        pos += 8 + size + (size & 1)
    return None


# --- EXIF orientation -----------------------------------------------------------------------------------------------


def orientation(data: bytes, fmt: str) -> int:
    """The EXIF orientation (1..8) stored in the file, 1 when absent or unreadable."""
    try:
        blob = _exif_blob(data, fmt)
        found = _orientation_entry(blob) if blob else None
    except (struct.error, IndexError, ValueError):
        return 1
    if found is None:
        return 1
    order, entry, typ = found
    value = struct.unpack(order + ("H" if typ == 3 else "I"), blob[entry + 8 : entry + (10 if typ == 3 else 12)])[0]
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
    """The TIFF structure holding the EXIF tags (from its byte-order mark on), or None."""
    if fmt == "tiff":
        return data
    if fmt == "jpeg":
        return next((seg[10:] for marker, seg in _jpeg_head(data) if _is_exif(marker, seg)), None)
    if fmt == "webp":
        return _riff_chunk(data, b"EXIF")
    if fmt == "png":
        for kind, chunk in png_chunks(data):
            if kind == b"eXIf":
                return chunk[8:-4]
            if kind == b"IDAT":
                return None
    return None


def _orientation_entry(tiff: bytes) -> tuple[str, int, int] | None:
    """(byte order, offset of the IFD0 entry of tag 0x0112 in ``tiff``, its type), or None when there is none."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return None
    (offset,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[offset : offset + 2])
    for i in range(min(count, 4096)):
        entry = offset + 2 + 12 * i
        tag, typ = struct.unpack(order + "HH", tiff[entry : entry + 4])
        if tag == 0x0112:
            return order, entry, typ
    return None


# --- copying metadata into a re-encoded file ------------------------------------------------------------------------


def copy_metadata(source: bytes, encoded: bytes, fmt: str) -> bytes:
    """``encoded`` with the EXIF and ICC profile of ``source`` put back (JPEG and PNG; others unchanged)."""
    if fmt == "jpeg" and source.startswith(b"\xff\xd8") and encoded.startswith(b"\xff\xd8"):
        kept = [
            _reset_orientation(seg) if _is_exif(marker, seg) else seg
            for marker, seg in _jpeg_head(source)
            if _is_exif(marker, seg) or _is_icc(marker, seg)
        ]
        return encoded[:2] + b"".join(kept) + encoded[2:] if kept else encoded
    if fmt == "png" and source.startswith(b"\x89PNG") and encoded.startswith(b"\x89PNG"):
        chunks = [chunk for kind, chunk in png_chunks(source) if kind in _KEPT_PNG_CHUNKS]
        if not chunks:
            return encoded
        ihdr_end = 8 + 12 + struct.unpack(">I", encoded[8:12])[0]
        return encoded[:ihdr_end] + b"".join(chunks) + encoded[ihdr_end:]
    return encoded


def _reset_orientation(segment: bytes) -> bytes:
    """The APP1 Exif segment with its Orientation tag (0x0112, SHORT) set to 1 (upright), when it has one."""
    tiff = 10  # offset of the TIFF header inside the segment
    try:
        found = _orientation_entry(segment[tiff:])
    except (struct.error, IndexError):
        return segment
    if found is None or found[2] != 3:
        return segment
    order, entry, _ = found
    at = tiff + entry + 8
    return segment[:at] + struct.pack(order + "H", 1) + segment[at + 2 :]
