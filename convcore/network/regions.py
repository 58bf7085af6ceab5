"""Regions of feature maps: crops of maps (:class:`Part`), rectangles, and the receptive-field fold.

A feature map in a ROI network is held as a :class:`Part`: the map's values inside one rectangle of its full size
(the union over the batch), and nothing outside. Every op reads the rectangle of its inputs that its own output
rectangle needs and computes only its own rectangle.

Receptive fields are separable: along each axis, output position ``o`` of an op reads input positions
``taps[j][o]`` (``-1`` where tap ``j`` reads nothing, e.g. zero padding). :func:`fold` turns the region an op's
consumers need at its output into the region the op needs at its input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Part", "bbox", "fold", "fold_transposed", "fold_window", "take", "pad_taps", "upsample_axis"]

Rect = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open


@dataclass
class Part:
    """A feature map of full size ``size`` (H, W) known inside ``rect`` only.

    Attributes:
        data (Tensor[N, C, y1 - y0, x1 - x0]): the values inside the rectangle.
        rect: (y0, y1, x0, x1).
        size: (H, W), the full spatial size of the map.
    """

    data: torch.Tensor
    rect: Rect
    size: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.data.shape[0], self.data.shape[1], *self.size)

    @property
    def empty(self) -> bool:
        return self.rect[1] <= self.rect[0] or self.rect[3] <= self.rect[2]

    def full(self) -> torch.Tensor:
        """Tensor[N, C, H, W]: the map with zeros outside the rectangle."""
        y0, y1, x0, x1 = self.rect
        if (y0, y1, x0, x1) == (0, self.size[0], 0, self.size[1]):
            return self.data
        out = self.data.new_zeros(self.shape)
        if not self.empty:
            out[:, :, y0:y1, x0:x1] = self.data
        return out


def whole(t: torch.Tensor) -> Part:
    """A Tensor[N, C, H, W] as a Part covering all of it."""
    return Part(t, (0, t.shape[2], 0, t.shape[3]), (t.shape[2], t.shape[3]))


def bbox(region: torch.Tensor) -> Rect:
    """The bounding rectangle of a bool Tensor[N, h, w] over the whole batch; (0, 0, 0, 0) when empty."""
    rows = region.any(dim=2).any(dim=0).nonzero()
    if rows.numel() == 0:
        return (0, 0, 0, 0)
    cols = region.any(dim=1).any(dim=0).nonzero()
    return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def take(part: Part, y0: int, y1: int, x0: int, x1: int, fill: float = 0.0) -> torch.Tensor:
    """Tensor[N, C, y1 - y0, x1 - x0]: the map over a rectangle that may reach past the map's borders.

    Positions outside the map (H, W) read ``fill`` (an op's padding value); positions inside the map but outside the
    part's rectangle read zero. A view when the rectangle lies inside the part's rectangle.
    """
    py0, py1, px0, px1 = part.rect
    if py0 <= y0 and y1 <= py1 and px0 <= x0 and x1 <= px1 and y1 > y0 and x1 > x0:
        return part.data[:, :, y0 - py0 : y1 - py0, x0 - px0 : x1 - px0]
    N, C = part.data.shape[:2]
    H, W = part.size
    iy0, iy1, ix0, ix1 = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
    if py0 <= iy0 and iy1 <= py1 and px0 <= ix0 and ix1 <= px1 and iy1 > iy0 and ix1 > ix0:
        # the part holds all of the rectangle inside the map: pad a view in one pass
        view = part.data[:, :, iy0 - py0 : iy1 - py0, ix0 - px0 : ix1 - px0]
        return F.pad(view, (ix0 - x0, x1 - ix1, iy0 - y0, y1 - iy1), value=fill)
    out = part.data.new_full((N, C, max(y1 - y0, 0), max(x1 - x0, 0)), fill)
    if fill != 0:
        if iy1 > iy0 and ix1 > ix0:
            out[:, :, iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = 0
    cy0, cy1, cx0, cx1 = max(y0, py0), min(y1, py1), max(x0, px0), min(x1, px1)
    if cy1 > cy0 and cx1 > cx0:
        src = part.data[:, :, cy0 - py0 : cy1 - py0, cx0 - px0 : cx1 - px0]
        out[:, :, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = src
    return out


def fold(
    need: torch.Tensor, taps_y: list[torch.Tensor], taps_x: list[torch.Tensor], in_hw: tuple[int, int]
) -> torch.Tensor:
    """The input positions that the output positions ``need`` (bool Tensor[N, h, w]) read: bool Tensor[N, H, W].

    ``taps_y[j]`` (Tensor[h], long) is the input row output row ``o`` reads through tap ``j`` (``-1``: none);
    ``taps_x`` likewise for columns.
    """
    N, h, w = need.shape
    H, W = in_hw
    if not bool(need.any()):
        return need.new_zeros((N, H, W))
    m = need.to(torch.float32)
    rows = m.new_zeros((N, H, w))
    for t in taps_y:
        ok = t >= 0
        rows.index_add_(1, t[ok], m[:, ok, :])  # rows[:, t[o], :] += m[:, o, :]
    out = m.new_zeros((N, H, W))
    for t in taps_x:
        ok = t >= 0
        out.index_add_(2, t[ok], rows[:, :, ok])  # out[:, :, t[o]] += rows[:, :, o]
    return out > 0


def fold_window(need: torch.Tensor, k, s, d, before, in_hw) -> torch.Tensor:
    """:func:`fold` for a sliding window (conv, pool) along both axes, as one transposed conv of the mask with ones.

    Output ``o`` reads ``o*s - before + j*d``: the transposed conv spreads each needed output over its window.
    """
    if not bool(need.any()):
        return need.new_zeros((need.shape[0], *in_hw))
    m = need[:, None].to(torch.float32)  # [N, 1, h, w]
    spread = F.conv_transpose2d(m, m.new_ones((1, 1, *k)), stride=s, dilation=d)[:, 0]  # padded coordinates
    return _window_of(spread, before, in_hw) > 0


def fold_transposed(need: torch.Tensor, k, s, d, p, in_hw) -> torch.Tensor:
    """:func:`fold` for a transposed conv: input ``i`` reaches outputs ``i*s - p + j*d``: a strided conv with ones."""
    if not bool(need.any()):
        return need.new_zeros((need.shape[0], *in_hw))
    m = need[:, None].to(torch.float32)  # [N, 1, h, w]
    H, W = in_hw
    pads = []
    for a, size in ((1, W), (0, H)):
        extra = (size - 1) * s[a] + d[a] * (k[a] - 1) + 1 - (m.shape[2 + a] + p[a])
        pads += [p[a], max(0, extra)]
    reach = F.conv2d(F.pad(m, pads), m.new_ones((1, 1, *k)), stride=s, dilation=d)[:, 0]  # [N, >= H, >= W]
    return reach[:, :H, :W] > 0


def _window_of(t: torch.Tensor, before, hw) -> torch.Tensor:
    """Rows/columns [before, before + size) of ``t`` (Tensor[N, h, w]), zero where ``t`` ends."""
    out = t.new_zeros((t.shape[0], *hw))
    y0, x0 = before
    h, w = min(hw[0], t.shape[1] - y0), min(hw[1], t.shape[2] - x0)
    if h > 0 and w > 0:
        out[:, :h, :w] = t[:, y0 : y0 + h, x0 : x0 + w]
    return out


def pad_taps(size: int, before: int, after: int, mode: str, device) -> list[torch.Tensor]:
    """The input position each output position of ``F.pad`` along one axis copies (``-1``: the constant)."""
    idx = torch.arange(size, dtype=torch.float64, device=device).view(1, 1, size)
    if mode == "constant":
        t = F.pad(idx + 1, (before, after), value=0.0) - 1  # 0 → -1 where padded
    else:
        t = F.pad(idx, (before, after), mode=mode)
    return [t.view(-1).round().long()]


def upsample_axis(
    in_size: int, out_size: int, mode: str, align_corners: bool | None, scale: float | None, double: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of ATen's CPU nearest / bilinear upsampling along one axis.

    Returns (idx0, idx1, lam0, lam1), each of length ``out_size``: output ``o`` is
    ``lam0[o] * x[idx0[o]] + lam1[o] * x[idx1[o]]``. The arithmetic is float32 (float64 with ``double``), as
    ATen's for float (double) inputs.
    """
    f = np.float64 if double and mode != "nearest" else np.float32  # ATen's nearest index is float32 for all dtypes
    o = np.arange(out_size)
    if scale is not None and scale > 0:
        ratio = f(1.0 / scale)
    else:
        ratio = f(in_size) / f(out_size)
    if mode == "nearest":
        if out_size == in_size:
            idx = o
        elif out_size == 2 * in_size:
            idx = o >> 1
        else:
            idx = np.minimum(np.floor(o.astype(f) * ratio).astype(np.int64), in_size - 1)
        ones = np.ones(out_size, f)
        return idx, idx, ones, np.zeros(out_size, f)
    if out_size == in_size:
        return o, o, np.ones(out_size, f), np.zeros(out_size, f)
    if align_corners:
        ratio = f(in_size - 1) / f(out_size - 1) if out_size > 1 else f(0)
        real = ratio * o.astype(f)
    else:
        real = np.maximum(ratio * (o.astype(f) + f(0.5)) - f(0.5), f(0))
    idx0 = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    lam1 = np.minimum(np.maximum(real - idx0.astype(f), f(0)), f(1)).astype(f)
    idx1 = idx0 + (idx0 < in_size - 1)
    return idx0, idx1, (f(1) - lam1).astype(f), lam1


def window_span(o0: int, o1: int, k: int, s: int, d: int, before: int) -> tuple[int, int]:
    """Input range [i0, i1) (padded coordinates: may pass the borders) that outputs [o0, o1) of a window read."""
    return o0 * s - before, (o1 - 1) * s - before + d * (k - 1) + 1


def ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def out_size_floor(length: int, k: int, s: int, d: int) -> int:
    return math.floor((length - d * (k - 1) - 1) / s) + 1
