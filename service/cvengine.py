"""The CPU engine: OpenCV on each ROI rectangle with its halo, written into the output buffer in the image's depth.

For each :class:`~service.regions.Piece` the engine reads the rectangle grown by the filter's halo from the image
(a view, no copy: OpenCV extrapolates the border at the view's edges, which are the image's edges where the image
ends and otherwise lie in the halo ring whose outputs are dropped), calls the same OpenCV function a user would call
on the whole image, and writes the rectangle's inside back. Per pixel, OpenCV's 8- and 16-bit filters compute the
same fixed-point sums wherever the pixel sits (gaussian, box, median, morphology), so the result equals OpenCV on
the whole image bit for bit; where OpenCV sums in float (float results, filter2D and derivative kernels) the
vector body and the scalar tail of a row round differently, so the window is aligned to 64 columns (and reaches the
image's right edge when it is near): every pixel then falls on the same SIMD lane layout as in the whole image and
matches bit for bit too.

``wrap`` (which most OpenCV filters refuse) is built explicitly: the window is gathered with indices modulo the
image size. ``median`` always extrapolates as cv2.medianBlur does (replicate), whatever ``border`` says.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from .filters import BORDERS, FilterOp
from .regions import Piece

__all__ = ["CV_FILTERS", "apply", "pixelate_region"]

CV_FILTERS = frozenset(
    {"gaussian", "box", "sobel", "scharr", "laplacian", "sharpen", "emboss", "kernel", "dilate", "erode", "median"}
    | {"pixelate", "fill"}
)
_ALIGN = 64  # columns: a multiple of every SIMD width OpenCV dispatches to (in elements, for 1, 3 or 4 channels)
_FIXED_POINT = frozenset({"gaussian", "box", "median", "dilate", "erode"})  # on 8/16-bit: no float sums
_DERIVATIVES = frozenset({"sobel", "scharr", "laplacian"})  # integer kernels: fixed point when scale 1, delta 0
_SHAPES = {"rect": cv2.MORPH_RECT, "ellipse": cv2.MORPH_ELLIPSE, "cross": cv2.MORPH_CROSS}


def apply(
    op: FilterOp,
    src: np.ndarray,
    out: np.ndarray,
    pieces: list[Piece],
    border: str,
    *,
    out_origin: tuple[int, int] = (0, 0),
    origin: tuple[int, int] = (0, 0),
) -> None:
    """Filter ``src`` (H, W, C) inside ``pieces`` and write the results into ``out`` (h, w, C).

    ``out`` covers the rectangle of ``src`` starting at ``out_origin`` (x, y) and may be ``src`` itself: every
    piece is computed from ``src`` before anything is written. ``out``'s dtype is the result depth (src's, or
    float32). Alpha (C = 4) is never filtered. ``origin`` is where ``src`` sits in the full image (pixelate cells
    are anchored at the full image's (0, 0)).
    """
    color = 3 if src.shape[2] == 4 else src.shape[2]
    planes = src[:, :, :color] if color != src.shape[2] else src  # [H, W, color]
    float_out = out.dtype == np.float32
    results = [_compute(op, planes, p, border, out.dtype, float_out, origin) for p in pieces]  # read before writing
    ox, oy = out_origin
    for p, res in zip(pieces, results):
        dst = out[p.y0 - oy : p.y1 - oy, p.x0 - ox : p.x1 - ox, :color]  # [h, w, color]
        if p.mask is None:
            dst[...] = res
        else:
            np.copyto(dst, res, where=p.mask[:, :, None])


def _compute(op, planes, p: Piece, border: str, dtype, float_out: bool, origin) -> np.ndarray:
    name, params = op.name, op.extra
    h, w = p.y1 - p.y0, p.x1 - p.x0
    if name == "fill":
        color = np.asarray(params["color"], np.float64)
        return np.broadcast_to(color.astype(dtype), (h, w, planes.shape[2]))
    if name == "pixelate":
        return pixelate_region(planes, p, params["block"], origin, rounded=not float_out).astype(dtype, copy=False)
    hy, hx = op.ksize[0] // 2, op.ksize[1] // 2
    exact = not float_out and (name in _FIXED_POINT or name in _DERIVATIVES and _integral(params))
    win, wx, wy = _window(planes, p, hx, hy, border, align=1 if exact else _ALIGN)
    flag = cv2.BORDER_REFLECT_101 if border == "wrap" else BORDERS[border][1]
    res = _run(name, params, op, win, flag, float_out)
    res = res.reshape(res.shape[0], res.shape[1], -1)[wy : wy + h, wx : wx + w]  # [h, w, color]
    return res.astype(dtype, copy=False)


def _integral(params: dict) -> bool:
    return params["scale"] == 1 and params["delta"] == 0


def _window(planes: np.ndarray, p: Piece, hx: int, hy: int, border: str, align: int):
    """The rectangle grown by the halo (and aligned to ``align`` columns), and where the rectangle starts in it."""
    H, W = planes.shape[:2]
    if border == "wrap":
        rows = np.arange(p.y0 - hy, p.y1 + hy) % H
        cols = np.arange(p.x0 - hx, p.x1 + hx) % W
        return planes[np.ix_(rows, cols)], hx, hy  # [h + 2hy, w + 2hx, C], gathered
    s = max(0, p.x0 - hx)
    e = p.x1 + hx
    if align > 1:
        s = (s // align) * align
        e = s + -(-(e - s) // align) * align
        if e + align >= W:
            e = W  # near the right edge: end where the image ends, as the whole-image call does
    e = min(e, W)
    t, b = max(0, p.y0 - hy), min(H, p.y1 + hy)
    return planes[t:b, s:e], p.x0 - s, p.y0 - t  # a view


def _run(name: str, params: dict, op: FilterOp, win: np.ndarray, flag: int, float_out: bool) -> np.ndarray:
    ddepth = cv2.CV_32F if float_out else -1
    if name == "gaussian":
        kx, ky = op.ksize[1], op.ksize[0]
        src = win.astype(np.float32) if float_out and win.dtype != np.float32 else win
        return cv2.GaussianBlur(src, (kx, ky), params["sigma"] or 0, sigmaY=params["sigma_y"] or 0, borderType=flag)
    if name == "box":
        return cv2.boxFilter(win, ddepth, (op.ksize[1], op.ksize[0]), normalize=params["normalize"], borderType=flag)
    if name == "sobel":
        dx, dy, k, scale, delta = (params[k] for k in ("dx", "dy", "ksize", "scale", "delta"))
        return cv2.Sobel(win, ddepth, dx, dy, ksize=k, scale=scale, delta=delta, borderType=flag)
    if name == "scharr":
        return cv2.Scharr(
            win, ddepth, params["dx"], params["dy"], scale=params["scale"], delta=params["delta"], borderType=flag
        )
    if name == "laplacian":
        k, scale, delta = params["ksize"], params["scale"], params["delta"]
        return cv2.Laplacian(win, ddepth, ksize=k, scale=scale, delta=delta, borderType=flag)
    if name in ("sharpen", "emboss", "kernel"):
        kernel = op.weight[0, 0].numpy()  # [kh, kw] float32
        return cv2.filter2D(win, ddepth, kernel, delta=op.bias, borderType=flag)
    if name in ("dilate", "erode"):
        se = _structure(params["shape"], op.ksize[1], op.ksize[0])
        fn = cv2.dilate if name == "dilate" else cv2.erode
        res = fn(win, se) if flag == cv2.BORDER_CONSTANT else fn(win, se, borderType=flag)
        return res.astype(np.float32) if float_out else res
    if name == "median":
        res = cv2.medianBlur(np.ascontiguousarray(win), params["ksize"])
        return res.astype(np.float32) if float_out else res
    raise ValueError(f"{name!r} has no OpenCV engine")


@lru_cache(maxsize=64)
def _structure(shape: str, kx: int, ky: int) -> np.ndarray:
    return cv2.getStructuringElement(_SHAPES[shape], (kx, ky))  # [ky, kx] uint8


def pixelate_region(
    planes: np.ndarray, p: Piece, block: int, origin: tuple[int, int] = (0, 0), rounded: bool = True
) -> np.ndarray:
    """Every pixel of ``p`` as the mean of its block×block cell (cells anchored at the full image's (0, 0), clipped
    to the image), rounded half to even for integer depths when ``rounded``; returns float64 (h, w, C)."""
    H, W = planes.shape[:2]
    ox, oy = origin
    xs = _cell_edges(p.x0, p.x1, block, ox, W)  # cell boundaries in local columns
    ys = _cell_edges(p.y0, p.y1, block, oy, H)
    region = planes[ys[0] : ys[-1], xs[0] : xs[-1]].astype(np.float64)  # [cells' rows, cells' cols, C]
    sums = np.add.reduceat(np.add.reduceat(region, ys[:-1] - ys[0], axis=0), xs[:-1] - xs[0], axis=1)
    counts = np.outer(np.diff(ys), np.diff(xs))[:, :, None]  # [cy, cx, 1]
    means = sums / counts
    if rounded and planes.dtype != np.float32:
        means = np.rint(means)  # half to even
    full = np.repeat(np.repeat(means, np.diff(ys), axis=0), np.diff(xs), axis=1)  # [cells' rows, cells' cols, C]
    return full[p.y0 - ys[0] : p.y1 - ys[0], p.x0 - xs[0] : p.x1 - xs[0]]


def _cell_edges(a: int, b: int, block: int, offset: int, size: int) -> np.ndarray:
    """Local boundaries of the cells that cover [a, b): multiples of ``block`` in full coordinates, clipped."""
    first = ((a + offset) // block) * block - offset
    last = -(-(b + offset) // block) * block - offset
    edges = np.arange(first, last + 1, block)
    return np.unique(np.clip(edges, 0, size))
