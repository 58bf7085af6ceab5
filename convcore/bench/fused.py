"""Fused-kernel benchmark: ``python -m convcore.bench fused [--device cuda] [--dtype float16] [--rounds R]``.

On CUDA: a 4K table (3840×2160, 64→64 channels, 3×3, N=1) of cuDNN's dense F.conv2d, the "windows" and "tiles"
strategies of :func:`convcore.roi_conv2d` and the fused kernel (fresh output, and into a given ``out=``), at 0.1%,
1%, 10% and 30% box ROIs and 1% scattered pixels: median seconds, speed-up over cuDNN, peak extra memory, the
targets, and the cost constants of :mod:`convcore.kernels.cost` measured on that GPU.

Without CUDA it runs a tiny table under Triton's interpreter (``TRITON_INTERPRET=1``) as a smoke test: those timings
mean nothing (the interpreter runs each program in Python).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

from .. import roi_conv2d
from ..kernels.roi_conv import fused_available, fused_roi_conv2d
from .measure import measure, peak_extra_bytes

CASES = (("box 0.1%", "box", 0.001), ("box 1%", "box", 0.01), ("box 10%", "box", 0.10), ("box 30%", "box", 0.30))
CASES += (("scattered 1%", "pixels", 0.01),)
METHODS = ("cudnn", "windows", "tiles", "fused", "fused out=")
# (case, method, baseline, minimum of time(baseline) / time(method))
TARGETS = (
    ("box 1%", "fused", "cudnn", 10.0),
    ("box 10%", "fused", "cudnn", 3.0),
    ("scattered 1%", "fused", "windows", 2.0),
)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def roi_mask(kind: str, fraction: float, h: int, w: int, device: torch.device) -> torch.Tensor:
    """A (1, h, w) bool mask: one centred box covering ``fraction`` of the image, or scattered random pixels."""
    if kind == "pixels":
        gen = torch.Generator().manual_seed(0)
        return (torch.rand(1, h, w, generator=gen) < fraction).to(device)
    side_h = max(1, round(h * math.sqrt(fraction)))
    side_w = max(1, round(w * math.sqrt(fraction)))
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    y0, x0 = (h - side_h) // 2, (w - side_w) // 2
    mask[:, y0 : y0 + side_h, x0 : x0 + side_w] = True
    return mask.to(device)


def run_table(device: torch.device, h: int, w: int, channels: int, dtype: torch.dtype, rounds: int) -> dict:
    """Time every method on every case; returns {"cases": {case: {method: {"seconds", "speedup", "peak_mib"}}}}."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, h, w, generator=gen).to(device, dtype)
    wt = (torch.randn(channels, channels, 3, 3, generator=gen) / (3 * channels)).to(device, dtype)
    b = torch.randn(channels, generator=gen).to(device, dtype)
    out = torch.zeros(1, channels, h, w, device=device, dtype=dtype)
    table: dict[str, dict] = {}
    for name, kind, fraction in CASES:
        mask = roi_mask(kind, fraction, h, w, device)
        fns = {
            "cudnn": lambda: F.conv2d(x, wt, b, padding=1),
            "windows": lambda m=mask: roi_conv2d(x, wt, b, m, padding=1, strategy="windows"),
            "tiles": lambda m=mask: roi_conv2d(x, wt, b, m, padding=1, strategy="tiles"),
            "fused": lambda m=mask: fused_roi_conv2d(x, wt, b, m, pad=1),
            "fused out=": lambda m=mask: fused_roi_conv2d(x, wt, b, m, pad=1, out=out),
        }
        row = {}
        with torch.inference_mode():
            for method, fn in fns.items():
                row[method] = {"seconds": measure(fn, rounds=rounds, device=x.device), "peak_mib": None}
                peak = peak_extra_bytes(fn, device)
                row[method]["peak_mib"] = None if peak is None else peak / 2**20
        for method in fns:
            row[method]["speedup"] = row["cudnn"]["seconds"] / row[method]["seconds"]
        table[name] = row
    return {"device": str(device), "shape": (1, channels, h, w), "dtype": str(dtype), "cases": table}


def cost_constants(report: dict, h: int, w: int, channels: int, device: torch.device, dtype: torch.dtype) -> dict:
    """The constants of :data:`convcore.kernels.cost.FUSED_COST_CONSTANTS`, measured on ``device``."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, channels, h, w, generator=gen).to(device, dtype)
    wt = torch.randn(channels, channels, 3, 3, generator=gen).to(device, dtype)
    out = torch.zeros(1, channels, h, w, device=device, dtype=dtype)
    one = torch.zeros(1, h, w, dtype=torch.bool, device=device)
    one[0, h // 2, w // 2] = True
    with torch.inference_mode():
        call = measure(lambda: fused_roi_conv2d(x, wt, None, one, pad=1, out=out), rounds=20, device=out.device)
        fill = measure(lambda: torch.zeros_like(out), rounds=20, device=out.device)
    cases = report["cases"]
    macs_per_position = channels * channels * 9
    positions = int(roi_mask("box", 0.10, h, w, device).sum())
    box10 = cases["box 10%"]["fused out="]["seconds"]
    return {
        "call_seconds": call,
        "seconds_per_mac": max(box10 - call, 0.0) / (positions * macs_per_position),
        "scatter_factor": cases["scattered 1%"]["fused out="]["seconds"] / cases["box 1%"]["fused out="]["seconds"],
        "zero_fill_seconds_per_byte": fill / (out.numel() * out.element_size()),
        "cudnn_seconds_per_mac": cases["box 1%"]["cudnn"]["seconds"] / (h * w * macs_per_position),
    }


def format_table(report: dict) -> str:
    c = report["shape"][1]
    lines = [f"{report['device']}  input {report['shape']}  {report['dtype']}  3x3, padding 1, {c}->{c} channels"]
    lines.append("cudnn: F.conv2d over the whole image (cuDNN on CUDA); ×cuDNN: its time / the method's time")
    head = f"{'case':<14}" + "".join(f"{m:>24}" for m in METHODS)
    lines += [head, " " * 14 + "".join(f"{'ms  ×cuDNN  peak MiB':>24}" for _ in METHODS)]
    for case, row in report["cases"].items():
        cells = []
        for m in METHODS:
            r = row[m]
            peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            cells.append(f"{r['seconds'] * 1e3:9.3f} {r['speedup']:6.2f}× {peak:>6}")
        lines.append(f"{case:<14}" + "".join(f"{c:>24}" for c in cells))
    return "\n".join(lines)


def check_targets(report: dict) -> list[str]:
    lines = []
    for case, method, baseline, minimum in TARGETS:
        row = report["cases"][case]
        ratio = row[baseline]["seconds"] / row[method]["seconds"]
        best = max(ratio, row[baseline]["seconds"] / row["fused out="]["seconds"])
        verdict = "met" if ratio >= minimum else "MISSED"
        lines.append(
            f"target {method} >= {minimum:g}× {baseline} at {case}: {ratio:.2f}× (out=: {best:.2f}×) {verdict}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the fused benchmark; returns 0, or 1 when the fused kernel cannot run here."""
    p = argparse.ArgumentParser(prog="python -m convcore.bench fused", description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if device.type == "cpu":
        # The kernel is jitted on its first call, so the interpreter can be switched on here.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if not fused_available(device):
        print(f"the fused kernel cannot run on {device}: it needs triton, and CUDA or TRITON_INTERPRET=1")
        return 1
    if device.type == "cuda":
        h, w, channels, rounds = 2160, 3840, 64, args.rounds
    else:
        h, w, channels, rounds = 12, 16, 4, 1
        print("No GPU: a tiny smoke table under Triton's interpreter. These timings mean nothing (the interpreter")
        print("runs every program in Python); they only show that every method runs. Run this on a CUDA machine.")
    report = run_table(device, h, w, channels, dtype, rounds)
    print(format_table(report))
    if device.type == "cuda":
        print("\n".join(check_targets(report)))
        print(f"cost constants measured on {torch.cuda.get_device_name(device)}, {args.dtype}:")
        for key, value in cost_constants(report, h, w, channels, device, dtype).items():
            print(f"  {key}: {value:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
