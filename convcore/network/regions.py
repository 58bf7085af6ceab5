"""Regions of feature maps: crops of maps (:class:`Part`), rectangles, and the receptive-field fold.

A feature map in a ROI network is held as a :class:`Part`: the map's values inside one rectangle of its full size
(the union over the batch), and nothing outside. Every op reads the rectangle of its inputs that its own output
rectangle needs and computes only its own rectangle.

Receptive fields are separable: along each axis, output position ``o`` of an op reads input positions
``taps[j][o]`` (``-1`` where tap ``j`` reads nothing, e.g. zero padding). :func:`fold` turns the region an op's
consumers need at its output into the region the op needs at its input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Part", "Region", "bbox", "fold", "fold_window", "take", "pad_taps", "transposed_taps", "upsample_axis"]

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
    f = region.to(torch.float32)  # float sums are much faster than bool any() on the CPU
    rows = f.sum(dim=(0, 2)).nonzero()
    if rows.numel() == 0:
        return (0, 0, 0, 0)
    cols = f.sum(dim=(0, 1)).nonzero()
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


@dataclass
class Region:
    """Positions of a map of size ``size`` (H, W): bool ``crop`` over the rectangle ``rect``, False outside.

    The rectangle holds every True position (it need not be tight), so the work on a region follows its area.
    """

    size: tuple[int, int]
    rect: Rect
    crop: torch.Tensor  # bool [N, y1 - y0, x1 - x0]
    _filled: bool | None = None

    @staticmethod
    def of(mask: torch.Tensor) -> Region:
        """The region of a bool Tensor[N, H, W], cut to its bounding rectangle."""
        y0, y1, x0, x1 = bbox(mask)
        return Region(tuple(mask.shape[1:]), (y0, y1, x0, x1), mask[:, y0:y1, x0:x1])

    @property
    def empty(self) -> bool:
        return self.rect[1] <= self.rect[0] or self.rect[3] <= self.rect[2]

    @property
    def filled(self) -> bool:
        """Whether every position of the rectangle is in (then a conv over it needs no mask)."""
        if self._filled is None:
            self._filled = not self.empty and bool(self.crop.all())
        return self._filled

    def full(self) -> torch.Tensor:
        """bool Tensor[N, H, W]."""
        out = self.crop.new_zeros((self.crop.shape[0], *self.size))
        y0, y1, x0, x1 = self.rect
        if not self.empty:
            out[:, y0:y1, x0:x1] = self.crop
        return out

    def count(self) -> int:
        return int(self.crop.sum()) if not self.empty else 0

    def union(self, other: Region) -> Region:
        if other is self or other.empty or (self.rect == other.rect and self.filled):
            return self
        if self.empty:
            return other
        a, b = self.rect, other.rect
        r = (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
        crop = self.crop.new_zeros((self.crop.shape[0], r[1] - r[0], r[3] - r[2]))
        for reg in (self, other):
            y0, y1, x0, x1 = reg.rect
            view = crop[:, y0 - r[0] : y1 - r[0], x0 - r[2] : x1 - r[2]]
            view |= reg.crop
        return _settle(Region(self.size, r, crop))


DENSE_ENOUGH = 0.5  # a region covering more of its rectangle than this is computed over the whole rectangle


def _settle(region: Region) -> Region:
    """The region, or its whole rectangle when it covers more than DENSE_ENOUGH of it (exact stays exact: a superset
    of the needed positions; a conv over a full rectangle needs no mask and no per-position bookkeeping)."""
    if region.empty or region._filled is not None:
        return region
    if float(region.crop.to(torch.float32).mean()) > DENSE_ENOUGH:
        n = region.crop.shape[0]
        return _filled(region.crop, n, region.size, *region.rect)
    return region


def _nothing(like: torch.Tensor, n: int, in_hw) -> Region:
    return Region(tuple(in_hw), (0, 0, 0, 0), like.new_zeros((n, 0, 0)))


def _filled(like: torch.Tensor, n: int, in_hw, y0: int, y1: int, x0: int, x1: int) -> Region:
    """Every position of [y0, y1) × [x0, x1) clipped to the map (a superset of a strided read is still exact)."""
    y0, y1, x0, x1 = max(y0, 0), min(y1, in_hw[0]), max(x0, 0), min(x1, in_hw[1])
    if y1 <= y0 or x1 <= x0:
        return _nothing(like, n, in_hw)
    crop = torch.ones((), dtype=torch.bool, device=like.device).expand(n, y1 - y0, x1 - x0)
    return Region(tuple(in_hw), (y0, y1, x0, x1), crop, True)


def fold(region: Region, taps_y: list[torch.Tensor], taps_x: list[torch.Tensor], in_hw: tuple[int, int]) -> Region:
    """The input positions that the output positions ``region`` reads, through separable taps.

    ``taps_y[j]`` (Tensor[h], long) is the input row output row ``o`` reads through tap ``j`` (``-1``: none);
    ``taps_x`` likewise for columns.
    """
    N = region.crop.shape[0]
    if region.empty:
        return _nothing(region.crop, N, in_hw)
    y0, y1, x0, x1 = region.rect
    ty = [t[y0:y1] for t in taps_y]
    tx = [t[x0:x1] for t in taps_x]
    spans = []
    for taps in (ty, tx):
        valid = torch.cat([t[t >= 0] for t in taps])
        if valid.numel() == 0:
            return _nothing(region.crop, N, in_hw)
        spans.append((int(valid.min()), int(valid.max()) + 1))
    (iy0, iy1), (ix0, ix1) = spans
    if region.filled:  # a full rectangle reads (at most) the full rectangle of its spans
        return _filled(region.crop, N, in_hw, iy0, iy1, ix0, ix1)
    m = region.crop.to(torch.float32)  # [N, h, w]
    rows = m.new_zeros((N, iy1 - iy0, m.shape[2]))
    for t in ty:
        ok = t >= 0
        rows.index_add_(1, t[ok] - iy0, m[:, ok, :])  # rows[:, t[o], :] += m[:, o, :]
    out = m.new_zeros((N, iy1 - iy0, ix1 - ix0))
    for t in tx:
        ok = t >= 0
        out.index_add_(2, t[ok] - ix0, rows[:, :, ok])  # out[:, :, t[o]] += rows[:, :, o]
    return _settle(Region(tuple(in_hw), (iy0, iy1, ix0, ix1), out > 0))


def fold_window(region: Region, k, s, d, before, in_hw) -> Region:
    """:func:`fold` for a sliding window (conv, pool), as one transposed conv of the region's crop with ones.

    Output ``o`` reads ``o*s - before + j*d``: the transposed conv spreads each needed output over its window.
    """
    N = region.crop.shape[0]
    if region.empty:
        return _nothing(region.crop, N, in_hw)
    y0, y1, x0, x1 = region.rect
    if region.filled:  # a full rectangle reads (at most) the full rectangle its windows span
        iy = (y0 * s[0] - before[0], (y1 - 1) * s[0] - before[0] + d[0] * (k[0] - 1) + 1)
        ix = (x0 * s[1] - before[1], (x1 - 1) * s[1] - before[1] + d[1] * (k[1] - 1) + 1)
        return _filled(region.crop, N, in_hw, *iy, *ix)
    m = region.crop[:, None].to(torch.float32)  # [N, 1, h, w]
    if tuple(s) == (1, 1):  # a max filter over the zero-padded mask: the same spread, cheaper than a transposed conv
        py, px = d[0] * (k[0] - 1), d[1] * (k[1] - 1)
        spread = F.max_pool2d(F.pad(m, (px, px, py, py)), tuple(k), 1, 0, tuple(d))[:, 0] > 0
    else:
        spread = F.conv_transpose2d(m, m.new_ones((1, 1, *k)), stride=s, dilation=d)[:, 0] > 0
    oy, ox = y0 * s[0] - before[0], x0 * s[1] - before[1]  # the input position of spread[:, 0, 0]
    iy0, ix0 = max(oy, 0), max(ox, 0)
    iy1, ix1 = min(oy + spread.shape[1], in_hw[0]), min(ox + spread.shape[2], in_hw[1])
    if iy1 <= iy0 or ix1 <= ix0:
        return _nothing(region.crop, N, in_hw)
    return _settle(Region(tuple(in_hw), (iy0, iy1, ix0, ix1), spread[:, iy0 - oy : iy1 - oy, ix0 - ox : ix1 - ox]))


def transposed_taps(out: int, size: int, k: int, s: int, d: int, p: int, device) -> list[torch.Tensor]:
    """Taps of a transposed conv: output ``o`` receives input ``i`` where ``o = i*s - p + j*d``."""
    o = torch.arange(out, device=device)
    taps = []
    for j in range(k):
        num = o + p - j * d
        i = torch.div(num, s, rounding_mode="floor")
        ok = (num % s == 0) & (i >= 0) & (i < size)
        taps.append(torch.where(ok, i, -1))
    return taps


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
