"""JPEG's pixel transforms for many 8×8 blocks at once, with OpenCV's SIMD loops and its thread setting: the 2-D
DCT as OpenCV's 1-D DCT of every 8-sample row (``cv2.dct`` with ``DCT_ROWS``, orthonormal as JPEG's), over the rows
then over the columns of all the blocks of a component in two calls; chroma up- and downsampling by ``cv2.resize``;
YCbCr ↔ BGR by ``cv2.cvtColor``. (A float32 matrix product with the 64×64 DCT basis costs the same with one BLAS
thread, but NumPy's and OpenCV's ``gemm`` run on OpenBLAS, whose threads took 0.2 to 19 ms for the same 1,152 blocks
on a busy 2-core machine.)

Measured against libjpeg-turbo's own decode (cv2.imdecode: islow integer IDCT, "fancy" upsampling): 82-98% of the
values equal, the rest within 4 levels (the float DCT rounds where libjpeg's fixed point truncates; OpenCV's
bilinear resize and YCrCb constants round a little differently): far inside what one JPEG re-encode changes, and
only where a filter reads. Forward: libjpeg's own steps (YCbCr rounded to 8 bits, box downsampling, DCT, division
by the table, rounding).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["downsample", "fdct", "from_blocks", "idct", "to_bgr", "to_blocks", "to_ycc", "upsample"]


def _dct2(blocks: np.ndarray, flags: int) -> np.ndarray:
    """The 2-D (inverse) DCT of float32 blocks (N, 64), row-major: OpenCV's 1-D DCT of every 8-sample row
    (``DCT_ROWS``, orthonormal as JPEG's), over the rows, then over the columns."""
    n = len(blocks)
    rows = cv2.dct(blocks.reshape(n * 8, 8), flags=flags | cv2.DCT_ROWS)  # [N*8 rows, 8]
    cols = np.ascontiguousarray(rows.reshape(n, 8, 8).transpose(0, 2, 1)).reshape(n * 8, 8)  # [N*8 columns, 8]
    return cv2.dct(cols, flags=flags | cv2.DCT_ROWS).reshape(n, 8, 8).transpose(0, 2, 1).reshape(n, 64)


def idct(coefs: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Samples (N, 64) uint8, row-major, of quantized blocks ``coefs`` (N, 64) int16 in natural order, with the
    component's quantization ``table`` (8, 8): dequantize, inverse DCT, level shift, round, clamp."""
    if len(coefs) == 0:
        return np.zeros((0, 64), np.uint8)
    out = _dct2(coefs * table.reshape(1, 64).astype(np.float32), cv2.DCT_INVERSE)  # [N, 64]
    out += 128.5
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)  # truncating x + 0.5: rounded


def fdct(samples: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Quantized blocks (N, 64) int16, natural order, of samples (N, 64) uint8 (row-major)."""
    if len(samples) == 0:
        return np.zeros((0, 64), np.int16)
    shifted = samples.astype(np.float32)
    shifted -= 128
    out = _dct2(shifted, 0)  # [N, 64]
    out /= table.reshape(1, 64).astype(np.float32)
    return np.rint(out).astype(np.int16)


def from_blocks(blocks: np.ndarray) -> np.ndarray:
    """A plane (rows*8, cols*8) of blocks (rows, cols, 64)."""
    rows, cols = blocks.shape[:2]
    return blocks.reshape(rows, cols, 8, 8).transpose(0, 2, 1, 3).reshape(rows * 8, cols * 8)


def to_blocks(plane: np.ndarray) -> np.ndarray:
    """The blocks (rows, cols, 64) of a plane (rows*8, cols*8) (a copy)."""
    rows, cols = plane.shape[0] // 8, plane.shape[1] // 8
    return plane.reshape(rows, 8, cols, 8).transpose(0, 2, 1, 3).reshape(rows, cols, 64)


def upsample(plane: np.ndarray, fx: int, fy: int) -> np.ndarray:
    """A component's samples (h, w) uint8 at full resolution (h*fy, w*fx): the triangle filter for 2× factors
    (libjpeg's "fancy" upsampling is bilinear at these sample positions), replication beyond 2× as libjpeg does."""
    if (fx, fy) == (1, 1):
        return plane
    size = (plane.shape[1] * fx, plane.shape[0] * fy)
    return cv2.resize(plane, size, interpolation=cv2.INTER_LINEAR if max(fx, fy) <= 2 else cv2.INTER_NEAREST)


def downsample(plane: np.ndarray, fx: int, fy: int) -> np.ndarray:
    """The mean of each fx × fy cell of ``plane`` (h, w) uint8, as libjpeg's encoder downsamples chroma."""
    if (fx, fy) == (1, 1):
        return plane
    return cv2.resize(plane, (plane.shape[1] // fx, plane.shape[0] // fy), interpolation=cv2.INTER_AREA)


def to_bgr(planes: list[np.ndarray]) -> np.ndarray:
    """BGR (H, W, 3) uint8 of the full-resolution (Y, Cb, Cr) planes, or gray (H, W, 1) of one plane."""
    if len(planes) == 1:
        return planes[0][:, :, None]
    return cv2.cvtColor(cv2.merge([planes[0], planes[2], planes[1]]), cv2.COLOR_YCrCb2BGR)  # [H, W, 3]


def to_ycc(pixels: np.ndarray) -> list[np.ndarray]:
    """The (Y, Cb, Cr) planes (H, W) uint8 of BGR pixels (H, W, 3), or the one plane of gray (H, W, 1)."""
    if pixels.shape[2] == 1:
        return [pixels[:, :, 0]]
    y, cr, cb = cv2.split(cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_BGR2YCrCb))
    return [y, cb, cr]
