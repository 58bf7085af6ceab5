"""Benchmarks: ``python -m convcore.bench [--json] [--device cpu|cuda] [--rounds N] [--size N] [--no-large]``
and ``python -m convcore.bench ops``.

Everything is measured side by side in one process, the methods of a case interleaved round by round, so the
ratios hold on a shared, noisy machine; absolute times are context only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .functional import roi_conv2d
from .plan import plan_roi

log = logging.getLogger(__name__)

COVERAGES = (0.01, 0.10, 0.30, 0.60, 1.00)
STRATEGIES = ("windows", "tiles", "dense", "auto")


def box_mask(size: int, coverage: float, device: torch.device, boxes: int = 4) -> torch.Tensor:
    """A ROI of ``boxes`` equal squares, one per quadrant, covering ``coverage`` of a size×size image."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    if coverage >= 1:
        return mask.fill_(True).to(device)
    side = round(math.sqrt(coverage * size * size / boxes))
    half = size // 2
    for qy in range(2):
        for qx in range(2):
            y0 = qy * half + (half - side) // 2 + 3 * qx  # not tile-aligned on purpose
            x0 = qx * half + (half - side) // 2 + 5 * qy
            mask[y0 : y0 + side, x0 : x0 + side] = True
    return mask.to(device)


def pixel_mask(size: int, coverage: float, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Scattered single pixels covering ``coverage`` of the image."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(size, size, generator=g) < coverage).to(device)


def unfold_recipe(x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The forum recipe users write today: full F.unfold, matmul, fold (a view here), then mask."""
    N, C, H, W = x.shape
    O = w.shape[0]
    cols = F.unfold(x, w.shape[2:], padding=1)  # [N, C*kh*kw, H*W]
    y = (w.view(O, -1) @ cols).view(N, O, H, W)
    return y * mask


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side_by_side(fns: dict[str, Callable[[], object]], device: torch.device, rounds: int) -> dict[str, float]:
    """Median seconds of each fn, interleaved round by round after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _rss_peak_reset() -> int | None:
    """Reset the process's peak RSS (Linux) and return the current RSS in bytes, or None where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status("VmRSS")
    except OSError:
        return None


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak memory the call allocates beyond what was live before it (GPU: allocator stats; CPU: peak RSS)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    base = _rss_peak_reset()
    if base is None:
        return None
    result = fn()
    peak = _status("VmHWM")
    del result
    return max(0, peak - base)


def run_roi(device: torch.device, size: int = 1024, channels: int = 16, rounds: int = 5) -> dict:
    torch.manual_seed(0)
    x = torch.randn(1, channels, size, size, device=device)
    w = torch.randn(channels, channels, 3, 3, device=device) / (3 * channels)
    b = torch.randn(channels, device=device)
    cases = [(f"box {c:.0%}", box_mask(size, c, device)) for c in COVERAGES]
    cases.append(("pixels 1%", pixel_mask(size, 0.01, device)))
    rows = []
    buffer = torch.zeros(1, channels, size, size, device=device)
    for case, mask in cases:
        fns: dict[str, Callable[[], object]] = {"dense": lambda: F.conv2d(x, w, b, padding=1)}
        for s in STRATEGIES:
            fns[f"{s}"] = lambda s=s, m=mask: roi_conv2d(x, w, b, m, padding=1, strategy=s)
            fns[f"{s} out="] = lambda s=s, m=mask: roi_conv2d(x, w, b, m, padding=1, strategy=s, out=buffer)
        if case == "box 10%":
            fns["unfold recipe"] = lambda m=mask: unfold_recipe(x, w, m)
        t = time_side_by_side(fns, device, rounds)
        plan_fresh = plan_roi(mask, x.shape, w.shape, padding=1, device=device)
        plan_out = plan_roi(mask, x.shape, w.shape, padding=1, device=device, fresh_output=False)
        for name, fn in fns.items():
            rows.append(
                {
                    "case": case,
                    "coverage": float(mask.float().mean()),
                    "method": name,
                    "ms": t[name] * 1e3,
                    "speedup_vs_dense": t["dense"] / t[name],
                    "peak_mib": _mib(peak_extra_bytes(fn, device)),
                    "auto_picks": plan_out.strategy if name.endswith("out=") else plan_fresh.strategy,
                }
            )
        log.info("%s done", case)
    return {"device": str(device), "size": size, "channels": channels, "rows": rows}


def run_large(device: torch.device, size: int = 8192, channels: int = 16) -> dict:
    """The bounded-workspace check: an 8192×8192×16 input with a 1% box ROI, peak memory beyond input+output."""
    x = torch.randn(1, channels, size, size, device=device)
    w = torch.randn(channels, channels, 3, 3, device=device)
    out = torch.zeros_like(x)
    mask = box_mask(size, 0.01, device)
    result = {}
    for s in ("windows", "tiles", "auto"):
        t0 = time.perf_counter()
        peak = peak_extra_bytes(lambda s=s: roi_conv2d(x, w, None, mask, padding=1, strategy=s, out=out), device)
        result[s] = {"seconds": time.perf_counter() - t0, "peak_extra_mib": _mib(peak)}
    result["input_mib"] = _mib(x.numel() * x.element_size())
    return result


def _mib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


TARGETS = [
    # (description, case, method, minimum speed-up vs dense)
    ("out= reused buffer, box 1%: >= 20x dense", "box 1%", "auto out=", 20.0),
    ("out= reused buffer, box 10%: >= 8x dense", "box 10%", "auto out=", 8.0),
    ("out= reused buffer, box 60%: >= 1.2x dense", "box 60%", "auto out=", 1.2),
    ("fresh output, box 1%: >= 4x dense", "box 1%", "auto", 4.0),
    ("fresh output, box 10%: >= 3x dense", "box 10%", "auto", 3.0),
    ("scattered 1% pixels: >= 3x dense", "pixels 1%", "auto", 3.0),
    ("auto at 100%: >= 0.95x dense", "box 100%", "auto", 0.95),
]


def check_targets(report: dict) -> list[dict]:
    by_key = {(r["case"], r["method"]): r for r in report["rows"]}
    checks = []
    for desc, case, method, minimum in TARGETS:
        got = by_key[(case, method)]["speedup_vs_dense"]
        checks.append({"target": desc, "measured": round(got, 2), "ok": got >= minimum})
    recipe = by_key[("box 10%", "unfold recipe")]["ms"]
    auto = by_key[("box 10%", "auto")]["ms"]
    checks.append(
        {
            "target": "box 10%: >= 20x faster than unfold+matmul+fold",
            "measured": round(recipe / auto, 1),
            "ok": recipe / auto >= 20,
        }
    )
    return checks


def format_report(report: dict, checks: list[dict]) -> str:
    lines = [
        f"roi_conv2d vs dense F.conv2d — device {report['device']}, N=1, {report['channels']}→{report['channels']} "
        f"channels, 3×3, {report['size']}×{report['size']}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}",
        "",
        "| case | method | ms | × dense | peak extra MiB | auto picks |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        picks = r["auto_picks"] if r["method"].startswith("auto") else ""
        lines.append(
            f"| {r['case']} | {r['method']} | {r['ms']:.2f} | {r['speedup_vs_dense']:.2f} | {r['peak_mib']} | {picks} |"
        )
    lines += ["", "| target | measured | |", "|---|---:|---|"]
    for c in checks:
        lines.append(f"| {c['target']} | {c['measured']} | {'PASS' if c['ok'] else 'MISS'} |")
    if "large" in report:
        lines += ["", f"8192×8192×16 input ({report['large']['input_mib']} MiB), 1% box ROI, out= buffer:"]
        for s in ("windows", "tiles", "auto"):
            r = report["large"][s]
            lines.append(f"- {s}: {r['seconds']:.2f} s, peak memory beyond input+output {r['peak_extra_mib']} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "ops":
        from .bench_ops import run_ops

        return run_ops(argv[1:])
    p = argparse.ArgumentParser(prog="python -m convcore.bench", description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--rounds", type=int, default=int(os.environ.get("ROICONV_BENCH_ROUNDS", 5)))
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--no-large", action="store_true", help="skip the 8192×8192 bounded-memory run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    device = torch.device(args.device)
    report = run_roi(device, size=args.size, rounds=args.rounds)
    checks = check_targets(report) if args.size == 1024 else []
    if not args.no_large:
        report["large"] = run_large(device)
    report["targets"] = checks
    print(json.dumps(report, indent=1) if args.json else format_report(report, checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
