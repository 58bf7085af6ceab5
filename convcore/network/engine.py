"""Run a captured network over a ROI: "exact" (the dense result inside the ROI) or "masked" (SBNet's semantics)."""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.utils._pytree import tree_unflatten

from .capture import Capture, layer_name
from .crops import (
    avg_pool_crop,
    conv_crop,
    conv_t_args,
    conv_t_crop,
    conv_window,
    max_pool_crop,
    pad_args,
    pad_crop,
    pad_taps_2d,
    pool_window,
    upsample_axes,
    upsample_crop,
    upsample_taps,
)
from .regions import Part, Region, bbox, fold, fold_window, take, transposed_taps, whole

LOCAL = ("conv", "conv_t", "max_pool", "avg_pool", "upsample", "pad", "crop")


class Regions:
    """The ROI of the input mask at every map size: ``adaptive_max_pool2d(mask) > 0``, cached per size."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask  # bool [N, H, W]
        self._at: dict[tuple[int, int], torch.Tensor] = {tuple(mask.shape[1:]): mask}
        self._float: torch.Tensor | None = None

    def at(self, h: int, w: int) -> torch.Tensor:
        """bool Tensor[N, h, w]: a position is in when any input pixel of its cell is."""
        if (h, w) not in self._at:
            if self._float is None:
                self._float = self.mask[:, None].to(torch.float32)  # [N, 1, H, W], converted once
            self._at[(h, w)] = F.adaptive_max_pool2d(self._float, (h, w))[:, 0] > 0
        return self._at[(h, w)]


def needed_regions(cap: Capture, regions: Regions) -> dict[fx.Node, Region]:
    """For every map node, the :class:`Region` the outputs' ROI needs through the receptive fields after it.

    Raises ValueError for a layer whose output depends on the whole map and TypeError for an unsupported op.
    """
    need: dict[fx.Node, Region] = {}

    def add(node: fx.Node, r: Region) -> None:
        need[node] = r if node not in need else need[node].union(r)

    for i, out in enumerate(cap.outputs):
        if not (isinstance(out, fx.Node) and out in cap.derived):
            continue
        if out not in cap.maps:
            raise ValueError(
                f"output {i} ({layer_name(out)}) is not a 4-D feature map, so it has no ROI: exact mode needs "
                'every output that depends on the input to be a map; use mode="masked"'
            )
        add(out, Region.of(regions.at(*cap.shapes[out][2:])))
    for node in reversed(cap.nodes):
        if node not in need or node is cap.input_node:
            continue
        kind = cap.kinds[node]
        if kind == "unsupported":
            raise TypeError(f"unsupported op for a ROI network: {layer_name(node)}")
        if kind not in LOCAL:
            src = node.args[0] if kind == "getitem" else node
            raise ValueError(
                f"{layer_name(src)} depends on the whole feature map (global pooling, normalization over H×W, "
                'attention or a reshape), so exact mode cannot compute it from the ROI; use mode="masked"'
            )
        m = need[node]
        for arg, m_in in input_needs(cap, node, m):
            add(arg, m_in)
        for arg in node.all_input_nodes:
            if arg in cap.derived and arg not in cap.maps:
                add(arg, m)  # not a map: raises when reached
    return need


def input_needs(cap: Capture, node: fx.Node, r: Region) -> list:
    """(map input, the :class:`Region` of it that output region ``r`` reads) for each map input of a local op."""
    kind = cap.kinds[node]
    out_hw = cap.shapes[node][2:]
    dev = r.crop.device
    if kind == "crop":
        res = []
        for a in node.all_input_nodes:
            if a not in cap.maps:
                continue
            in_hw = cap.shapes[a][2:]
            if in_hw == out_hw:
                res.append((a, r))
            else:  # broadcast along a size-1 axis: every output position reads position 0 there
                taps = [
                    [torch.zeros(out_hw[i], dtype=torch.long, device=dev)]
                    if in_hw[i] == 1
                    else [torch.arange(out_hw[i], device=dev)]
                    for i in (0, 1)
                ]
                res.append((a, fold(r, taps[0], taps[1], in_hw)))
        return res
    x = node.args[0]
    in_hw = cap.shapes[x][2:]
    if kind in ("conv", "max_pool", "avg_pool"):
        win = conv_window(node, cap.shapes[node.args[1]])[0] if kind == "conv" else pool_window(node)
        return [(x, fold_window(r, win.k, win.s, win.d, win.before, in_hw))]
    if kind == "conv_t":
        a, k = conv_t_args(node), cap.shapes[node.args[1]][2:]
        taps = [transposed_taps(out_hw[i], in_hw[i], k[i], a["s"][i], a["d"][i], a["p"][i], dev) for i in (0, 1)]
    elif kind == "upsample":
        taps = upsample_taps(node_upsample_axes(cap, node), dev)
    else:
        pad, mode, _ = pad_args(node)
        taps = pad_taps_2d(pad, mode, in_hw, dev)
    return [(x, fold(r, taps[0], taps[1], in_hw))]


def node_upsample_axes(cap: Capture, node: fx.Node):
    """Per axis (idx0, idx1, lam0, lam1) of the upsampling node ``node`` of ``cap``."""
    from .capture import UPSAMPLE

    double = node.meta["val"].dtype == torch.float64
    return upsample_axes(node, UPSAMPLE[node.target], cap.shapes[node.args[0]][2:], cap.shapes[node][2:], double)


class Runner:
    """One forward pass of a captured graph over a ROI.

    ``params`` maps the graph's parameter/buffer/constant placeholders to tensors; maps are held as :class:`Part` s.
    In exact mode ``need`` gives the :class:`Region` each map node computes (nodes no output needs are skipped); in
    masked mode every map node computes its ROI's bounding rectangle and is multiplied by the ROI there. Each value is
    dropped after its last reader.
    """

    def __init__(self, cap: Capture, params: dict, regions: Regions, mode: str, need=None, folded=None) -> None:
        self.cap, self.params, self.regions, self.mode, self.need = cap, params, regions, mode, need
        self.folded = folded if folded is not None else {}
        self.env: dict[fx.Node, object] = {}
        self._boxes: dict[int, tuple] = {}

    def box(self, region: torch.Tensor) -> tuple:
        """(bounding rectangle of ``region``, whether ``region`` fills that rectangle), cached per region tensor."""
        hit = self._boxes.get(id(region))
        if hit is None or hit[0] is not region:
            r = bbox(region)
            filled = r[1] > r[0] and bool(region[:, r[0] : r[1], r[2] : r[3]].all())
            hit = self._boxes[id(region)] = (region, r, filled)
        return hit[1], hit[2]

    def run(self, input: torch.Tensor):
        cap = self.cap
        self.like = input
        last = {}  # node → index of the last node that reads it: its value is dropped after that
        for i, node in enumerate(cap.nodes):
            for a in node.all_input_nodes:
                last[a] = i
        keep = {o for o in cap.outputs if isinstance(o, fx.Node)}
        for i, node in enumerate(cap.nodes):
            if node.op == "placeholder":
                self.env[node] = whole(input) if node is cap.input_node else self.params[node]
            elif cap.kinds[node] == "plain":
                self.env[node] = self._call(node, full=True)
            elif cap.kinds[node] == "noop":
                continue
            elif self.mode == "exact":
                if node in self.need:
                    self.env[node] = self._local(node, self.need[node].rect)
            else:
                self.env[node] = self._masked(node)
            for a in node.all_input_nodes:
                if last.get(a) == i and a not in keep and a.op != "placeholder":
                    self.env.pop(a, None)
        flat = [self._output(o) for o in cap.outputs]
        return tree_unflatten(flat, cap.out_spec)

    def _value(self, a):
        if isinstance(a, fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self._value(b) for b in a)
        return a

    def _call(self, node: fx.Node, full: bool):
        args, kwargs = self._value(node.args), {k: self._value(v) for k, v in node.kwargs.items()}
        if full:
            args, kwargs = _materialize(args), {k: _materialize(v) for k, v in kwargs.items()}
        return node.target(*args, **kwargs)

    def _masked(self, node: fx.Node):
        cap = self.cap
        kind = cap.kinds[node]
        if kind == "unsupported":
            raise TypeError(f"unsupported op for a ROI network: {layer_name(node)}")
        if kind not in LOCAL:
            v = self._call(node, full=True)
            if node not in cap.maps:
                return v
            roi = self.regions.at(*v.shape[2:])
            if v.shape[0] != roi.shape[0]:
                raise TypeError(f"{layer_name(node)} makes a map of batch {v.shape[0]}, not the input's {roi.shape[0]}")
            return _mask_part(whole(v), roi, *self.box(roi))
        roi = self.regions.at(*cap.shapes[node][2:])
        rect, filled = self.box(roi)
        part = self._local(node, rect, roi)
        return part if kind == "conv" else _mask_part(part, roi, rect, filled)

    def _local(self, node: fx.Node, rect, roi: torch.Tensor | None = None) -> Part:
        """The node's values over ``rect`` (a Part); convs compute only the region (exact) or ROI (masked)."""
        cap = self.cap
        kind = cap.kinds[node]
        N, C, H, W = cap.shapes[node]
        if kind == "crop" and node.args and node.args[0] in cap.folds.keys() and cap.folds[node.args[0]] is node:
            return self.env[node.args[0]]  # a BatchNorm folded into its conv
        x = self.env.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        if rect[1] <= rect[0] or rect[3] <= rect[2]:
            return Part(self.like.new_zeros((N, C, 0, 0)), (0, 0, 0, 0), (H, W))
        y0, y1, x0, x1 = rect
        if kind == "conv":
            weight, bias = self._conv_params(node)
            win, groups = conv_window(node, weight.shape)
            data = conv_crop(x, weight, bias, win, groups, rect, self._conv_mask(node, rect, roi))
        elif kind == "conv_t":
            bias = self._value(node.args[2]) if len(node.args) > 2 else node.kwargs.get("bias")
            data = conv_t_crop(x, self.env[node.args[1]], self._value(bias), conv_t_args(node), rect)
        elif kind == "max_pool":
            data = max_pool_crop(x, pool_window(node), rect)
        elif kind == "avg_pool":
            data = avg_pool_crop(node, x, pool_window(node), rect, (H, W))
        elif kind == "upsample":
            data = upsample_crop(x, node_upsample_axes(cap, node), rect)
            if data is None:
                data = self._call(node, full=True)
        elif kind == "pad":
            pad, mode, value = pad_args(node)
            data = pad_crop(x, pad, mode, value, rect)
        else:
            data = self._on_crops(node, rect, (H, W))
        return Part(data, rect, (H, W))

    def _conv_mask(self, node: fx.Node, rect, roi: torch.Tensor | None) -> torch.Tensor | None:
        """The positions of ``rect`` a conv computes (bool Tensor[N, h, w]), or None for all of them."""
        if self.mode == "exact":
            region = self.need[node]
            return None if region.filled else region.crop.contiguous()
        y0, y1, x0, x1 = rect
        return None if self.box(roi)[1] else roi[:, y0:y1, x0:x1].contiguous()

    def _on_crops(self, node: fx.Node, rect, hw) -> torch.Tensor:
        y0, y1, x0, x1 = rect

        def sub(a):
            if isinstance(a, Part):
                ry = (0, 1) if a.size[0] == 1 and hw[0] != 1 else (y0, y1)
                rx = (0, 1) if a.size[1] == 1 and hw[1] != 1 else (x0, x1)
                return take(a, *ry, *rx)
            if isinstance(a, torch.Tensor) and a.dim() >= 2 and tuple(a.shape[-2:]) == hw and hw != (1, 1):
                return a[..., y0:y1, x0:x1]
            if isinstance(a, (list, tuple)):
                return type(a)(sub(b) for b in a)
            return a

        args = sub(self._value(node.args))
        kwargs = {k: sub(self._value(v)) for k, v in node.kwargs.items()}
        return node.target(*args, **kwargs)

    def _conv_params(self, node: fx.Node):
        weight = self.env[node.args[1]]
        bias = self._value(node.args[2]) if len(node.args) > 2 else None
        bn = self.cap.folds.get(node)
        if bn is None:
            return weight, bias
        return self.folded.get(node) or fold_bn(weight, bias, *(self._value(a) for a in bn.args[1:5]), bn.args[7])

    def _output(self, o):
        v = self._value(o) if isinstance(o, fx.Node) else o
        if not isinstance(v, Part):
            return v
        if self.mode == "masked":
            return v.full()
        out = v.data.new_zeros(v.shape)
        if not v.empty:
            y0, y1, x0, x1 = v.rect
            roi = self.regions.at(*v.size)[:, None, y0:y1, x0:x1]
            out[:, :, y0:y1, x0:x1] = torch.where(roi, v.data, 0)
        return out


def fold_bn(weight, bias, gamma, beta, mean, var, eps: float):
    """Conv weights with an eval BatchNorm after them folded in: (Tensor[O, C/g, kh, kw], Tensor[O])."""
    scale = torch.rsqrt(var + eps)
    if gamma is not None:
        scale = scale * gamma
    b = (bias - mean if bias is not None else -mean) * scale
    if beta is not None:
        b = b + beta
    return weight * scale.view(-1, 1, 1, 1), b


def _materialize(a):
    if isinstance(a, Part):
        return a.full()
    if isinstance(a, (list, tuple)):
        return type(a)(_materialize(b) for b in a)
    return a


def _mask_part(part: Part, roi: torch.Tensor, rect, filled: bool) -> Part:
    """The part cut to ``rect`` and multiplied by the ROI there (skipped when the ROI fills the rectangle)."""
    y0, y1, x0, x1 = rect
    if part.empty or y1 <= y0 or x1 <= x0:
        return Part(part.data.new_zeros((*part.data.shape[:2], 0, 0)), (0, 0, 0, 0), part.size)
    data = take(part, y0, y1, x0, x1)
    if not filled:
        data = data * roi[:, None, y0:y1, x0:x1].to(data.dtype)
    return Part(data, rect, part.size)
