"""Checks of a file's structure, read before decoding, that bound a decode's cost by the image's declared size.

A decoder's time and memory should follow the width x height its header declares: that is what MAX_PIXELS and the
memory budget judge. These checks refuse the files whose structure would make the decoder do more:

- JPEG: each scan (SOS marker) of a progressive file is one more pass over every coefficient of the image. A
  repeated 59-byte AC scan costs the decoder ~35 ms on a 6000x6000 image (this project's 2-core CI machine, busy),
  so a 1.4 MB file of 20,000 scans would hold a thread for minutes. libjpeg's own progressive script writes 10 scans
  (6 for gray); the limit is ``MAX_SCAN_PIXELS`` scan-pixels (about 1.2 s of extra scans), never fewer than
  ``MIN_SCANS`` and never more than libjpeg-turbo's tools' 500.
- PNG: the image data (IDAT) must inflate to no more than its rows need (filter byte + packed samples per row, per
  Adam7 pass when interlaced). libpng inflates what follows the last row to look for its end: 8 GiB of zeros after
  one row took 18 s. The check inflates incrementally (1 MiB at a time, output dropped) and stops one byte past the
  declared size, so it costs at most the inflation of a legitimate image of that size.
- TIFF tiles are checked where the size tags are read (``codec``): a tile larger than its image rounded up to the
  next 16 pixels (or ``MAX_TILE_SIDE``, whichever is larger) is refused, since the decoder allocates whole tiles.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from .metadata import jpeg_segments

__all__ = ["MAX_SCAN_PIXELS", "MAX_TILE_SIDE", "MIN_SCANS", "check_structure", "jpeg_scan_count", "png_data_size"]

MAX_SCAN_PIXELS = 1_200_000_000
MIN_SCANS = 32
_MAX_SCANS = 500
MAX_TILE_SIDE = 1024
_INFLATE_STEP = 2**20

_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # color type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def check_structure(data: bytes, fmt: str, width: int, height: int) -> None:
    """Raise ValueError (saying what is wrong) when decoding ``data`` would cost more than its declared size."""
    if fmt == "jpeg":
        limit = max_scans(width * height)
        if _marker_bytes(data, 0xDA) <= limit:  # no more scans than that: no need to walk the segments
            return
        scans = jpeg_scan_count(data)
        if scans > limit:
            raise ValueError(
                f"the JPEG has {scans} scans, more than the {limit} allowed for {width}x{height} pixels "
                "(a progressive encoder writes about 10)"
            )
    elif fmt == "png":
        _check_png_data(data)


def _marker_bytes(data: bytes, code: int) -> int:
    """How many times the bytes 0xFF ``code`` occur in ``data``: at least the number of such markers (counted in
    NumPy: bytes.count took 1 ms on a 1 MB JPEG, whose entropy data is full of 0xFF 0x00)."""
    a = np.frombuffer(data, np.uint8)
    at = np.flatnonzero(a[1:] == code)  # [n] positions of the code byte, less one
    return int(np.count_nonzero(a[at] == 0xFF))


def max_scans(pixels: int) -> int:
    """The most scans a JPEG of ``pixels`` pixels may have."""
    return max(MIN_SCANS, min(_MAX_SCANS, MAX_SCAN_PIXELS // max(pixels, 1)))


def jpeg_scan_count(data: bytes) -> int:
    """The number of start-of-scan markers, found by walking the marker segments and skipping entropy-coded data
    (so that bytes inside metadata are not counted); ValueError on a byte where a marker should be."""
    return sum(marker == 0xDA for marker, _, _ in jpeg_segments(data, scans=True))


def png_data_size(ihdr: bytes) -> int:
    """The bytes a PNG's image data inflates to, from its 13-byte IHDR: per row one filter byte and the packed
    samples, per Adam7 pass when interlaced."""
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    if color not in _PNG_SAMPLES:
        raise ValueError(f"corrupt PNG: unknown color type {color}")
    bits = depth * _PNG_SAMPLES[color]
    if not interlace:
        return height * (1 + (width * bits + 7) // 8)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        cols, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if cols > 0 and rows > 0:
            total += rows * (1 + (cols * bits + 7) // 8)
    return total


def _check_png_data(data: bytes) -> None:
    """Inflate the IDAT chunks in steps, dropping the output, and stop one byte past what the rows need."""
    if data[12:16] != b"IHDR":
        raise ValueError("corrupt PNG: IHDR chunk missing")
    expected = png_data_size(data[16:29])
    inflater, produced, pos, view = zlib.decompressobj(), 0, 8, memoryview(data)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IEND":
            break
        if kind == b"IDAT" and not inflater.eof:
            pending = view[pos + 8 : pos + 8 + length]
            while pending and not inflater.eof:
                try:
                    produced += len(inflater.decompress(pending, min(_INFLATE_STEP, expected - produced + 1)))
                except zlib.error:
                    return  # corrupt data: the decoder refuses it, after as much work as read so far
                if produced > expected:
                    raise ValueError(
                        f"the PNG's image data inflates to more than the {expected} bytes its declared size needs"
                    )
                pending = inflater.unconsumed_tail
        pos += 12 + length
