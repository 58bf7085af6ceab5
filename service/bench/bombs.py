"""The abuse inputs (decode and drawing bombs), built here for the abuse probe (``python -m service.bench.abuse``)
and the abuse tests: each costs a decoder or the ROI drawing more than its declared size (and, before the checks,
the server minutes)."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

__all__ = ["crop_bypass_spec", "float_tiff", "png_chunk", "png_trailing_bomb", "scan_bomb", "tiled_tiff"]

_SHORT, _LONG = 3, 4


def _jpeg_scans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each scan: its SOS segment and the entropy-coded data up to the next marker."""
    out, pos = [], 2
    while data[pos + 1] != 0xD9:
        end = pos + 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if data[pos + 1] == 0xDA:
            while data[end] != 0xFF or data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                end += 1
            out.append((pos, end))
        pos = end
    return out


def scan_bomb(width: int, height: int, repeats: int) -> bytes:
    """A flat progressive JPEG whose last scan is repeated ``repeats`` more times (each a pass over the image)."""
    flat = np.full((height, width, 3), 128, np.uint8)
    data = cv2.imencode(".jpg", flat, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    start, end = _jpeg_scans(data)[-1]
    return data[:end] + data[start:end] * repeats + data[end:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_trailing_bomb(zeros: int) -> bytes:
    """A 1x1 gray PNG whose image data carries its one row and then ``zeros`` (a multiple of 1 MiB) zero bytes.

    Built fast: after a sync flush, each further MiB of zeros compresses to the same bytes, which are repeated; the
    stream ends with an empty final block and the Adler-32 of everything it inflates to."""
    block = bytes(2**20)
    squeeze = zlib.compressobj(9)
    first = squeeze.compress(b"\x00\x80" + block) + squeeze.flush(zlib.Z_SYNC_FLUSH)
    repeat = squeeze.compress(block) + squeeze.flush(zlib.Z_SYNC_FLUSH)
    assert squeeze.compress(block) + squeeze.flush(zlib.Z_SYNC_FLUSH) == repeat
    blocks = max(zeros // len(block), 1)
    adler = zlib.adler32(b"\x00\x80")
    for _ in range(blocks):
        adler = zlib.adler32(block, adler)
    stream = first + repeat * (blocks - 1) + b"\x03\x00" + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")


def tiled_tiff(width: int, height: int, tile_width: int, tile_length: int) -> bytes:
    """A gray 8-bit deflate TIFF of ``width`` x ``height`` stored as one ``tile_width`` x ``tile_length`` tile."""
    tile = zlib.compress(bytes(tile_width * tile_length), 9)
    entries = [
        (256, _LONG, width),
        (257, _LONG, height),
        (258, _SHORT, 8),
        (259, _SHORT, 8),  # deflate
        (262, _SHORT, 1),
        (277, _SHORT, 1),
        (322, _LONG, tile_width),
        (323, _LONG, tile_length),
        (324, _LONG, 8 + 2 + 12 * 10 + 4),  # the tile's offset: right after the one IFD
        (325, _LONG, len(tile)),
    ]
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, typ, value in entries:
        packed = struct.pack("<HI", value, 0)[:4] if typ == _SHORT else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, 1) + packed
    return bytes(out) + struct.pack("<I", 0) + tile


def float_tiff(height: int, width: int, value: float) -> bytes:
    """A float32 gray TIFF filled with ``value``, deflate-compressed (a 6324² mask of zeros is 348 KB)."""
    pixels = np.full((height, width), value, np.float32)
    return cv2.imencode(".tiff", pixels, [cv2.IMWRITE_TIFF_COMPRESSION, 8])[1].tobytes()


def crop_bypass_spec(rows: int, polygons: int = 3, points: int = 4096, width: int = 40) -> dict:
    """A spec for a 1x1 upload: zig-zag polygons spanning ``rows`` rows of a ``width`` x ``rows`` full image."""
    zigzag = [[x % width, 0 if x % 2 else rows - 1] for x in range(points)]
    return {
        "filter": {"name": "gaussian", "ksize": 3},
        "roi": {"polygons": [zigzag] * polygons},
        "crop": {"x": 0, "y": 0, "width": width, "height": rows},
    }
