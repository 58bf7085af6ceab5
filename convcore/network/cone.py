"""The forward cone of a change: the rectangles of every layer's output that a change of the input reaches.

A change is a short list of rectangles ``(n0, n1, y0, y1, x0, x1)`` (images n0..n1-1, half-open rows and columns).
Along each axis, output ``o`` of a local op reads input ``taps[j][o]`` (``-1``: nothing, e.g. zero padding); the
:class:`Reach` of an axis gives, for every input position, the first and last output that reads it, so an input range
``[a, b)`` reaches the outputs ``[min(first[a:b]), max(last[a:b]) + 1)``. That range holds the exact cone (it may
hold more where a stride or dilation skips positions; recomputing more stays exact).

:func:`schedule` walks the graph once per call: each layer's change is the union of its inputs' changes pushed
through its reach, merged by the cost model (two rectangles become their bounding box when that is cheaper than two
calls), and computed on those rectangles or densely, whichever the cost model finds cheaper. An op whose output
depends on the whole map (global pooling, normalization over H×W, attention, a reshape) is recomputed in full when its
input changed, and its whole output counts as changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx

from ..plan import device_costs
from .capture import Capture
from .crops import conv_t_args, conv_window, pad_args, pad_taps_2d, pool_window
from .engine import LOCAL, node_upsample_axes
from .regions import transposed_taps

__all__ = ["ALL", "NodeGeometry", "Reach", "Step", "geometry", "merge", "rect_count", "schedule"]

Rect6 = tuple[int, int, int, int, int, int]  # (n0, n1, y0, y1, x0, x1), half-open
ALL = "all"  # the change of a value that is not a map: all of it


@dataclass(frozen=True)
class Reach:
    """Per input position along one axis: the first and last output position that reads it (empty: first > last)."""

    first: np.ndarray  # int64 [in_size]; out_size where no output reads the position
    last: np.ndarray  # int64 [in_size]; -1 where no output reads the position

    def span(self, a: int, b: int) -> tuple[int, int] | None:
        """The outputs [c, d) that read any input of [a, b); None when none does."""
        if b <= a:
            return None
        c, d = int(self.first[a:b].min()), int(self.last[a:b].max()) + 1
        return (c, d) if d > c else None


def _reach(taps: list[np.ndarray], in_size: int, out_size: int) -> Reach:
    first = np.full(in_size, out_size, dtype=np.int64)
    last = np.full(in_size, -1, dtype=np.int64)
    o = np.arange(out_size, dtype=np.int64)
    for t in taps:
        t = np.asarray(t, dtype=np.int64)
        ok = (t >= 0) & (t < in_size)
        np.minimum.at(first, t[ok], o[ok])
        np.maximum.at(last, t[ok], o[ok])
    return Reach(first, last)


@dataclass
class NodeGeometry:
    """What the cone and the cost model need of one local op.

    Attributes:
        reach: map input → (Reach along y, Reach along x).
        position_seconds: the cost model's time of one output position of one image, computed densely.
        copy_seconds: the extra time per position on a rectangle (its input crop and the write back).
        call_seconds: the fixed cost of one call.
    """

    reach: dict[fx.Node, tuple[Reach, Reach]]
    position_seconds: float
    copy_seconds: float
    call_seconds: float


def geometry(cap: Capture, device: torch.device) -> dict[fx.Node, NodeGeometry]:
    """The :class:`NodeGeometry` of every local map op of ``cap`` whose map inputs it can follow."""
    k = device_costs(device)
    out: dict[fx.Node, NodeGeometry] = {}
    for node in cap.nodes:
        if cap.kinds.get(node) not in LOCAL or node not in cap.maps:
            continue
        if any(a in cap.derived and a not in cap.maps for a in node.all_input_nodes):
            continue  # reads a value derived from the input that is not a map: recomputed in full
        reach = {}
        for a in node.all_input_nodes:
            if a in cap.maps:
                taps = _taps(cap, node, a)
                if taps is None:
                    break
                sizes = cap.shapes[a][2:], cap.shapes[node][2:]
                reach[a] = tuple(_reach(taps[i], sizes[0][i], sizes[1][i]) for i in (0, 1))
        else:
            flops, copies = _position_work(cap, node)
            out[node] = NodeGeometry(reach, flops * k.conv_flop, copies * k.copy_elem, k.call)
    return out


def _taps(cap: Capture, node: fx.Node, a: fx.Node) -> tuple[list, list] | None:
    """Per axis, the input position each output position reads through each tap (numpy int64, ``-1``: none)."""
    kind = cap.kinds[node]
    in_hw, out_hw = cap.shapes[a][2:], cap.shapes[node][2:]
    if kind == "crop":
        if any(i != o and i != 1 for i, o in zip(in_hw, out_hw)):
            return None
        return tuple([np.arange(o) if i == o else np.zeros(o, dtype=np.int64)] for i, o in zip(in_hw, out_hw))
    if a is not node.args[0]:
        return None
    if kind in ("conv", "max_pool", "avg_pool"):
        win = conv_window(node, cap.shapes[node.args[1]])[0] if kind == "conv" else pool_window(node)
        res = []
        for i in (0, 1):
            o = np.arange(out_hw[i], dtype=np.int64) * win.s[i] - win.before[i]
            res.append([o + j * win.d[i] for j in range(win.k[i])])
        return tuple(res)
    if kind == "conv_t":
        g, kern = conv_t_args(node), cap.shapes[node.args[1]][2:]
        return tuple(
            [t.numpy() for t in transposed_taps(out_hw[i], in_hw[i], kern[i], g["s"][i], g["d"][i], g["p"][i], "cpu")]
            for i in (0, 1)
        )
    if kind == "upsample":
        return tuple([ax[0], ax[1]] for ax in node_upsample_axes(cap, node))
    pad, mode, _ = pad_args(node)
    return tuple([t.numpy() for t in taps] for taps in pad_taps_2d(pad, mode, in_hw, "cpu"))


def _position_work(cap: Capture, node: fx.Node) -> tuple[float, float]:
    """(FLOPs, copied elements) of one output position of one image; copies are those of computing on a crop."""
    kind = cap.kinds[node]
    out_c = cap.shapes[node][1]
    in_c = sum(cap.shapes[a][1] for a in node.all_input_nodes if a in cap.maps)
    if kind == "conv":
        wshape = cap.shapes[node.args[1]]
        win = conv_window(node, wshape)[0]
        return 2.0 * out_c * wshape[1] * wshape[2] * wshape[3], in_c * win.s[0] * win.s[1] + out_c
    if kind == "conv_t":
        wshape = cap.shapes[node.args[1]]
        s = conv_t_args(node)["s"]
        return 2.0 * wshape[0] * wshape[1] * wshape[2] * wshape[3] / (s[0] * s[1]), in_c + out_c
    return 0.0, in_c + 2 * out_c


def rect_count(r: Rect6) -> int:
    """Positions of a rectangle over all its images."""
    return (r[1] - r[0]) * (r[3] - r[2]) * (r[5] - r[4])


def _box(a: Rect6, b: Rect6) -> Rect6:
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]), min(a[4], b[4]), max(a[5], b[5]))


def _overlap(a: Rect6, b: Rect6) -> int:
    sides = [min(a[i + 1], b[i + 1]) - max(a[i], b[i]) for i in (0, 2, 4)]
    return sides[0] * sides[1] * sides[2] if min(sides) > 0 else 0


def merge(rects: list[Rect6], call_positions: float) -> list[Rect6]:
    """Rectangles covering ``rects``, any two replaced by their bounding box when that costs no more than computing
    both: box positions <= their positions (the overlap once) + ``call_positions`` (a call's cost in positions).

    Only rectangles over touching or overlapping image ranges merge (the box then spans both ranges).
    """
    rects = sorted(set(r for r in rects if rect_count(r) > 0))
    merged = True
    while merged and len(rects) > 1:
        merged = False
        for i in range(len(rects)):
            for j in range(i + 1, len(rects)):
                a, b = rects[i], rects[j]
                if max(a[0], b[0]) > min(a[1], b[1]):
                    continue
                box = _box(a, b)
                if rect_count(box) <= rect_count(a) + rect_count(b) - _overlap(a, b) + call_positions:
                    rects[i] = box
                    del rects[j]
                    merged = True
                    break
            if merged:
                break
    return rects


@dataclass
class Step:
    """One layer's work in an incremental call.

    Attributes:
        node: the layer.
        action: "rects" (compute ``rects`` and write them into the kept output), "dense" (compute all of it),
            "alias" (an eval BatchNorm folded into the conv before it: that conv's output).
        rects: the rectangles of its output that changed (for a map); its work in "rects".
    """

    node: fx.Node
    action: str
    rects: list[Rect6] | str = field(default_factory=list)


def schedule(
    cap: Capture, geo: dict[fx.Node, NodeGeometry], changed: list[Rect6], batch: int
) -> tuple[list[Step], list[fx.Node]]:
    """The steps of one incremental call for an input change ``changed``, in graph order, and the nodes recomputed
    in full because they depend on the whole map (for a warning)."""
    changes: dict[fx.Node, list[Rect6] | str] = {cap.input_node: changed}
    folded = {bn: conv for conv, bn in cap.folds.items()}
    steps: list[Step] = []
    whole: list[fx.Node] = []
    for node in cap.nodes:
        if node.op != "call_function" or node not in cap.derived or cap.kinds.get(node) == "noop":
            continue
        srcs = [a for a in node.all_input_nodes if changes.get(a)]
        if not srcs:
            continue
        if node in folded:
            changes[node] = changes.get(folded[node], [])
            steps.append(Step(node, "alias", changes[node]))
            continue
        g = geo.get(node)
        full = _full(cap, node, batch)
        if g is None or any(changes[a] == ALL for a in srcs):
            if cap.kinds.get(node) not in LOCAL:
                whole.append(node)
            changes[node] = full
            steps.append(Step(node, "dense", full))
            continue
        rects = []
        for a in srcs:
            ry, rx = g.reach[a]
            for n0, n1, y0, y1, x0, x1 in changes[a]:
                sy, sx = ry.span(y0, y1), rx.span(x0, x1)
                if sy is not None and sx is not None:
                    rects.append((n0, n1, *sy, *sx))
        per = g.position_seconds + g.copy_seconds
        rects = merge(rects, g.call_seconds / per if per > 0 else 0.0)
        if not rects:
            continue
        changes[node] = rects
        on_rects = sum(rect_count(r) for r in rects) * per + len(rects) * g.call_seconds
        dense = rect_count(full[0]) * (g.position_seconds + g.copy_seconds / 4) + g.call_seconds
        steps.append(Step(node, "dense" if dense <= on_rects else "rects", rects))
    return steps, whole


def _full(cap: Capture, node: fx.Node, batch: int) -> list[Rect6] | str:
    if node not in cap.maps:
        return ALL
    N, _, h, w = cap.shapes[node]
    return [(0, N, 0, h, 0, w)]
