"""cv2.GaussianBlur's 8-bit result for large kernels, computed only where a ROI needs it, bit for bit.

OpenCV blurs 8-bit images in fixed point: the kernel's taps are integers summing to 256 (8 fractional bits); the
horizontal pass sums ``tap × pixel`` exactly (at most 255 · 256), the vertical pass sums ``tap × row sum`` exactly (at
most 255 · 256², below 2²⁴) and rounds once, ``(sum + 2¹⁵) >> 16``. Every value is an integer below 2²⁴, so float32
arithmetic holds it exactly in any order: both passes can run as matrix products (a banded Toeplitz matrix of the
taps) and give OpenCV's pixels exactly.

OpenCV on a ROI's window computes every pixel of the window, halo included, with ``k`` taps per pixel and pass;
here the horizontal pass computes only the ROI's columns (for the window's rows) and the vertical pass only the ROI's
rows, each as one dense matrix product — for a face-sized ROI with its auto kernel (``ksize`` ≈ ¾ of its side) about
as many multiply-adds as OpenCV's, at matrix-product speed (a 160-pixel face, 119 taps: 2.5 ms of CPU against
cv2.GaussianBlur's 18.5 ms on its window, one core, measured).

The taps are read off OpenCV's own output (an impulse of 255 in a one-row image, kernel height 1: each output pixel
is its tap while taps stay at most 128/256, which their sum of 256 checks), and the whole scheme is checked once
per process against cv2.GaussianBlur on a random probe; when either check fails the caller falls back to
cv2.GaussianBlur and the fact is logged once.
"""

from __future__ import annotations

import contextlib
import logging
from functools import lru_cache

import cv2
import numpy as np

__all__ = ["WIDE_KSIZE", "wide_gaussian"]

log = logging.getLogger("roiconv.imaging")

WIDE_KSIZE = 31  # kernels at least this wide (either axis) may take this path; below, OpenCV's pass is faster
# The products multiply-add the whole window row against the ROI's columns (dense, not banded), OpenCV only the k
# taps; measured on one core (1080p frame, ROIs 30..800 px, k 9..255), a product's multiply-add costs a quarter to
# a seventh of OpenCV's, so the products are taken while they need at most this many times OpenCV's multiply-adds
# (a face with its auto kernel: about 1×; a 400 px box with a 63-tap kernel: 6×, where OpenCV was faster).
_PRODUCT_ADVANTAGE = 3.0
_ONE = 256  # the fixed-point taps' sum (8 fractional bits)
_SHIFT = 65536.0  # 2¹⁶: the vertical pass's sum has 16 fractional bits


def wide_gaussian(
    planes: np.ndarray, rect: tuple[int, int, int, int], ksize: tuple[int, int], sigma: tuple[float, float], flag: int
) -> np.ndarray | None:
    """cv2.GaussianBlur(planes, ksize, sigma[0], sigmaY=sigma[1], borderType=flag) on the rectangle ``rect`` (x0, y0,
    x1, y1) of ``planes`` (uint8 [H, W, C], the whole image: its edges are where ``flag`` extrapolates), as uint8
    [y1 - y0, x1 - x0, C]; ``ksize`` is OpenCV's (width, height). None when OpenCV's own pass costs less or this
    path cannot promise OpenCV's pixels (the caller then calls OpenCV)."""
    x0, y0, x1, y1 = rect
    if planes.dtype != np.uint8 or max(ksize) < WIDE_KSIZE or not _worth(x1 - x0, y1 - y0, *ksize):
        return None
    if not _trusted():
        return None
    kx, ky = _taps(ksize[0], sigma[0]), _taps(ksize[1], sigma[1] or sigma[0])
    if kx is None or ky is None:
        return None
    return _blur(planes, rect, kx, ky, flag)


def _worth(w: int, h: int, kw: int, kh: int) -> bool:
    """True when the two products cost less than OpenCV's pass over the whole window (see _PRODUCT_ADVANTAGE)."""
    R, Wp = h + kh - 1, w + kw - 1
    products = R * Wp * w + h * R * w  # multiply-adds per channel: [R, Wp] @ [Wp, w], then [h, R] @ [R, w]
    opencv = R * Wp * (kw + kh)  # every window pixel, both passes
    return products <= _PRODUCT_ADVANTAGE * opencv


def _blur(planes: np.ndarray, rect, kx: np.ndarray, ky: np.ndarray, flag: int) -> np.ndarray:
    H, W, C = planes.shape
    x0, y0, x1, y1 = rect
    hx, hy = len(kx) // 2, len(ky) // 2
    w, h = x1 - x0, y1 - y0
    t, b, s, e = y0 - hy, y1 + hy, x0 - hx, x1 + hx
    win = planes[max(t, 0) : min(b, H), max(s, 0) : min(e, W)]  # the image's pixels the rectangle reads
    pads = (max(0, -t), max(0, b - H), max(0, -s), max(0, e - W))
    if any(pads):
        win = cv2.copyMakeBorder(win, *pads, flag)  # [h + 2hy, w + 2hx, C]: the image's edges extrapolated
    R, Wp = h + 2 * hy, w + 2 * hx
    f = np.ascontiguousarray(win.astype(np.float32).transpose(0, 2, 1)).reshape(R * C, Wp)  # [R·C, Wp]
    with _one_blas_thread():
        rows = f @ _toeplitz(kx, Wp, w)  # [R·C, w] = [R·C, Wp] @ [Wp, w]: the ROI's columns only
        out = _toeplitz(ky, R, h).T @ rows.reshape(R, C * w)  # [h, C·w] = [h, R] @ [R, C·w]: the ROI's rows only
    out += 32768.0  # round half up at 16 fractional bits, exact below 2²⁴
    out *= 1.0 / _SHIFT
    np.floor(out, out=out)
    return out.reshape(h, C, w).transpose(0, 2, 1).clip(0, 255).astype(np.uint8)  # [h, w, C]


def _one_blas_thread():
    """numpy's BLAS on the calling thread only, for the products' duration: they are small, and BLAS threads that
    busy-wait for work cost 5× the CPU (and the wall time) of one thread on a busy machine (measured, 2 cores)."""
    controller = _blas()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


@lru_cache(maxsize=1)
def _blas():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        log.info("wide gaussian: threadpoolctl is not installed; the products use numpy's BLAS threads")
        return None
    return ThreadpoolController()


def _toeplitz(taps: np.ndarray, n: int, m: int) -> np.ndarray:
    """[n, m]: column j holds the taps in rows j .. j + k - 1 (output j of a valid correlation of n inputs)."""
    k = len(taps)
    u = np.zeros(n + m - 1, np.float32)
    u[m - 1 : m - 1 + k] = taps[::-1]  # u[i - j + m - 1] = taps[i - j] (kernels are symmetric; reversed for clarity)
    return np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(u, m)[:, ::-1])  # [n, m]: u[i + m - 1 - j]


@lru_cache(maxsize=512)
def _taps(k: int, sigma: float) -> np.ndarray | None:
    """OpenCV's fixed-point taps (integers summing to 256) of a ``k``-tap gaussian, read off its output, or None
    when they cannot be read so (a tap above 128/256, only for tiny sigmas: their sum then falls short)."""
    row = np.zeros((1, 2 * k + 1, 1), np.uint8)
    row[0, k] = 255
    out = cv2.GaussianBlur(row, (k, 1), sigma, sigmaY=sigma)  # [1, 2k + 1]: (255 · 256 · tap + 2¹⁵) >> 16 = tap
    taps = out.reshape(-1)[k - k // 2 : k + k // 2 + 1][::-1].astype(np.float32)
    return taps if int(taps.sum()) == _ONE else None


@lru_cache(maxsize=1)
def _trusted() -> bool:
    """Once per process: the scheme gives cv2.GaussianBlur's pixels on a random probe (every border, a ROI at
    the edges); False (logged) when this OpenCV blurs 8-bit images another way."""
    rng = np.random.default_rng(0)
    probe = rng.integers(0, 256, (96, 120, 3), dtype=np.uint8)
    for flag in (cv2.BORDER_REFLECT_101, cv2.BORDER_REPLICATE, cv2.BORDER_CONSTANT):
        full = cv2.GaussianBlur(probe, (WIDE_KSIZE, WIDE_KSIZE + 2), 9.0, sigmaY=11.0, borderType=flag)
        kx, ky = _taps(WIDE_KSIZE, 9.0), _taps(WIDE_KSIZE + 2, 11.0)
        ok = kx is not None and ky is not None
        for rect in ((0, 0, 50, 40), (70, 56, 120, 96), (30, 20, 90, 70)):
            x0, y0, x1, y1 = rect
            if not ok or not np.array_equal(_blur(probe, rect, kx, ky, flag), full[y0:y1, x0:x1]):
                log.warning("wide gaussian: this OpenCV's 8-bit blur is not the fixed-point one; using cv2 only")
                return False
    return True
