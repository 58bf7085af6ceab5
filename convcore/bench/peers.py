"""``python -m convcore.bench peers``: the layers researchers write today, each from its paper's formulas with
``F.unfold`` (the formulation their public code uses), against convcore's one-liners and one plain ``F.conv2d`` (or
a depthwise one, for morphology) of the same shape, forward and forward+backward, calls interleaved round by round.

* AdderNet (Chen et al., CVPR 2020): y = −Σ|x − w| over each window, trained with the paper's gradient
  (HardTanh(w − x) for the input, x − w for the weight); convcore: ``DistanceConv2d(..., grad=ADDERNET_GRAD)``.
* Kervolution (Wang et al., CVPR 2019): polynomial (xᵀw + c)^d and Gaussian exp(−γ‖x − w‖²) kernels of each window;
  convcore: ``(roi_conv2d(x, w) + c) ** d`` and ``exp(γ · distance_conv2d(x, w, p=2))``.
* Morphology as kornia defines it (per channel, one structuring element, reflected for dilation): max over the
  window of x + se; convcore: ``morph_conv2d`` with ``groups=C``.

Shapes: AdderNet's CIFAR layers (32×16×32², 32×64×8²) and 2×16×256², 3×3, padding 1. Plus one training step
(forward, cross-entropy, backward, SGD) of AdderNet's ResNet-20 on a 32-image CIFAR batch, the adder layers written
the unfold way against ``DistanceConv2d``. Targets: the adder layer forward <= 3× F.conv2d and forward+backward
<= 5× at 32×16×32² (with AdderNet's gradient); the ResNet-20 step >= 20× faster than the unfold formulation;
morphology <= 1.5× a depthwise F.conv2d.

Two more columns keep the previous forms in the same run: "dw reduced" (AdderNet's gradient with its x − w not
declared affine: the weight gradient as a window reduction instead of a convolution's weight gradient) and "fused
band" (dilation through ``window_op2d(..., reduce="max")``: the reduction kernel morph compiled to before its tap
form). By default freed memory stays in the heap (``--heap reuse``, :func:`convcore.bench.measure.reuse_heap`):
with glibc's default a call's large output can be page-faulted in afresh on every call, which cost a depthwise
F.conv2d of 2×16×256² 13 of its 16 ms here, depending on the allocator's history.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..algebraic import ADDERNET_GRAD, distance_conv2d
from ..functional import roi_conv2d
from ..layers import DistanceConv2d
from ..morph import morph_conv2d
from ..window import window_op2d
from .measure import measure, reuse_heap

__all__ = ["AdderResNet20", "main", "run_layers", "run_resnet"]

SHAPES = [(32, 16, 32), (32, 64, 8), (2, 16, 256)]  # (N, C = O, H = W)
POLY_C, POLY_D, GAMMA = 1.0, 2, 0.5


def _full_precision(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x - w  # AdderNet's weight gradient, not declared affine: the fused band reduces it over (B, h, w)


def _plus(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x + w


# the comparison columns, reachable through the public API: "dw reduced" (AdderNet's gradient with its x − w left
# undeclared, so the fused band sums it as a window reduction instead of a convolution's weight gradient) and
# "fused band" (dilation as window_op2d(x + w, reduce="max"): the fused reduction morph_conv2d compiled to before its
# tap form)
REDUCED_ADDERNET_GRAD = (ADDERNET_GRAD[0], _full_precision)


class _UnfoldAdder(torch.autograd.Function):
    """AdderNet's adder layer from the paper's formulas on F.unfold columns, with its gradient."""

    @staticmethod
    def forward(ctx, cols, w):  # cols [N, C*k*k, L], w [O, C*k*k]
        ctx.save_for_backward(cols, w)
        return -(cols[:, None] - w[None, :, :, None]).abs().sum(2)  # [N, O, L]

    @staticmethod
    def backward(ctx, g):  # g [N, O, L]
        cols, w = ctx.saved_tensors
        diff = cols[:, None] - w[None, :, :, None]  # [N, O, C*k*k, L]: x − w
        grad_w = (g[:, :, None] * diff).sum((0, 3))  # full-precision x − w
        grad_cols = (g[:, :, None] * F.hardtanh(-diff)).sum(1)  # HardTanh(w − x)
        return grad_cols, grad_w


def unfold_adder(x: torch.Tensor, w: torch.Tensor, padding: int = 1, stride: int = 1) -> torch.Tensor:
    N, _, H, W = x.shape
    O, _, kh, kw = w.shape
    cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # [N, C*kh*kw, L]
    y = _UnfoldAdder.apply(cols, w.reshape(O, -1))  # [N, O, L]
    return y.view(N, O, (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1)


def unfold_kervolution(x: torch.Tensor, w: torch.Tensor, kind: str) -> torch.Tensor:
    N, _, H, W = x.shape
    O = w.shape[0]
    cols = F.unfold(x, 3, padding=1)  # [N, C*9, L]
    wf = w.reshape(O, -1)  # [O, C*9]
    if kind == "poly":
        y = (wf @ cols + POLY_C) ** POLY_D  # [N, O, L]
    else:
        y = torch.exp(-GAMMA * (cols[:, None] - wf[None, :, :, None]).square().sum(2))  # [N, O, L]
    return y.view(N, O, H, W)


def unfold_dilation(x: torch.Tensor, se: torch.Tensor) -> torch.Tensor:
    """kornia's definition: every channel, one structuring element (reflected), max over the window of x + se."""
    N, C, H, W = x.shape
    kh, kw = se.shape
    cols = F.unfold(x, (kh, kw), padding=(kh // 2, kw // 2)).view(N, C, kh * kw, H * W)  # [N, C, k*k, L]
    return (cols + se.flip(0, 1).reshape(1, 1, -1, 1)).amax(2).view(N, C, H, W)


def _layer_cases(N: int, C: int, S: int) -> dict[str, tuple[Callable, ...]]:
    """name -> (forward(x) callables: baseline, peer, convcore...) over one input x (Tensor[N, C, S, S])."""
    g = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(C, C, 3, 3, generator=g) / 12)
    se = torch.rand(3, 3, generator=g) / 10
    se_dw = se.flip(0, 1).expand(C, 1, 3, 3).contiguous().requires_grad_()
    dw = torch.randn(C, 1, 3, 3, generator=g).requires_grad_()
    adder = DistanceConv2d(C, C, 3, padding=1, grad=ADDERNET_GRAD, compile=True)
    adder_eager = DistanceConv2d(C, C, 3, padding=1, grad=ADDERNET_GRAD, compile=False)
    adder_reduced = DistanceConv2d(C, C, 3, padding=1, grad=REDUCED_ADDERNET_GRAD, compile=True)
    adder_eager.weight, adder.weight, adder_reduced.weight = w, w, w
    return {
        "adder": (
            ("F.conv2d", lambda x: F.conv2d(x, w, padding=1)),
            ("unfold", lambda x: unfold_adder(x, w)),
            ("convcore", adder),
            ("convcore eager", adder_eager),
            ("dw reduced", adder_reduced),
        ),
        "kervolution poly": (
            ("F.conv2d", lambda x: F.conv2d(x, w, padding=1)),
            ("unfold", lambda x: unfold_kervolution(x, w, "poly")),
            ("convcore", lambda x: (roi_conv2d(x, w, padding=1) + POLY_C) ** POLY_D),
        ),
        "kervolution gaussian": (
            ("F.conv2d", lambda x: F.conv2d(x, w, padding=1)),
            ("unfold", lambda x: unfold_kervolution(x, w, "gaussian")),
            ("convcore", lambda x: torch.exp(GAMMA * distance_conv2d(x, w, 2, padding=1))),
        ),
        "morph dilation": (
            ("depthwise F.conv2d", lambda x: F.conv2d(x, dw, padding=1, groups=C)),
            ("unfold", lambda x: unfold_dilation(x, se)),
            ("convcore", lambda x: morph_conv2d(x, se_dw, padding=1, groups=C, compile=True)),
            ("convcore eager", lambda x: morph_conv2d(x, se_dw, padding=1, groups=C, compile=False)),
            ("fused band", lambda x: window_op2d(x, se_dw, _plus, reduce="max", padding=1, groups=C, compile=True)),
        ),
    }


def run_layers(
    rounds: int, only: str | None = None, shapes=SHAPES, stat: str = "median", clock: str = "wall"
) -> list[dict]:
    rows = []
    for N, C, S in shapes:
        x = torch.randn(N, C, S, S, generator=torch.Generator().manual_seed(1))
        xg = x.clone().requires_grad_()
        for name, impls in _layer_cases(N, C, S).items():
            if only and only not in name:
                continue
            for mode in ("forward", "forward+backward"):
                if mode == "forward":
                    fns = {k: (lambda f=f, x=x: _no_grad(f, x)) for k, f in impls}
                else:
                    fns = {k: (lambda f=f, xg=xg: f(xg).sum().backward()) for k, f in impls}
                times = measure(fns, rounds=rounds, stat=stat, clock=clock)
                base = times[impls[0][0]]
                rows.append(
                    dict(layer=name, shape=f"{N}x{C}x{S}^2", mode=mode, baseline=impls[0][0], base_ms=base * 1e3)
                    | {k: t / base for k, t in times.items() if k != impls[0][0]}
                )
                print(_row(rows[-1]), flush=True)
    return rows


def _no_grad(f: Callable, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return f(x)


def _row(r: dict) -> str:
    ratios = "  ".join(f"{k} {v:6.1f}x" for k, v in r.items() if isinstance(v, float) and k != "base_ms")
    return f"{r['layer']:22s} {r['shape']:11s} {r['mode']:17s} {r['baseline']} {r['base_ms']:8.2f} ms  {ratios}"


class _UnfoldAdderLayer(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) / math.sqrt(cin * 9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unfold_adder(x, self.weight, stride=self.stride)


class _Block(nn.Module):
    """ResNet's basic block with adder layers in place of its two 3×3 convolutions (AdderNet's ResNet-20)."""

    def __init__(self, cin: int, cout: int, stride: int, adder: Callable[[int, int, int], nn.Module]) -> None:
        super().__init__()
        self.a1, self.b1 = adder(cin, cout, stride), nn.BatchNorm2d(cout)
        self.a2, self.b2 = adder(cout, cout, 1), nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            # the projection shortcut: a 1×1 strided convolution, as in AdderNet's ResNet-20
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.b1(self.a1(x)))
        y = self.b2(self.a2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


class AdderResNet20(nn.Module):
    """ResNet-20 for CIFAR-10 (3 stages × 3 blocks, 16/32/64 channels) with adder layers in the blocks; the first
    convolution and the classifier stay ordinary, as in AdderNet."""

    def __init__(self, adder: Callable[[int, int, int], nn.Module]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(_Block(cin, cout, stride if i == 0 else 1, adder))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def _convcore_adder(compile: bool | str, grad=ADDERNET_GRAD) -> Callable[[int, int, int], nn.Module]:
    def make(cin: int, cout: int, stride: int) -> nn.Module:
        return DistanceConv2d(cin, cout, 3, stride, 1, bias=False, grad=grad, compile=compile)

    return make


def run_resnet(rounds: int, batch: int = 32, stat: str = "median", clock: str = "wall") -> dict:
    g = torch.Generator().manual_seed(2)
    x, labels = torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
    nets = {
        "unfold": AdderResNet20(lambda i, o, s: _UnfoldAdderLayer(i, o, s)),
        "convcore": AdderResNet20(_convcore_adder(True)),
        "convcore eager": AdderResNet20(_convcore_adder(False)),
        "dw reduced": AdderResNet20(_convcore_adder(True, REDUCED_ADDERNET_GRAD)),
    }

    def step(net: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        F.cross_entropy(net(x), labels).backward()
        opt.step()

    opts = {k: torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9) for k, n in nets.items()}
    times = measure({k: (lambda k=k: step(nets[k], opts[k])) for k in nets}, rounds=rounds, stat=stat, clock=clock)
    r = dict(layer="ResNet-20 step", shape=f"{batch}x3x32^2", mode="train step", baseline="unfold")
    r |= dict(base_ms=times["unfold"] * 1e3) | {k: times["unfold"] / t for k, t in times.items() if k != "unfold"}
    print(f"ResNet-20 train step, batch {batch}: " + "  ".join(f"{k} {t * 1e3:.0f} ms" for k, t in times.items()))
    print("  speed-up over unfold: " + "  ".join(f"{k} {times['unfold'] / t:.1f}x" for k, t in times.items()))
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convcore.bench peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="run the layers whose name contains this (or 'resnet')")
    parser.add_argument("--shapes", default=None, help="N×C×S shapes to run, e.g. 32x16x32,2x16x256 (default: all)")
    parser.add_argument("--stat", choices=("median", "min"), default="median", help="per-call statistic")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: CPU seconds (use --threads 1)")
    parser.add_argument(
        "--heap",
        choices=("reuse", "system"),
        default="reuse",
        help="reuse: freed blocks stay in the heap (measure.reuse_heap); system: glibc's default, which page-faults "
        "every large output in again",
    )
    args = parser.parse_args(argv)
    heap = args.heap == "reuse" and reuse_heap()
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.stat} {args.clock} time of {args.rounds} "
        f"interleaved rounds, heap: {'reused' if heap else 'system default'}; "
        "ratios to the baseline measured in the same rounds"
    )
    if args.only != "resnet":
        run_layers(args.rounds, args.only, shapes, args.stat, args.clock)
    if args.only in (None, "resnet"):
        run_resnet(max(2, args.rounds // 2), stat=args.stat, clock=args.clock)
    return 0
