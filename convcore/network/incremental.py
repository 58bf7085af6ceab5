"""roi_network's incremental mode: re-run a network only on the forward cone of what changed in its input.

The first call runs the captured graph densely and keeps every layer's output (one dense forward's activations).
Each later call finds the input rectangles that changed (or takes ``changed``), follows them through the graph
(:mod:`.cone`), recomputes each layer on its changed rectangles from the kept, already updated outputs of the layers
before it (the same per-op crop functions as exact mode: :mod:`.crops`, convolutions through
:func:`convcore.roi_conv2d`), and writes them into the kept output in place.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_unflatten

from ..engine import rects_from_mask, tile_size
from .capture import Capture, layer_name
from .cone import ALL, NodeGeometry, Step, geometry, merge, rect_count, schedule
from .engine import Runner
from .module import LayerRegion, NetworkPlan, RoiNetwork, _check_input, _check_mask, layer_macs
from .regions import Part, whole

__all__ = ["IncrementalNetwork"]

log = logging.getLogger("convcore.network")


class _Stream(Runner):
    """The kept activations of one input shape and the ops that update them.

    ``env`` maps every node to its value: a whole-map :class:`Part` for a map, the tensor or object otherwise.
    """

    def __init__(self, cap: Capture, params: dict, folded: dict, geo: dict[fx.Node, NodeGeometry], key) -> None:
        super().__init__(cap, params, None, "exact", None, folded)
        self.geo, self.key, self.calls = geo, key, 0
        self.env.update(params)

    def _conv_mask(self, node, rect, roi):
        return None  # a changed rectangle is computed in full

    def start(self, input: torch.Tensor) -> None:
        """Run the graph densely on ``input`` (Tensor[N, C, H, W]) and keep every value."""
        cap = self.cap
        self.like = input
        folded = {bn: conv for conv, bn in cap.folds.items()}
        for node in cap.nodes:
            if node.op == "placeholder":
                if node is cap.input_node:
                    self.env[node] = whole(input.clone())
            elif cap.kinds[node] == "plain":
                self.env[node] = self._call(node, full=True)
            elif cap.kinds[node] == "noop":
                continue
            elif node in folded:
                self.env[node] = self.env[folded[node]]
            else:
                self._dense(node)

    def update(self, steps: list[Step]) -> None:
        """Apply one call's steps (graph order): recompute each layer where it changed, in place."""
        folded = {bn: conv for conv, bn in self.cap.folds.items()}
        for step in steps:
            if step.action == "alias":
                self.env[step.node] = self.env[folded[step.node]]
            elif step.action == "dense":
                self._dense(step.node)
            else:
                for rect in step.rects:
                    self._rect(step.node, rect)

    def _dense(self, node: fx.Node) -> None:
        cap = self.cap
        if cap.kinds[node] == "conv":  # through the crop path: the eval BatchNorm after it folded in
            _, _, h, w = cap.shapes[node]
            self.env[node] = self._local(node, (0, h, 0, w))
            return
        value = self._call(node, full=True)
        self.env[node] = whole(value) if node in cap.maps and isinstance(value, torch.Tensor) else value

    def _rect(self, node: fx.Node, rect) -> None:
        """Recompute ``node`` over ``rect`` = (n0, n1, y0, y1, x0, x1) and write it into its kept output."""
        n0, n1, y0, y1, x0, x1 = rect
        N = self.cap.shapes[node][0]
        saved = {}
        if (n0, n1) != (0, N):  # the images n0..n1-1 only: batch views of the map inputs
            for a in node.all_input_nodes:
                if a in self.cap.maps:
                    saved[a] = part = self.env[a]
                    self.env[a] = Part(part.data[n0:n1], part.rect, part.size)
        try:
            data = self._local(node, (y0, y1, x0, x1)).data  # [n1 - n0, C, y1 - y0, x1 - x0]
        finally:
            self.env.update(saved)
        self.env[node].data[n0:n1, :, y0:y1, x0:x1].copy_(data)

    def outputs(self):
        """What the model returns, as fresh tensors (the kept ones change in place on the next call)."""
        flat = []
        for o in self.cap.outputs:
            v = self.env[o] if isinstance(o, fx.Node) else o
            v = v.data if isinstance(v, Part) else v
            flat.append(v.clone() if isinstance(v, torch.Tensor) else v)
        return tree_unflatten(flat, self.cap.out_spec)

    def kept_bytes(self) -> int:
        """Bytes of the kept values derived from the input (each storage once)."""
        seen: dict[int, int] = {}
        for node in self.cap.derived:
            v = self.env.get(node)
            v = v.data if isinstance(v, Part) else v
            if isinstance(v, torch.Tensor):
                st = v.untyped_storage()
                seen[st.data_ptr()] = st.nbytes()
        return sum(seen.values())


@dataclass
class _Warned:
    nodes: set = field(default_factory=set)


class IncrementalNetwork(RoiNetwork):
    """A model re-run only where its input changed since the previous call. Build it with
    ``roi_network(model, mode="incremental")``.

    ``forward(input, changed=None)`` returns what ``model(input)`` returns (a tensor, tuple, list or dict; fresh
    tensors each call). The first call, the first after :meth:`reset`, after a change of the input's shape, dtype or
    device (or of inference mode), and every ``refresh_every``-th call run densely; each keeps every layer's output
    (:attr:`kept_bytes`). A later call recomputes only the forward cone of the change and writes it into the kept
    outputs in place:

    * ``changed=None``: an input position changed when any channel differs from the kept input by more than
      ``tol`` (NaN always counts as changed).
    * ``changed`` (bool Tensor[N, H, W] or [H, W]): the caller says where; the input outside it is taken to be the
      kept one (only the positions inside it are read).

    With ``tol=0`` the result equals ``model(input)`` up to float reassociation (a layer computed on a crop, a
    BatchNorm folded into its conv). With ``tol > 0`` it is exactly the dense result for an input that differs from
    ``input`` by at most ``tol`` in every element: each element is compared with the value the kept activations were
    computed from (not with the previous frame), so small changes never add up to more than ``tol``; a dense run
    every ``refresh_every`` calls brings the kept input back to the true one.

    Each image of the batch is its own stream (its own change). State lives in this module: calls on one instance
    are serialized by a lock; keep one instance per independent stream (instances share the model's parameters).
    Inference only: no autograd through this mode.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).eval()
        >>> inc = roi_network(net, mode="incremental")
        >>> x = torch.randn(1, 3, 32, 32)
        >>> _ = inc(x)                                  # dense, keeps the activations
        >>> x[:, :, 10:14, 20:24] += 1                  # a small change
        >>> bool(torch.allclose(inc(x), net(x), atol=1e-5)), round(inc.last_plan.mac_fraction, 2)
        (True, 0.07)
    """

    def __init__(self, model: nn.Module, *, tol: float = 0.0, refresh_every: int | None = None) -> None:
        super().__init__(model, "exact")
        self.mode = "incremental"
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        if refresh_every is not None and (
            isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 1
        ):
            raise ValueError(f"refresh_every must be None or an int >= 1, got {refresh_every!r}")
        self.tol, self.refresh_every = float(tol), refresh_every
        self._stream: _Stream | None = None
        self._lock = threading.Lock()
        self._warned = _Warned()
        self.last_plan: NetworkPlan | None = None

    def reset(self) -> None:
        """Forget the kept activations: the next call runs densely."""
        with self._lock:
            self._stream = None
            self.last_plan = None

    @property
    def kept_bytes(self) -> int:
        """Bytes of the activations kept between calls (0 before the first call)."""
        with self._lock:
            return self._stream.kept_bytes() if self._stream is not None else 0

    def forward(self, input: torch.Tensor, changed: torch.Tensor | None = None) -> object:
        """``model(input)`` (Tensor[N, C, H, W]), recomputing only where ``input`` changed; see the class docstring.

        ``changed`` (bool Tensor[N, H, W] or [H, W], optional): the input positions that changed.
        """
        _check_input(input)
        shared = changed is not None and changed.dim() == 2 if isinstance(changed, torch.Tensor) else False
        if changed is not None:
            changed = _check_mask(changed, input.shape, input.device, name="changed")
        key = (tuple(input.shape), input.dtype, input.device, torch.is_inference_mode_enabled())
        with self._lock, torch.no_grad():
            st = self._stream
            if st is None or st.key != key or (self.refresh_every is not None and st.calls >= self.refresh_every):
                st = self._start(input, key)
                self.last_plan = None
                return st.outputs()
            rects = self._input_rects(st, input, changed, shared)
            steps, whole_nodes = schedule(st.cap, st.geo, rects, input.shape[0])
            self._warn(whole_nodes)
            kept_input = st.env[st.cap.input_node].data
            for n0, n1, y0, y1, x0, x1 in rects:
                kept_input[n0:n1, :, y0:y1, x0:x1] = input[n0:n1, :, y0:y1, x0:x1]
            st.update(steps)
            st.calls += 1
            self.last_plan = _plan(st.cap, steps, rects)
            return st.outputs()

    def plan(self, changed: torch.Tensor, input_shape: tuple[int, ...]) -> NetworkPlan:
        """What a call with the change ``changed`` (bool Tensor[N, H, W] or [H, W]) on inputs of ``input_shape``
        (N, C, H, W) recomputes, layer by layer (``region``: its changed positions; ``macs``: what it computes,
        all of it for a layer run densely), without computing anything."""
        if len(input_shape) != 4:
            raise ValueError(f"input_shape must be (N, C, H, W), got {tuple(input_shape)}")
        p = next(iter(self.model.parameters()), None)
        dtype, device = (p.dtype, p.device) if p is not None else (torch.float32, torch.device("cpu"))
        shared = isinstance(changed, torch.Tensor) and changed.dim() == 2
        changed = _check_mask(changed, tuple(input_shape), device, name="changed")
        cap = self._capture(tuple(input_shape), dtype, device)
        rects = _mask_rects(changed, shared)
        steps, _ = schedule(cap, geometry(cap, device), rects, input_shape[0])
        return _plan(cap, steps, rects)

    def _start(self, input: torch.Tensor, key) -> _Stream:
        self._stream = None  # drop the old activations before making new ones
        cap = self._capture(input.shape, input.dtype, input.device)
        params = self._params(cap)
        st = _Stream(cap, params, self._fold(cap, params), geometry(cap, input.device), key)
        st.start(input)
        self._stream = st
        return st

    def _input_rects(self, st: _Stream, input: torch.Tensor, changed, shared: bool):
        if changed is None:
            kept = st.env[st.cap.input_node].data
            if self.tol == 0:
                changed = (input != kept).any(1)  # [N, H, W]
            else:
                changed = ~((input - kept).abs() <= self.tol).all(1)  # [N, H, W]; NaN counts as changed
            shared = False
        return _mask_rects(changed, shared)

    def _warn(self, nodes: list[fx.Node]) -> None:
        for node in nodes:
            name = layer_name(node)
            if name not in self._warned.nodes:
                self._warned.nodes.add(name)
                log.warning(
                    "incremental roi_network: %s depends on the whole map; it is recomputed in full whenever its "
                    "input changes and the layers after it see a whole changed map (exact, not faster)",
                    name,
                )


def _mask_rects(changed: torch.Tensor, shared: bool) -> list[tuple[int, int, int, int, int, int]]:
    """The rectangles (n0, n1, y0, y1, x0, x1) covering a bool Tensor[N, H, W] (the engine's tile rectangles)."""
    N, H, W = changed.shape
    mask = changed[:1] if shared else changed
    found = rects_from_mask(np.ascontiguousarray(mask.detach().cpu().numpy()), tile_size((H, W)))
    rects = [(0, N) if shared else (r.n, r.n + 1) for r in found]
    return merge([(*n, r.y0, r.y1, r.x0, r.x1) for n, r in zip(rects, found)], 0.0)


def _plan(cap: Capture, steps: list[Step], rects) -> NetworkPlan:
    """The per-layer regions of one call's steps (every map layer; an unchanged one with an empty region)."""
    by_node = {s.node: s for s in steps}
    layers = []
    for node in cap.nodes:
        if node not in cap.maps or node is cap.input_node or cap.kinds.get(node) in ("noop", "plain"):
            continue
        N, _, h, w = cap.shapes[node]
        step = by_node.get(node)
        region = torch.zeros(N, h, w, dtype=torch.bool)
        if step is not None and step.rects != ALL:
            for n0, n1, y0, y1, x0, x1 in step.rects:
                region[n0:n1, y0:y1, x0:x1] = True
        count = 0 if step is None or step.action == "alias" else N * h * w if step.action == "dense" else None
        if count is None:
            count = sum(rect_count(r) for r in step.rects)
        macs, dense = layer_macs(cap, node, count)
        ys, xs = region.any(0).any(1).nonzero(), region.any(0).any(0).nonzero()
        rect = (int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1) if ys.numel() else (0, 0, 0, 0)
        layers.append(LayerRegion(layer_name(node), (h, w), region, rect, macs, dense))
    return NetworkPlan("incremental", layers)
