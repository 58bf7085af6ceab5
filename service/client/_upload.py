"""What the client uploads, without OpenCV: PNG for uint8/uint16 pixels, npy for float32 (numpy and zlib only)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

__all__ = ["encode_png", "upload_part"]


def encode_png(pixels: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of uint8/uint16 pixels (H, W) or (H, W, C), C in 1, 3 (BGR), 4 (BGRA); numpy and zlib only.

    Every row uses PNG's "Up" filter (the byte difference with the row above), then zlib at ``level``.
    """
    a = np.asarray(pixels)
    if a.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG holds uint8 or uint16 pixels, got {a.dtype}; send float32 as npy")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"pixels must be (H, W) or (H, W, C) with C in 1, 3, 4, got shape {a.shape}")
    h, w, c = a.shape
    if c >= 3:
        a = a[:, :, [2, 1, 0, 3][:c]]  # BGR(A) → RGB(A), PNG's order
    a = np.ascontiguousarray(a, dtype=">u2" if a.dtype == np.uint16 else np.uint8)
    raw = a.reshape(h, -1).view(np.uint8)  # [H, W*C*bytes]
    rows = np.empty((h, raw.shape[1] + 1), np.uint8)  # [H, 1 + W*C*bytes]
    rows[:, 0] = 2  # filter type Up
    rows[:, 1:] = raw
    rows[1:, 1:] -= raw[:-1]  # wraps modulo 256, as PNG defines
    header = struct.pack(">IIBBBBB", w, h, 16 if a.dtype.itemsize == 2 else 8, {1: 0, 3: 2, 4: 6}[c], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows, level))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _npy(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(pixels), allow_pickle=False)
    return buf.getvalue()


def upload_part(pixels: np.ndarray) -> tuple[str, bytes, str]:
    """(filename, bytes, content type) of a multipart part for ``pixels``: PNG for uint8/uint16, npy otherwise."""
    if pixels.dtype in (np.uint8, np.uint16):
        return "image.png", encode_png(pixels), "image/png"
    return "image.npy", _npy(pixels), "application/x-npy"
