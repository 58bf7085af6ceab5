"""What a JPEG's header says that a block-level edit needs: the frame's size and sampling factors, each
component's quantization table, whether the file is progressive; :class:`~.turbojpeg.Unsupported` (naming why) for
the files whose blocks cannot be kept: CMYK/YCCK and Adobe-RGB, 12-bit, lossless, hierarchical, arithmetic-coded."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .metadata import jpeg_segments
from .turbojpeg import Unsupported

__all__ = ["JpegLayout", "ZIGZAG", "read_layout"]

ZIGZAG = np.array(
    [0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21]
    + [28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60]
    + [61, 54, 47, 55, 62, 63]
)  # natural (row-major) index of the k-th coefficient in zigzag order
_SOF_OK = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}
_SOF_REFUSED = {0xC3: "lossless", 0xC5: "hierarchical", 0xC6: "hierarchical", 0xC7: "hierarchical"}
_SOF_REFUSED |= {0xC9: "arithmetic-coded", 0xCA: "arithmetic-coded", 0xCB: "lossless", 0xCD: "hierarchical"}
_SOF_REFUSED |= {0xCE: "hierarchical", 0xCF: "lossless"}


@dataclass(frozen=True)
class JpegLayout:
    """What the block edit needs from a JPEG's header.

    ``sampling`` [(h, v)] per component (the luma's is the largest), ``tables`` the quantization table of each
    component (int32 [8, 8], natural order), ``mcu`` (width, height) in pixels.
    """

    width: int
    height: int
    sampling: tuple[tuple[int, int], ...]
    tables: tuple[np.ndarray, ...]
    progressive: bool

    @property
    def mcu(self) -> tuple[int, int]:
        return 8 * max(h for h, _ in self.sampling), 8 * max(v for _, v in self.sampling)

    def factors(self, c: int) -> tuple[int, int]:
        """(x, y) pixels per sample of component ``c``."""
        (mw, mh), (h, v) = self.mcu, self.sampling[c]
        return mw // (8 * h), mh // (8 * v)

    @property
    def padded(self) -> tuple[int, int]:
        """(width, height) rounded up to whole MCUs: every block of every component lies inside."""
        (mw, mh) = self.mcu
        return -(-self.width // mw) * mw, -(-self.height // mh) * mh

    def blocks(self, c: int) -> tuple[int, int]:
        """(columns, rows) of component ``c``'s own blocks, as libjpeg counts them (the MCU padding left out)."""
        fx, fy = self.factors(c)
        return -(-self.width // (8 * fx)), -(-self.height // (8 * fy))


def read_layout(data: bytes) -> JpegLayout:
    """The frame header and quantization tables of ``data``; Unsupported for what the block edit cannot keep."""
    tables: dict[int, np.ndarray] = {}
    frame = None
    adobe_transform, jfif = None, False
    try:
        for marker, pos, length in _segments(data):
            body = data[pos + 4 : pos + 2 + length]
            if marker == 0xDA:
                break
            if marker == 0xDB:
                tables |= _dqt(body)
            elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
                adobe_transform = body[11]
            elif marker == 0xE0 and body.startswith(b"JFIF\x00"):
                jfif = True
            elif marker in _SOF_REFUSED:
                raise Unsupported(f"{_SOF_REFUSED[marker]} JPEG (SOF{marker - 0xC0}) cannot be edited block by block")
            elif marker in _SOF_OK:
                frame = (marker, body)
    except (struct.error, IndexError) as exc:
        raise Unsupported(f"unreadable JPEG header ({type(exc).__name__})") from None
    if frame is None:
        raise Unsupported("no frame header (SOF) before the first scan")
    return _layout(frame, tables, adobe_transform, jfif)


def _segments(data: bytes):
    try:
        yield from jpeg_segments(data)
    except ValueError as exc:
        raise Unsupported(f"unreadable JPEG header ({exc})") from None


def _dqt(body: bytes) -> dict[int, np.ndarray]:
    tables, pos = {}, 0
    while pos < len(body):
        precision, tid = body[pos] >> 4, body[pos] & 15
        n = 128 if precision else 64
        values = np.frombuffer(body[pos + 1 : pos + 1 + n], ">u2" if precision else "u1").astype(np.int32)
        if values.size != 64:
            raise Unsupported("unreadable JPEG header: truncated quantization table (DQT)")
        table = np.empty(64, np.int32)
        table[ZIGZAG] = values
        tables[tid] = table.reshape(8, 8)
        pos += 1 + n
    return tables


def _layout(frame: tuple[int, bytes], tables: dict[int, np.ndarray], adobe: int | None, jfif: bool) -> JpegLayout:
    marker, body = frame
    precision, height, width, count = struct.unpack(">BHHB", body[:6])
    if precision != 8:
        raise Unsupported(f"{precision}-bit JPEG: only 8-bit samples can be edited block by block")
    if count == 4:
        raise Unsupported("CMYK/YCCK JPEG: the service filters BGR pixels; a 4-component file cannot keep its blocks")
    if count not in (1, 3):
        raise Unsupported(f"JPEG with {count} components: expected 1 (grayscale) or 3 (YCbCr)")
    if count == 3 and adobe == 0:
        raise Unsupported("RGB-coded JPEG (Adobe transform 0): only YCbCr colour JPEGs can be edited block by block")
    if count == 3 and adobe is None and not jfif and bytes(body[6:15:3]) == b"RGB":  # libjpeg's rule, no marker
        raise Unsupported("RGB-coded JPEG (component ids 'R', 'G', 'B'): only YCbCr JPEGs can be edited block by block")
    sampling, qts = [], []
    for i in range(count):
        _, hv, tq = body[6 + 3 * i : 9 + 3 * i]
        if tq not in tables:
            raise Unsupported(f"component {i} uses quantization table {tq}, which the file does not define")
        sampling.append((hv >> 4, hv & 15) if count > 1 else (1, 1))
        qts.append(tables[tq])
    hmax, vmax = max(h for h, _ in sampling), max(v for _, v in sampling)
    if any(hmax % h or vmax % v for h, v in sampling):
        raise Unsupported(f"sampling factors {sampling} are not integer ratios")
    return JpegLayout(width, height, tuple(sampling), tuple(qts), marker == 0xC2)
