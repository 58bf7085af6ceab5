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
  one row took 18 s. The check inflates the data once, stopping one byte past the declared size, so it costs at
  most the inflation of a legitimate image of that size; the decoder then gets that data stored uncompressed (its
  own inflate is a copy), so a PNG's data is inflated once, not twice.
- TIFF tiles are checked where the size tags are read (``codec``): a tile larger than its image rounded up to the
  next 16 pixels (or ``MAX_TILE_SIDE``, whichever is larger) is refused, since the decoder allocates whole tiles.
"""

from __future__ import annotations

import logging
import struct
import zlib

import numpy as np

from .metadata import jpeg_segments

__all__ = ["MAX_SCAN_PIXELS", "MAX_TILE_SIDE", "MIN_SCANS", "check_structure", "jpeg_scan_count", "png_data_size"]

MAX_SCAN_PIXELS = 1_200_000_000
MIN_SCANS = 32
_MAX_SCANS = 500
MAX_TILE_SIDE = 1024
_IDAT_CRC = zlib.crc32(b"IDAT")

try:  # ISA-L's inflate: the same bytes as zlib's, 1.8x faster (a 4K photo's image data: 49 ms, zlib 87 ms)
    from isal import isal_zlib as _inflate
except ImportError:  # the service extra installs it
    _inflate = zlib
    logging.getLogger(__name__).info("isal is not installed: PNG image data is inflated with zlib (slower)")

_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # color type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def check_structure(data: bytes, fmt: str, width: int, height: int) -> bytes:
    """Raise ValueError (saying what is wrong) when decoding ``data`` would cost more than its declared size;
    returns the bytes to decode (a PNG's image data inflated here once, see :func:`_png_for_decoder`)."""
    if fmt == "jpeg":
        limit = max_scans(width * height)
        if _marker_bytes(data, 0xDA) <= limit:  # no more scans than that: no need to walk the segments
            return data
        scans = jpeg_scan_count(data)
        if scans > limit:
            raise ValueError(
                f"the JPEG has {scans} scans, more than the {limit} allowed for {width}x{height} pixels "
                "(a progressive encoder writes about 10)"
            )
    elif fmt == "png":
        return _png_for_decoder(data)
    return data


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


def _png_for_decoder(data: bytes) -> bytes:
    """The PNG to hand the decoder: its image data inflated once here, at most one byte past what the declared size
    needs (ValueError past it), and stored uncompressed in one IDAT chunk, so that the decoder's own inflate is a
    copy (the decoder inflated it a second time before: 90 ms of a 4K photo's 210). The file as it is when its data
    is corrupt or short: the decoder then says so after as much work as read so far."""
    if data[12:16] != b"IHDR":
        raise ValueError("corrupt PNG: IHDR chunk missing")
    expected = png_data_size(data[16:29])
    pos, view = 8, memoryview(data)
    head: list = []  # the chunks before the image data, then those after it
    tail: list = []
    compressed: list = []  # the IDAT chunks' data
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            compressed.append(view[pos + 8 : pos + 8 + length])
        else:
            (tail if compressed else head).append(view[pos : pos + 12 + length])
        if kind == b"IEND":
            break
        pos += 12 + length
    inflater = _inflate.decompressobj()
    try:  # one call: the output is the image data itself, bounded by what the rows need
        raw = inflater.decompress(b"".join(compressed), expected + 1)
    except (zlib.error, _inflate.error):
        return data
    if len(raw) > expected or inflater.unconsumed_tail:
        raise ValueError(f"the PNG's image data inflates to more than the {expected} bytes its declared size needs")
    if len(raw) != expected or not inflater.eof:
        return data
    return b"".join([view[:8], *head, *_stored_idat(raw), *tail])


_STORED_BLOCK = 65535  # the most bytes a stored deflate block holds


def _stored_idat(raw: bytes) -> list:
    """The parts of one IDAT chunk holding ``raw`` as a zlib stream of stored blocks ([len][IDAT][zlib header,
    blocks, adler32][crc]), written here rather than by ``zlib.compress(raw, 0)`` (which copies every byte through
    its deflate loop: 26 ms against 12 for a 4K photo's 25 MB), its checksums by the faster library."""
    view, n = memoryview(raw), len(raw)
    body: list = [b"\x78\x01"]  # zlib header: deflate, 32K window, no dictionary, fastest
    for i in range(0, max(n, 1), _STORED_BLOCK):
        size = min(_STORED_BLOCK, n - i)
        body += [struct.pack("<BHH", i + _STORED_BLOCK >= n, size, size ^ 0xFFFF), view[i : i + size]]
    body.append(struct.pack(">I", _inflate.adler32(raw)))
    crc = _IDAT_CRC
    for part in body:
        crc = _inflate.crc32(part, crc)
    length = sum(len(part) for part in body)
    return [struct.pack(">I4s", length, b"IDAT"), *body, struct.pack(">I", crc)]
