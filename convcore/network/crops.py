"""Each spatial op of a ROI network, computed over one output rectangle from the crops of its input.

For every op kind there are two functions of the node's arguments: ``*_taps`` (its receptive field along each axis,
for the backward pass that finds the region each layer must compute) and ``*_crop`` (its values over an output
rectangle, reading the input rectangle that the receptive field gives). Convolutions go through
:func:`convcore.roi_conv2d` with the region's mask over the rectangle, so its cost model picks a strategy per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..functional import roi_conv2d
from .regions import Part, ceil_div, pad_taps, take, upsample_axis, window_span

__all__ = ["Window", "conv_crop", "conv_t_crop", "max_pool_crop", "avg_pool_crop", "upsample_crop", "pad_crop"]

Rect = tuple[int, int, int, int]


def _two(v, default=None) -> tuple[int, int]:
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return default
    if isinstance(v, int):
        return (v, v)
    v = [int(x) for x in v]
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _arg(node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


@dataclass(frozen=True)
class Window:
    """Geometry of a sliding window along (y, x): kernel, stride, dilation and padding before/after."""

    k: tuple[int, int]
    s: tuple[int, int]
    d: tuple[int, int]
    before: tuple[int, int]

    def span(self, rect: Rect) -> Rect:
        y0, y1 = window_span(rect[0], rect[1], self.k[0], self.s[0], self.d[0], self.before[0])
        x0, x1 = window_span(rect[2], rect[3], self.k[1], self.s[1], self.d[1], self.before[1])
        return y0, y1, x0, x1


def conv_window(node, weight_shape) -> tuple[Window, int]:
    """The window and groups of ``aten.conv2d`` (int or "same"/"valid" padding) or ``aten.convolution``."""
    k = (int(weight_shape[2]), int(weight_shape[3]))
    stride = _two(_arg(node, 3, "stride", 1), (1, 1))
    if str(node.target).startswith("aten.convolution"):
        padding, dilation, groups = node.args[4], node.args[5], node.args[8]
    else:
        padding, dilation = _arg(node, 4, "padding", 0), _arg(node, 5, "dilation", 1)
        groups = _arg(node, 6, "groups", 1)
    dilation = _two(dilation, (1, 1))
    if padding == "valid":
        before = (0, 0)
    elif padding == "same":
        before = tuple(dilation[a] * (k[a] - 1) // 2 for a in (0, 1))
    else:
        before = _two(padding, (0, 0))
    return Window(k, stride, dilation, before), int(groups)


def pool_window(node) -> Window:
    k = _two(node.args[1])
    stride = _two(_arg(node, 2, "stride", None), k) or k
    padding = _two(_arg(node, 3, "padding", 0), (0, 0))
    dilation = _two(_arg(node, 4, "dilation", 1), (1, 1)) if "max_pool" in str(node.target) else (1, 1)
    return Window(k, stride, dilation, padding)


def conv_crop(x: Part, weight, bias, win: Window, groups: int, rect: Rect, mask: torch.Tensor | None) -> torch.Tensor:
    """Tensor[N, O, h, w]: the conv over ``rect``, computed where ``mask`` (bool Tensor[N, h, w] or None) is True."""
    H, W = x.size
    if x.rect == (0, H, 0, W) and rect[0] == 0 and rect[2] == 0:
        # the whole map in: the conv pads it itself (no copy) when that gives the same outputs
        sizes = [(n + 2 * win.before[a] - win.d[a] * (win.k[a] - 1) - 1) // win.s[a] + 1 for a, n in enumerate((H, W))]
        if sizes == [rect[1], rect[3]]:
            return roi_conv2d(
                x.data, weight, bias, mask, stride=win.s, padding=win.before, dilation=win.d, groups=groups
            )
    crop = take(x, *win.span(rect))  # [N, C, h_in, w_in], zeros past the borders (the conv's zero padding)
    return roi_conv2d(crop, weight, bias, mask, stride=win.s, padding=0, dilation=win.d, groups=groups)


def conv_t_args(node) -> dict:
    if str(node.target).startswith("aten.convolution"):
        _, _, _, stride, padding, dilation, _, _, groups = node.args
    else:
        stride = _arg(node, 3, "stride", 1)
        padding = _arg(node, 4, "padding", 0)
        groups = _arg(node, 6, "groups", 1)
        dilation = _arg(node, 7, "dilation", 1)
    return {
        "s": _two(stride, (1, 1)),
        "p": _two(padding, (0, 0)),
        "d": _two(dilation, (1, 1)),
        "groups": int(groups),
    }


def conv_t_crop(x: Part, weight, bias, a: dict, rect: Rect) -> torch.Tensor:
    """Tensor[N, O, h, w]: the transposed conv over ``rect``, from the input rows/columns that reach it."""
    N = x.data.shape[0]
    O = weight.shape[1] * a["groups"]
    out = x.data.new_zeros((N, O, rect[1] - rect[0], rect[3] - rect[2]))
    lo, hi = [], []
    for i in (0, 1):
        o0, o1 = rect[2 * i], rect[2 * i + 1]
        k, s, d, p = weight.shape[2 + i], a["s"][i], a["d"][i], a["p"][i]
        lo.append(max(0, ceil_div(o0 + p - d * (k - 1), s)))
        hi.append(min(x.size[i], (o1 - 1 + p) // s + 1))
    if hi[0] > lo[0] and hi[1] > lo[1]:
        crop = take(x, lo[0], hi[0], lo[1], hi[1])  # [N, C, b - a, e - c]
        r = F.conv_transpose2d(crop, weight, None, a["s"], 0, 0, a["groups"], a["d"])  # rows u = o + p from a*s
        sl = []
        for i in (0, 1):
            start = lo[i] * a["s"][i] - a["p"][i]  # output coordinate of r's first row/column
            o0, o1 = max(rect[2 * i], start), min(rect[2 * i + 1], start + r.shape[2 + i])
            sl.append((o0 - rect[2 * i], o1 - rect[2 * i], o0 - start, o1 - start))
        (a0, a1, b0, b1), (c0, c1, d0, d1) = sl
        if a1 > a0 and c1 > c0:
            out[:, :, a0:a1, c0:c1] = r[:, :, b0:b1, d0:d1]
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


def max_pool_crop(x: Part, win: Window, rect: Rect) -> torch.Tensor:
    crop = take(x, *win.span(rect), fill=float("-inf"))  # -inf past the borders: never the max
    return F.max_pool2d(crop, win.k, win.s, 0, win.d)


def avg_pool_crop(node, x: Part, win: Window, rect: Rect, out_hw) -> torch.Tensor:
    """Window sums over the crop, divided by ATen's divisor (pool size clipped to the padded map, or not)."""
    include = bool(_arg(node, 5, "count_include_pad", True))
    override = _arg(node, 6, "divisor_override", None)
    crop = take(x, *win.span(rect))
    sums = F.avg_pool2d(crop, win.k, win.s, 0, divisor_override=1)  # [N, C, h, w]
    if override:
        return sums / override
    counts = []
    for a in (0, 1):
        o = torch.arange(rect[2 * a], rect[2 * a + 1], device=crop.device)
        size, k, s, p = x.size[a], win.k[a], win.s[a], win.before[a]
        start = o * s - p
        end = torch.clamp(start + k, max=size + p)
        if include:
            counts.append(end - start)
        else:
            counts.append(torch.clamp(end, max=size) - torch.clamp(start, min=0))
    div = (counts[0][:, None] * counts[1][None, :]).to(sums.dtype)  # [h, w]
    return sums / div


def upsample_axes(node, mode: str, in_hw, out_hw, double: bool = False):
    """Per axis (idx0, idx1, lam0, lam1) of the upsampling op ``node``."""
    vec = str(node.target).endswith(".vec")
    if mode == "nearest":
        align = None
        scales = _arg(node, 2, "scale_factors") if vec else [_arg(node, 2, "scales_h"), _arg(node, 3, "scales_w")]
    else:
        align = bool(node.args[2])
        scales = _arg(node, 3, "scale_factors") if vec else [_arg(node, 3, "scales_h"), _arg(node, 4, "scales_w")]
    if vec and _arg(node, 1, "output_size") is not None:
        scales = None
    scales = list(scales) if scales else [None, None]
    return [upsample_axis(in_hw[a], out_hw[a], mode, align, scales[a], double) for a in (0, 1)]


def upsample_taps(axes, device):
    return tuple([torch.as_tensor(ax[0], device=device), torch.as_tensor(ax[1], device=device)] for ax in axes)


def upsample_crop(x: Part, axes, rect: Rect) -> torch.Tensor:
    """Interpolate rows then columns over ``rect`` from the input rows/columns its taps read."""
    dev, dt = x.data.device, x.data.dtype
    if rect == (0, len(axes[0][0]), 0, len(axes[1][0])):
        return None  # the whole map out: the caller runs the op itself on the whole input
    sel = []
    for a in (0, 1):
        i0, i1, l0, l1 = (v[rect[2 * a] : rect[2 * a + 1]] for v in axes[a])
        lo, hi = int(i0.min()), int(i1.max()) + 1
        sel.append((lo, hi, [torch.as_tensor(v - lo, device=dev) for v in (i0, i1)], l0, l1))
    (ya, yb, yi, yl0, yl1), (xa, xb, xi, xl0, xl1) = sel
    crop = take(x, ya, yb, xa, xb)  # [N, C, yb - ya, xb - xa]
    r = _lerp(crop, 2, yi, yl0, yl1, dev, dt)
    return _lerp(r, 3, xi, xl0, xl1, dev, dt)


def _lerp(t, dim, idx, l0, l1, dev, dt):
    shape = [1, 1, 1, 1]
    shape[dim] = -1
    out = t.index_select(dim, idx[0])
    if not (l1 == 0).all():
        w0 = torch.as_tensor(l0, device=dev, dtype=dt).view(shape)
        w1 = torch.as_tensor(l1, device=dev, dtype=dt).view(shape)
        out = out * w0 + t.index_select(dim, idx[1]) * w1
    return out


def pad_args(node) -> tuple[list[int], str, float]:
    pad = [int(p) for p in node.args[1]]
    if str(node.target).startswith("aten.constant_pad_nd"):
        return pad, "constant", float(_arg(node, 2, "value", 0) or 0)
    mode = _arg(node, 2, "mode", "constant")
    value = _arg(node, 3, "value", None)
    return pad, mode, float(value or 0)


def pad_taps_2d(pad: list[int], mode: str, in_hw, device):
    pad = pad + [0] * (4 - len(pad))
    left, right, top, bottom = pad[:4]
    return pad_taps(in_hw[0], top, bottom, mode, device), pad_taps(in_hw[1], left, right, mode, device)


def pad_crop(x: Part, pad: list[int], mode: str, value: float, rect: Rect) -> torch.Tensor:
    pad4 = pad + [0] * (4 - len(pad))
    left, top = pad4[0], pad4[2]
    y0, y1, x0, x1 = rect
    if mode == "constant":
        return take(x, y0 - top, y1 - top, x0 - left, x1 - left, fill=value)
    return F.pad(x.full(), pad, mode=mode)[:, :, y0:y1, x0:x1]  # border modes read far away: the whole map
