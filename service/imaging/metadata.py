"""What image containers hold around the pixels, read: JPEG marker segments, PNG chunks, RIFF (WebP) chunks, the
EXIF orientation, ICC profiles, and which file suffix is which format. Writing an output's metadata is
:mod:`.scrub`'s.

- Containers: :func:`jpeg_segments`, :func:`png_chunks` and :func:`riff_chunks` walk them (the codec sizes a JPEG
  from its segments).
- Orientation: :func:`read_orientation` is the one reader (JPEG APP1, PNG eXIf, WebP EXIF, TIFF IFD0), saying
  whether every viewer would read the tag alike (``clean``) and whether the decoder already applied it (OpenCV turns
  a TIFF upright even with ``IMREAD_UNCHANGED``, which leaves the other formats as stored); :func:`upright` applies
  an orientation as cv2.imread does for IMREAD_COLOR (ApplyExifOrientation) and :func:`displayed` does both, so the
  ROI and detected boxes refer to the image as viewers show it.
- :func:`icc_profile`: the embedded colour profile of any of these formats.
- Names: :data:`SUFFIXES` (suffix → format), :func:`format_of` and :func:`suffix_of`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "SUFFIXES",
    "Orientation",
    "displayed",
    "format_of",
    "icc_profile",
    "inverse",
    "jpeg_end",
    "jpeg_segments",
    "orientation",
    "png_chunks",
    "read_orientation",
    "riff_chunks",
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
_SUFFIX = {"png": ".png", "jpeg": ".jpg", "tiff": ".tiff", "webp": ".webp", "bmp": ".bmp"}


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
            found = _next_marker(data, pos)
            if found is None:
                return
            pos = found


def jpeg_end(data: bytes) -> int:
    """The offset just past a JPEG's end-of-image marker, or ``len(data)`` when none is found: what follows it (an
    MPF second picture, a trailer) is not part of this image."""
    end = 2
    try:
        for _, pos, length in jpeg_segments(data, scans=True):
            end = pos + 2 + length
    except ValueError:
        return len(data)
    found = _next_marker(data, end)
    return found + 2 if found is not None and data[found + 1] == 0xD9 else len(data)


def _next_marker(data: bytes, pos: int) -> int | None:
    """The offset of the first marker (0xFF then a byte other than 0x00, RSTn or 0xFF) at or after ``pos``, or None.
    Entropy-coded data is full of 0xFF 0x00: found in NumPy over growing spans (a regular expression took 0.4 ms
    for a 1 MB scan)."""
    a, span = np.frombuffer(data, np.uint8), 1 << 16
    while pos < len(data) - 1:
        end = min(pos + span, len(data) - 1)
        ff = np.flatnonzero(a[pos:end] == 0xFF) + pos  # [n] the 0xFF bytes, each with a byte after it
        after = a[ff + 1]
        hit = np.flatnonzero((after != 0) & (after != 0xFF) & ((after < 0xD0) | (after > 0xD7)))
        if len(hit):
            return int(ff[hit[0]])
        pos, span = end, span * 4
    return None


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


def riff_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(fourcc, offset of the chunk's header, body size) for each chunk of a RIFF (WebP) file, up to its end or the
    first chunk that does not fit."""
    pos = 12
    while pos + 8 <= len(data):
        name, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if pos + 8 + size > len(data):
            return
        yield name, pos, size
        pos += 8 + size + (size & 1)


def _riff_body(data: bytes, pos: int, size: int) -> bytes:
    return data[pos + 8 : pos + 8 + size]


def _is_exif_like(marker: int, segment: bytes) -> bool:
    """An APP1 that a lenient reader takes for EXIF: ``Exif\\0`` and any sixth byte."""
    return marker == 0xE1 and segment[4:9] == b"Exif\x00"


# --- ICC profile ----------------------------------------------------------------------------------------------------


def icc_profile(data: bytes, fmt: str) -> bytes | None:
    """The ICC profile embedded in ``data`` (JPEG APP2 chunks in sequence order, PNG iCCP, WebP ICCP, TIFF tag
    34675), or None when there is none or it cannot be read whole."""
    try:
        if fmt == "jpeg":
            parts = sorted((seg[16], seg[18:]) for marker, seg in _jpeg_head(data) if _is_icc(marker, seg))
            return b"".join(p for _, p in parts) or None
        if fmt == "png":
            chunk = None
            for kind, c in png_chunks(data):  # iCCP comes before the image data (libpng ignores one after it)
                if kind in (b"iCCP", b"IDAT"):
                    chunk = c if kind == b"iCCP" else None
                    break
            if chunk is None:
                return None
            body = chunk[8:-4]
            return zlib.decompress(body[body.index(b"\x00") + 2 :])  # name, NUL, method 0, zlib data
        if fmt == "webp":
            return next((_riff_body(data, p, n) for name, p, n in riff_chunks(data) if name == b"ICCP"), None)
        if fmt == "tiff":
            return _tiff_icc(data)
    except (ValueError, IndexError, struct.error, zlib.error):
        return None
    return None


def _tiff_icc(data: bytes) -> bytes | None:
    order = {b"II": "<", b"MM": ">"}[data[:2]]
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    for i in range(min(count, 4096)):
        tag, typ, n, at = struct.unpack(order + "HHII", data[offset + 2 + 12 * i : offset + 14 + 12 * i])
        if tag == 34675 and typ in (1, 7) and n > 4:
            return data[at : at + n] if at + n <= len(data) else None
    return None


# --- EXIF orientation -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Orientation:
    """A file's EXIF orientation as this service reads it, once (:func:`read_orientation`).

    ``value`` (1..8) is what the file says, read leniently (a LONG-typed tag, an odd ``Exif`` header, the first of
    duplicated tags); ``clean`` is True when no viewer could read it otherwise: no tag at all, or one SHORT value
    1..8 in one EXIF block with a standard header. ``decoded`` is True when the decoder has already turned the
    pixels upright (OpenCV does for TIFF, even with ``IMREAD_UNCHANGED``).
    """

    value: int = 1
    clean: bool = True
    decoded: bool = False

    @property
    def pending(self) -> int:
        """The orientation still to apply to the decoder's pixels to show them as viewers do."""
        return 1 if self.decoded else self.value


def read_orientation(data: bytes, fmt: str) -> Orientation:
    """The EXIF orientation of ``data`` (JPEG APP1, PNG eXIf, WebP EXIF, TIFF IFD0): the one reader every path
    uses. An unreadable EXIF block counts as orientation 1, not clean."""
    decoded = fmt == "tiff"
    try:
        blobs = _exif_blobs(data, fmt)
        entries = [(standard, e) for standard, blob in blobs for e in _orientation_entries(blob)]
    except (struct.error, IndexError, ValueError):
        return Orientation(1, False, decoded)
    if not entries:
        return Orientation(1, all(standard for standard, _ in blobs) and len(blobs) <= 1, decoded)
    values = [v for _, (typ, count, v) in entries if typ in (3, 4) and count >= 1 and 1 <= v <= 8]
    value = values[0] if values else 1
    standard, (typ, count, _) = entries[0]
    clean = len(blobs) == 1 and len(entries) == 1 and standard and typ == 3 and count == 1 and bool(values)
    return Orientation(value, clean, decoded)


def orientation(data: bytes, fmt: str) -> int:
    """The EXIF orientation (1..8) stored in the file (:func:`read_orientation`'s value)."""
    return read_orientation(data, fmt).value


def displayed(pixels: np.ndarray, data: bytes, fmt: str) -> tuple[np.ndarray, Orientation]:
    """The decoder's ``pixels`` (H, W, C) of the file ``data`` as viewers show them, and the file's orientation."""
    found = read_orientation(data, fmt)
    return upright(pixels, found.pending), found


def inverse(value: int) -> int:
    """The orientation that undoes ``value``: upright(upright(a, v), inverse(v)) is ``a``."""
    return {6: 8, 8: 6}.get(value, value)


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


def _exif_blobs(data: bytes, fmt: str) -> list[tuple[bool, bytes]]:
    """Every TIFF structure holding EXIF tags (from its byte-order mark on), each with whether its container's
    header is the standard one (JPEG ``Exif\\0\\0``; a WebP EXIF chunk without that prefix)."""
    if fmt == "tiff":
        return [(True, data)]
    if fmt == "jpeg":
        return [(seg[9] == 0, seg[10:]) for marker, seg in _jpeg_head(data) if _is_exif_like(marker, seg)]
    if fmt == "webp":
        found = [_riff_body(data, pos, size) for name, pos, size in riff_chunks(data) if name == b"EXIF"]
        return [(not b.startswith(b"Exif\x00"), b[6:] if b.startswith(b"Exif\x00") else b) for b in found]
    if fmt == "png":
        found, after_data = [], False
        for kind, chunk in png_chunks(data):
            after_data |= kind == b"IDAT"
            if kind == b"eXIf":
                found.append((not after_data, chunk[8:-4]))
        return found
    return []


def _orientation_entries(tiff: bytes) -> list[tuple[int, int, int]]:
    """(type, count, first value) of every IFD0 entry of tag 0x0112 in ``tiff``."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        raise ValueError("no TIFF byte order")
    (offset,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[offset : offset + 2])
    found = []
    for i in range(min(count, 4096)):
        entry = offset + 2 + 12 * i
        tag, typ, n = struct.unpack(order + "HHI", tiff[entry : entry + 8])
        if tag == 0x0112:
            fmt = {3: "H", 4: "I", 8: "h", 9: "i"}.get(typ, "H")
            found.append((typ, n, struct.unpack(order + fmt, tiff[entry + 8 : entry + 8 + struct.calcsize(fmt)])[0]))
    return found
