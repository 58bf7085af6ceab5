"""roi_network: run a whole CNN only inside a region of interest of its input."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from .capture import Capture, capture, layer_name
from .crops import conv_window
from .engine import Regions, Runner, fold_bn, needed_regions
from .regions import Region

__all__ = ["LayerRegion", "NetworkPlan", "RoiNetwork", "layer_macs", "roi_network"]

MODES = ("exact", "masked")
_CACHE = 8  # captured graphs kept per RoiNetwork (one per input shape, dtype and device)
_CAPTURE_LOCK = threading.Lock()  # torch.export and the caches are not safe to run from several threads at once


@dataclass
class LayerRegion:
    """What one map-producing layer computes.

    Attributes:
        name: the ATen op and the module it came from.
        size: (h, w) of its output map.
        region (Tensor[N, h, w], bool): the positions it computes.
        rect: (y0, y1, x0, x1), the region's bounding rectangle over the batch.
        macs: multiply-accumulates it computes (convolutions only, else 0).
        dense_macs: multiply-accumulates of the dense layer.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)).eval()
        >>> mask = torch.zeros(16, 16, dtype=torch.bool); mask[4:6, 4:6] = True
        >>> [(layer.size, layer.rect) for layer in roi_network(net).plan(mask, (1, 1, 16, 16)).layers]
        [((16, 16), (3, 7, 3, 7)), ((16, 16), (4, 6, 4, 6))]
    """

    name: str
    size: tuple[int, int]
    region: torch.Tensor
    rect: tuple[int, int, int, int]
    macs: int
    dense_macs: int


@dataclass
class NetworkPlan:
    """Per-layer regions of a ROI network for one mask and input shape (see :meth:`RoiNetwork.plan`).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)).eval()
        >>> mask = torch.zeros(16, 16, dtype=torch.bool); mask[:4, :] = True
        >>> roi_network(net).plan(mask, (1, 1, 16, 16)).mac_fraction
        0.25
    """

    mode: str
    layers: list[LayerRegion]

    @property
    def mac_fraction(self) -> float:
        """MACs computed / dense MACs over the convolutions (0 when there are none)."""
        dense = sum(layer.dense_macs for layer in self.layers)
        return sum(layer.macs for layer in self.layers) / dense if dense else 0.0


class RoiNetwork(nn.Module):
    """A model run only inside a region of interest. Build it with :func:`roi_network`; see there.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1)).eval()
        >>> roi_network(net, mode="masked")(torch.randn(1, 1, 8, 8), torch.ones(8, 8, dtype=torch.bool)).shape
        torch.Size([1, 2, 1, 1])
    """

    def __init__(self, model: nn.Module, mode: str = "exact") -> None:
        super().__init__()
        if isinstance(model, torch.export.ExportedProgram):
            model = model.module()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module or a torch.export.ExportedProgram, got {type(model).__name__}")
        if mode not in MODES:
            raise ValueError(
                f'mode must be "exact" or "masked" (for "incremental" use roi_network(model, mode="incremental")), '
                f"got {mode!r}"
            )
        self.model = model
        self.mode = mode
        self._captures: OrderedDict[tuple, Capture] = OrderedDict()
        self._folded: dict = {}

    def forward(self, input: torch.Tensor, mask: torch.Tensor) -> object:
        """Run the model on ``input`` (Tensor[N, C, H, W]) inside ``mask`` (bool Tensor[N, H, W] or [H, W]).

        Returns what ``model(input)`` returns (a tensor, a tuple/list or a dict); every 4-D map in it is zero outside
        its ROI (exact: equal to the dense model inside; masked: SBNet's semantics everywhere).
        """
        _check_input(input)
        mask = _check_mask(mask, input.shape, input.device)
        cap = self._capture(input.shape, input.dtype, input.device)
        regions = Regions(mask)
        need = needed_regions(cap, regions) if self.mode == "exact" else None
        params = self._params(cap)
        runner = Runner(cap, params, regions, self.mode, need, self._fold(cap, params))
        return runner.run(input)

    def plan(self, mask: torch.Tensor, input_shape: tuple[int, ...]) -> NetworkPlan:
        """The region every map-producing layer computes for ``mask`` and inputs of ``input_shape`` (N, C, H, W).

        Raises as :meth:`forward` would (ValueError / TypeError) without computing any layer.
        """
        if len(input_shape) != 4:
            raise ValueError(f"input_shape must be (N, C, H, W), got {tuple(input_shape)}")
        p = next(iter(self.model.parameters()), None)
        dtype, device = (p.dtype, p.device) if p is not None else (torch.float32, torch.device("cpu"))
        mask = _check_mask(mask, tuple(input_shape), device)
        cap = self._capture(tuple(input_shape), dtype, device)
        regions = Regions(mask)
        need = needed_regions(cap, regions) if self.mode == "exact" else None
        layers = []
        for node in cap.nodes:
            if node not in cap.maps or node is cap.input_node or cap.kinds.get(node) == "noop":
                continue
            if need is not None and node not in need:
                continue
            h, w = cap.shapes[node][2:]
            region = need[node] if need is not None else Region.of(regions.at(h, w))
            macs, dense = layer_macs(cap, node, region.count())
            layers.append(LayerRegion(layer_name(node), (h, w), region.full(), region.rect, macs, dense))
        return NetworkPlan(self.mode, layers)

    def _capture(self, shape, dtype, device) -> Capture:
        key = (tuple(int(s) for s in shape), dtype, torch.device(device))
        with _CAPTURE_LOCK:
            cap = self._captures.get(key)
            if cap is None:
                with torch.inference_mode(False):
                    example = torch.zeros(key[0], dtype=dtype, device=device)
                    cap = capture(self.model, example)
                self._captures[key] = cap
                if len(self._captures) > _CACHE:
                    self._captures.popitem(last=False)
            self._captures.move_to_end(key)
        return cap

    def _params(self, cap: Capture) -> dict[fx.Node, object]:
        out = {}
        for node, (kind, target) in cap.sources.items():
            if kind == "parameter":
                out[node] = self.model.get_parameter(target)
            elif kind == "buffer":
                out[node] = self.model.get_buffer(target)
            else:
                out[node] = cap.constants[target]
        return out

    def _fold(self, cap: Capture, params: dict) -> dict:
        """BatchNorm-folded conv weights, recomputed when any tensor they come from changed (``_version``)."""
        out = {}
        for conv, bn in cap.folds.items():
            srcs = [conv.args[1], conv.args[2] if len(conv.args) > 2 else None, *bn.args[1:5]]
            tensors = [params.get(a) if isinstance(a, fx.Node) else None for a in srcs]
            if any(isinstance(a, fx.Node) and a not in params for a in srcs):
                continue
            if torch.is_grad_enabled():  # fold inside the autograd graph, every call
                out[conv] = fold_bn(tensors[0], tensors[1], *tensors[2:], bn.args[7])
                continue
            key = tuple((t.data_ptr(), t._version, t.device) if t is not None else None for t in tensors)
            cached = self._folded.get((id(cap), conv))
            if cached is None or cached[0] != key:
                cached = (key, fold_bn(tensors[0], tensors[1], *tensors[2:], bn.args[7]))
                self._folded[(id(cap), conv)] = cached
            out[conv] = cached[1]
        return out


def roi_network(
    model: nn.Module, *, mode: str = "exact", tol: float = 0.0, refresh_every: int | None = None
) -> RoiNetwork:
    """Wrap ``model`` so that it runs only inside a region of interest of its input, or only where it changed.

    The model is captured with ``torch.export`` (one capture per input shape, cached) and its graph is run op by op:
    each convolution goes through :func:`convcore.roi_conv2d` over its region, every other spatial op is computed on
    the bounding rectangle of its region.

    * ``mode="exact"``: at the ROI of every 4-D output, the result equals ``model(input)``. Each layer computes
      only the positions the outputs' ROI needs through the receptive fields of the layers after it (found on the
      graph; a region covering more than half of its bounding rectangle is computed over the whole rectangle).
      Outside the ROI the outputs are zero. A layer whose output depends on the whole map (global pooling,
      instance/group/layer norm, attention, a reshape) raises ValueError; use ``mode="masked"`` for those models.
    * ``mode="masked"`` (SBNet's semantics): every 4-D floating-point tensor an op produces is multiplied by the ROI
      at its size, so everything outside the ROI is zero, and each layer computes only inside its ROI. Ops that
      depend on the whole map (squeeze-excitation, instance/group norm) run on the whole (masked) map.

    * ``mode="incremental"``: ``forward(input, changed=None)`` re-runs the model only on the forward cone of what
      changed since the previous call and returns what ``model(input)`` returns; see
      :class:`convcore.network.incremental.IncrementalNetwork` (``tol`` and ``refresh_every`` belong to this mode).

    The ROI of a map of size (h, w) is ``F.adaptive_max_pool2d(mask[:, None].float(), (h, w))[:, 0] > 0``.

    Supported: Conv2d (any stride/padding/dilation/groups; other padding modes come as a pad op), ConvTranspose2d,
    BatchNorm in eval (folded into the conv before it), pointwise ops and activations, max/avg pooling (ceil_mode
    too), nearest/bilinear upsampling, add/mul/cat/channel slices, pad, Identity/Dropout in eval. Another op that
    reads a map raises TypeError naming it; so does a forward that branches on a tensor's value.

    Autograd works through both modes (every op here is a differentiable torch op, and roi_conv2d's gathers and
    writes are); BatchNorm folding is recomputed at each call when grad is enabled.

    Args:
        model: an ``nn.Module`` taking one Tensor[N, C, H, W], or a ``torch.export.ExportedProgram``.
        mode: "exact", "masked" or "incremental".
        tol: incremental mode: an input element counts as changed when it differs from the previous one by more.
        refresh_every: incremental mode: run densely every this many calls (None: only when needed).

    Example:
        >>> import torch, convcore
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()).eval()
        >>> x = torch.randn(1, 3, 32, 32)
        >>> mask = torch.zeros(32, 32, dtype=torch.bool)
        >>> mask[8:16, 8:20] = True
        >>> y = convcore.roi_network(net)(x, mask)
        >>> bool(torch.allclose(y[0, :, 8:16, 8:20], net(x)[0, :, 8:16, 8:20], atol=1e-5))
        True
    """
    if mode == "incremental":
        from .incremental import IncrementalNetwork

        return IncrementalNetwork(model, tol=tol, refresh_every=refresh_every)
    if tol != 0.0 or refresh_every is not None:
        raise ValueError(f'tol and refresh_every belong to mode="incremental", not mode={mode!r}')
    return RoiNetwork(model, mode)


def layer_macs(cap: Capture, node: fx.Node, count: int) -> tuple[int, int]:
    """(MACs of ``node`` computing ``count`` output positions, MACs of the dense layer); (0, 0) for a non-conv."""
    kind = cap.kinds[node]
    N, O, h, w = cap.shapes[node]
    if kind == "conv":
        wshape = cap.shapes[node.args[1]]
        _, groups = conv_window(node, wshape)
        per = O * wshape[1] * wshape[2] * wshape[3]
        return count * per, N * h * w * per
    if kind == "conv_t":
        wshape = cap.shapes[node.args[1]]
        H, W = cap.shapes[node.args[0]][2:]
        dense = N * H * W * wshape[0] * wshape[1] * wshape[2] * wshape[3]  # weight (C_in, O/groups, kh, kw)
        return round(dense * count / (N * h * w)), dense
    return 0, 0


def _check_input(input: object) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor of shape (N, C, H, W), got {type(input).__name__}")
    if input.dim() != 4 or not input.is_floating_point():
        raise ValueError(f"input must be a floating-point (N, C, H, W) tensor, got {input.dtype} {tuple(input.shape)}")


def _check_mask(mask: object, shape, device, name: str = "mask") -> torch.Tensor:
    """bool Tensor[N, H, W] on ``device`` from a (N, H, W) or (H, W) mask over input pixels."""
    N, _, H, W = shape
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor of shape (N, H, W) or (H, W), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got {mask.dtype}; use {name} > 0")
    if mask.dim() == 2 and tuple(mask.shape) == (H, W):
        mask = mask.expand(N, H, W)
    if tuple(mask.shape) != (N, H, W):
        raise ValueError(
            f"{name} must have shape (N, H, W) = ({N}, {H}, {W}) or (H, W) = ({H}, {W}), got {tuple(mask.shape)}; "
            f"{name} is over input pixels"
        )
    if mask.device != torch.device(device):
        raise ValueError(f"{name} is on {mask.device} but input is on {device}")
    return mask.contiguous()
