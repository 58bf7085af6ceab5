"""Benchmark of whole networks run inside a ROI: ``python -m convcore.bench network [--size 1024] [--rounds 3]``.

Three models at random weights (eval BatchNorm): a ResNet-18-style trunk (7×7/2 conv, max pool, four stages of two
basic blocks), a four-level UNet (skip concatenation, BN, bilinear upsampling) and a 17-layer 3×3 DnCNN. ROIs:
one box of 1% and one of 10% of the image, scattered 16×16 squares covering 1%, the full image and an empty mask.
For each: dense ``model(x)`` vs ``roi_network(model, mode="exact")`` vs ``mode="masked"``: the time ratio (dense /
ROI, measured side by side), the plan's mac_fraction, and the peak extra resident memory of one call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..network.module import roi_network

__all__ = ["main", "masks", "models"]


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a = _cbr(cin, cout, 3, stride)
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        return F.relu(self.b(self.a(x)) + self.down(x))


class ResNetTrunk(nn.Module):
    """ResNet-18 without the classifier: 7×7/2 stem, 3×3/2 max pool, stages of 64, 128, 256, 512 channels."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_Basic(cin, cout, stride), _Basic(cout, cout, 1)]
            cin = cout
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class UNet4(nn.Module):
    """Four levels (16, 32, 64, 128 channels; 256 at the bottom), two conv-BN-ReLU per level, bilinear up, cat."""

    def __init__(self, widths=(16, 32, 64, 128)) -> None:
        super().__init__()
        self.enc = nn.ModuleList()
        cin = 3
        for w in widths:
            self.enc.append(nn.Sequential(_cbr(cin, w), _cbr(w, w)))
            cin = w
        self.mid = nn.Sequential(_cbr(cin, 2 * cin), _cbr(2 * cin, cin))
        self.dec = nn.ModuleList(
            nn.Sequential(_cbr(2 * w, w), _cbr(w, widths[max(i - 1, 0)])) for i, w in reversed(list(enumerate(widths)))
        )
        self.out = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x):
        skips = []
        for enc in self.enc:
            x = enc(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.mid(x)
        for dec, skip in zip(self.dec, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
            x = dec(torch.cat([x, skip], 1))
        return self.out(x)


class DnCNN(nn.Module):
    """17 3×3 conv layers: conv-ReLU, 15 × conv-BN-ReLU, conv; predicts the residual."""

    def __init__(self, width: int = 64, depth: int = 17) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1), nn.ReLU()]
        layers += [_cbr(width, width) for _ in range(depth - 2)]
        layers += [nn.Conv2d(width, 3, 3, 1, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return x - self.body(x)


def models(dncnn_width: int = 64) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"resnet18": ResNetTrunk().eval(), "unet": UNet4().eval(), "dncnn": DnCNN(dncnn_width).eval()}


def masks(size: int) -> dict[str, torch.Tensor]:
    """bool (size, size) masks: 1% and 10% boxes in the middle, scattered 16×16 squares covering 1%, full, empty."""
    out = {}
    for name, frac in (("box 1%", 0.01), ("box 10%", 0.10)):
        side = round(size * frac**0.5)
        m = torch.zeros(size, size, dtype=torch.bool)
        y = (size - side) // 2
        m[y : y + side, y : y + side] = True
        out[name] = m
    g = torch.Generator().manual_seed(0)
    m = torch.zeros(size, size, dtype=torch.bool)
    sq = max(1, min(16, size // 16))
    while m.float().mean() < 0.01:
        y, x = torch.randint(0, size - sq + 1, (2,), generator=g).tolist()
        m[y : y + sq, x : x + sq] = True
    out["scattered 1%"] = m
    out["full"] = torch.ones(size, size, dtype=torch.bool)
    out["empty"] = torch.zeros(size, size, dtype=torch.bool)
    return out


def _interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> tuple[dict, dict]:
    """Median seconds and peak extra resident memory (MiB, Linux) of each function, calls interleaved round by round
    so that a change in the machine's load hits every function alike."""
    for fn in fns.values():
        fn()  # warm-up: captures the graph
    times: dict[str, list[float]] = {k: [] for k in fns}
    mem = {}
    for _ in range(rounds):
        for key, fn in fns.items():
            before = _reset_peak()
            times[key].append(_once(fn))
            peak = (_status("VmHWM") - before) / 1024 if before is not None else float("nan")
            mem[key] = max(mem.get(key, 0.0), peak)
    return {k: statistics.median(v) for k, v in times.items()}, mem


def _once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _reset_peak() -> int | None:
    """Reset VmHWM to the current RSS and return the RSS in KiB (None where /proc cannot do it)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status("VmRSS")
    except OSError:
        return None


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(key)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convcore.bench network", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024, help="image side (default 1024)")
    p.add_argument("--rounds", type=int, default=3, help="timed calls per case; the median is reported")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--models", default="resnet18,unet,dncnn", help="comma-separated subset")
    p.add_argument("--dncnn-width", type=int, default=64, help="DnCNN channels (default 64)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    checks = []
    print(f"CPU, {args.threads} threads, {args.size}x{args.size}, median of {args.rounds}; mem = peak extra RSS")
    head = ("model", "roi", "dense s", "dense mem", "exact", "macs", "mem MiB", "masked", "macs", "mem MiB")
    print("{:9} {:13} {:>8} {:>9} {:>7} {:>6} {:>8} {:>7} {:>6} {:>8}".format(*head))
    built = models(args.dncnn_width)  # outside inference mode: export cannot trace inference-tensor parameters
    with torch.inference_mode():
        for name, model in built.items():
            if name not in args.models.split(","):
                continue
            nets = {mode: roi_network(model, mode=mode) for mode in ("exact", "masked")}
            for roi, mask in masks(args.size).items():
                fns = {"dense": lambda m=model: m(x)}
                fns.update({mode: (lambda n=net, mk=mask: n(x, mk)) for mode, net in nets.items()})
                secs, mem = _interleaved(fns, args.rounds)
                res = {
                    mode: (secs["dense"] / secs[mode], nets[mode].plan(mask, x.shape).mac_fraction, mem[mode])
                    for mode in nets
                }
                (re, fe, me), (rm, fm, mm) = res["exact"], res["masked"]
                print(
                    f"{name:9} {roi:13} {secs['dense']:8.3f} {mem['dense']:9.0f} {re:6.2f}x {fe:6.3f} {me:8.0f} "
                    f"{rm:6.2f}x {fm:6.3f} {mm:8.0f}",
                    flush=True,
                )
                checks += _targets(name, roi, res)
    print()
    for ok, text in checks:
        print(("PASS " if ok else "MISS ") + text)
    return 0


def _targets(name: str, roi: str, res: dict) -> list[tuple[bool, str]]:
    (re, fe, _), (rm, _, _) = res["exact"], res["masked"]
    out = []
    if roi in ("box 1%", "box 10%", "scattered 1%") and fe > 0:
        out.append((re >= 0.6 / fe, f"{name} {roi} exact {re:.2f}x >= 0.6 x 1/mac_fraction = {0.6 / fe:.2f}x"))
    need = {
        ("resnet18", "box 1%", "exact"): 3.0,
        ("resnet18", "box 10%", "exact"): 1.6,
        ("dncnn", "box 10%", "exact"): 5.0,
        ("resnet18", "box 10%", "masked"): 5.0,
        ("resnet18", "box 1%", "masked"): 12.0,
        ("unet", "box 10%", "masked"): 5.0,
        ("unet", "box 1%", "masked"): 12.0,
    }
    for mode, ratio in (("exact", re), ("masked", rm)):
        if (name, roi, mode) in need:
            target = need[name, roi, mode]
            out.append((ratio >= target, f"{name} {roi} {mode} {ratio:.2f}x >= {target}x"))
        if roi == "full":
            out.append((ratio >= 0.9, f"{name} full {mode} {ratio:.2f}x >= 0.9x"))
        if roi == "empty":
            out.append((ratio >= 20, f"{name} empty {mode} {ratio:.1f}x >= 20x (near zero cost)"))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
