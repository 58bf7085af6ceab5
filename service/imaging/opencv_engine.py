"""The CPU engine: OpenCV on each ROI rectangle with its halo, written into the output buffer in the image's depth.

For each :class:`~service.imaging.regions.Piece` the engine reads the rectangle grown by the filter's halo from the
image (a view, no copy: OpenCV extrapolates the border at the view's edges, which are the image's edges where the image
ends and otherwise lie in the halo ring whose outputs are dropped), calls the same OpenCV function a user would call
on the whole image, and writes the rectangle's inside back. Per pixel, OpenCV's 8- and 16-bit filters compute the
same fixed-point sums wherever the pixel sits (gaussian, box, median, morphology), so the result equals OpenCV on
the whole image bit for bit; where OpenCV sums in float (float results, filter2D and derivative kernels) the
vector body and the scalar tail of a row round differently, so the window is aligned to 64 columns (and reaches the
image's right edge when it is near): every pixel then falls on the same SIMD lane layout as in the whole image and
matches bit for bit too.

An 8-bit gaussian with a large kernel (a face's "auto" blur) is computed by :mod:`.wide_gaussian` instead: OpenCV's
fixed-point sums as two matrix products over only the piece's rows and columns, equal to cv2.GaussianBlur bit for bit.

``wrap`` (which most OpenCV filters refuse) is built explicitly: the window is gathered with indices modulo the
image size. ``median`` always extrapolates as cv2.medianBlur does (replicate), whatever ``border`` says.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from .filters import BORDERS, FilterOp, piece_side, sized_op
from .regions import Piece
from .wide_gaussian import wide_gaussian

__all__ = ["apply", "footprint", "pixelate_region"]

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
    float32). Alpha (C = 4) is never filtered. An "auto" size is resolved for each piece from its longer side.
    ``origin`` is where ``src`` sits in the full image (pixelate cells are anchored at the full image's (0, 0)).
    """
    color = 3 if src.shape[2] == 4 else src.shape[2]
    planes = src[:, :, :color] if color != src.shape[2] else src  # [H, W, color]
    float_out = out.dtype.kind == "f"
    results = [_compute(op, planes, p, border, out.dtype, float_out, origin) for p in pieces]  # read before writing
    ox, oy = out_origin
    for p, res in zip(pieces, results):
        dst = out[p.y0 - oy : p.y1 - oy, p.x0 - ox : p.x1 - ox]  # [h, w, C]
        if color != out.shape[2]:
            dst = dst[:, :, :color]  # alpha untouched
        if p.mask is None:
            dst[...] = res
        else:
            np.copyto(dst, res, where=p.mask[:, :, None])


def footprint(
    op: FilterOp, p: Piece, border: str, size: tuple[int, int], origin: tuple[int, int] = (0, 0)
) -> tuple[int, int, int, int] | None:
    """The rectangle (x0, y0, x1, y1) of an image of ``size`` (width, height) that :func:`apply` reads to compute
    ``p``'s pixels — the piece grown by the filter's halo (an "auto" size resolved as :func:`apply` does), or the
    pixelate cells around it — clipped to the image; None when it may read anywhere (``wrap``)."""
    w, h = size
    if border == "wrap":
        return None
    op = sized_op(op, piece_side(p.x0, p.y0, p.x1, p.y1))
    if op.name == "fill":
        return p.x0, p.y0, p.x1, p.y1
    if op.name == "pixelate":
        xs, ys = (
            _cell_edges(p.x0, p.x1, op.extra["block"], origin[0], w),
            _cell_edges(p.y0, p.y1, op.extra["block"], origin[1], h),
        )
        return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])
    hx, hy = _halo(op)
    return max(p.x0 - hx, 0), max(p.y0 - hy, 0), min(p.x1 + hx, w), min(p.y1 + hy, h)


def _compute(op, planes, p: Piece, border: str, dtype, float_out: bool, origin) -> np.ndarray:
    h, w = p.y1 - p.y0, p.x1 - p.x0
    op = sized_op(op, piece_side(p.x0, p.y0, p.x1, p.y1))
    if op.name == "fill":
        color = np.asarray(op.extra["color"], np.float64)
        return np.broadcast_to(color.astype(dtype), (h, w, planes.shape[2]))
    if op.name == "pixelate":
        return pixelate_region(planes, p, op.extra["block"], origin, rounded=not float_out).astype(dtype, copy=False)
    if op.name == "gaussian" and not float_out and border != "wrap":
        ksize, sigma = (op.ksize[1], op.ksize[0]), (op.extra["sigma"] or 0, op.extra["sigma_y"] or 0)
        res = wide_gaussian(planes, (p.x0, p.y0, p.x1, p.y1), ksize, sigma, BORDERS[border][1])
        if res is not None:
            return res  # OpenCV's 8-bit pixels, computed only inside the piece (wide_gaussian's docstring)
    fn, hx, hy, align = _plan(op, border, float_out)
    win, wx, wy = _window(planes, p, hx, hy, border, align)
    res = fn(win)  # [h + halo, w + halo(, color)] in the result depth
    if res.ndim == 2:
        res = res[:, :, None]
    return res[wy : wy + h, wx : wx + w]  # [h, w, color]


_PLANS: dict[tuple[str, bool], tuple] = {}


def _plan(op: FilterOp, border: str, float_out: bool) -> tuple:
    """(window → result, halo x, halo y, column alignment) for an op, made once per filter and depth."""
    key = (op.key, float_out)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= 256:
            _PLANS.clear()
        name, params = op.name, op.extra
        exact = not float_out and (name in _FIXED_POINT or name in _DERIVATIVES and _integral(params))
        flag = cv2.BORDER_REFLECT_101 if border == "wrap" else BORDERS[border][1]
        fn = _call(name, params, op, flag, float_out)
        plan = _PLANS[key] = (fn, *_halo(op), 1 if exact else _ALIGN)
    return plan


def _halo(op: FilterOp) -> tuple[int, int]:
    """(x, y): how far outside a pixel the filter reads."""
    return op.ksize[1] // 2, op.ksize[0] // 2


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


def _call(name: str, params: dict, op: FilterOp, flag: int, float_out: bool):
    """The OpenCV call a user would make on the whole image, as a function of the window."""
    ddepth = cv2.CV_32F if float_out else -1
    ksize = (op.ksize[1], op.ksize[0])  # OpenCV's (width, height)
    if name == "gaussian":
        sx, sy = params["sigma"] or 0, params["sigma_y"] or 0

        def gaussian(win):
            src = win.astype(np.float32) if float_out and win.dtype != np.float32 else win
            return cv2.GaussianBlur(src, ksize, sx, sigmaY=sy, borderType=flag)

        return gaussian
    if name == "box":
        return lambda win: cv2.boxFilter(win, ddepth, ksize, normalize=params["normalize"], borderType=flag)
    if name in _DERIVATIVES:
        scale, delta = params["scale"], params["delta"]
        if name == "sobel":
            dx, dy, k = params["dx"], params["dy"], params["ksize"]
            return lambda win: cv2.Sobel(win, ddepth, dx, dy, ksize=k, scale=scale, delta=delta, borderType=flag)
        if name == "scharr":
            dx, dy = params["dx"], params["dy"]
            return lambda win: cv2.Scharr(win, ddepth, dx, dy, scale=scale, delta=delta, borderType=flag)
        k = params["ksize"]
        return lambda win: cv2.Laplacian(win, ddepth, ksize=k, scale=scale, delta=delta, borderType=flag)
    if name in ("sharpen", "emboss", "kernel"):
        kernel, delta = op.weight[0, 0], op.bias  # [kh, kw] float32
        return lambda win: cv2.filter2D(win, ddepth, kernel, delta=delta, borderType=flag)
    if name in ("dilate", "erode"):
        se = _structure(params["shape"], *ksize)
        morph = cv2.dilate if name == "dilate" else cv2.erode
        extra = {} if flag == cv2.BORDER_CONSTANT else {"borderType": flag}  # constant: cv2's default, never wins
        return lambda win: _as_float(morph(win, se, **extra), float_out)
    if name == "median":
        k = params["ksize"]
        return lambda win: _as_float(cv2.medianBlur(np.ascontiguousarray(win), k), float_out)
    raise ValueError(f"{name!r} has no OpenCV engine")


def _as_float(res: np.ndarray, float_out: bool) -> np.ndarray:
    return res.astype(np.float32) if float_out else res


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
