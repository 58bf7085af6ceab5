"""``python -m convcore.bench [conv]``: roi_conv2d against dense ``F.conv2d`` and the unfold recipe.

N=1, 16→16 channels, 3×3, 1024×1024, ROIs of 4 boxes covering 1–100% and 1% scattered pixels; every strategy with
a fresh output and with ``out=`` a reused buffer; then an 8192×8192×16 input with a 1% ROI to show the bounded
workspace. ``--busy K`` runs the cases quiet and then with K spinning processes, and prints both side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..functional import roi_conv2d
from ..plan import plan_roi
from .measure import box_mask, busy_cpu, measure, peak_extra_bytes, pixel_mask

log = logging.getLogger(__name__)

COVERAGES = (0.01, 0.10, 0.30, 0.60, 1.00)
STRATEGIES = ("windows", "tiles", "dense", "auto")


def unfold_recipe(x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The forum recipe users write today: full F.unfold, matmul, fold (a view here), then mask."""
    N, C, H, W = x.shape
    O = w.shape[0]
    cols = F.unfold(x, w.shape[2:], padding=1)  # [N, C*kh*kw, H*W]
    y = (w.view(O, -1) @ cols).view(N, O, H, W)
    return y * mask


def run_roi(
    device: torch.device,
    size: int = 1024,
    channels: int = 16,
    rounds: int = 5,
    peaks: bool = True,
    strategies: tuple[str, ...] = STRATEGIES,
) -> dict:
    """Time every case (one row per method) side by side; ``peaks`` also measures each call's peak memory."""
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
        for s in strategies:
            fns[f"{s}"] = lambda s=s, m=mask: roi_conv2d(x, w, b, m, padding=1, strategy=s)
            fns[f"{s} out="] = lambda s=s, m=mask: roi_conv2d(x, w, b, m, padding=1, strategy=s, out=buffer)
        if case == "box 10%":
            fns["unfold recipe"] = lambda m=mask: unfold_recipe(x, w, m)
        t = measure(fns, rounds=rounds, device=device)
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
                    "peak_mib": _mib(peak_extra_bytes(fn, device)) if peaks else None,
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


def busy_rows(quiet: dict, busy: dict) -> list[dict]:
    """Quiet and busy figures of the same cases side by side, with busy ratio / quiet ratio ("keeps")."""
    q = {(r["case"], r["method"]): r for r in quiet["rows"]}
    rows = []
    for r in busy["rows"]:
        key = (r["case"], r["method"])
        if key not in q or r["method"] == "dense":
            continue
        rows.append(
            {
                "case": r["case"],
                "method": r["method"],
                "quiet_x": q[key]["speedup_vs_dense"],
                "busy_x": r["speedup_vs_dense"],
                "keeps": r["speedup_vs_dense"] / q[key]["speedup_vs_dense"],
                "quiet_dense_ms": q[(r["case"], "dense")]["ms"],
                "busy_dense_ms": busy_dense(busy, r["case"]),
            }
        )
    return rows


def busy_dense(report: dict, case: str) -> float:
    return next(r["ms"] for r in report["rows"] if r["case"] == case and r["method"] == "dense")


def format_busy(rows: list[dict], k: int) -> str:
    lines = [
        f"quiet vs busy ({k} spinning process{'es' if k != 1 else ''}), measured in this run; × = speed-up vs dense "
        "F.conv2d measured alongside; keeps = busy × / quiet × (target >= 0.6)",
        "",
        "| case | method | quiet × dense | busy × dense | keeps | dense ms quiet / busy | |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['method']} | {r['quiet_x']:.2f} | {r['busy_x']:.2f} | {r['keeps']:.2f} | "
            f"{r['quiet_dense_ms']:.0f} / {r['busy_dense_ms']:.0f} | {'PASS' if r['keeps'] >= 0.6 else 'MISS'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convcore.bench conv", description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--rounds", type=int, default=int(os.environ.get("ROICONV_BENCH_ROUNDS", 5)))
    p.add_argument("--size", type=int, default=1024, help="image side (targets are checked at 1024)")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--no-large", action="store_true", help="skip the 8192×8192 bounded-memory run")
    p.add_argument("--busy", type=int, default=0, metavar="K", help="then measure auto again with K processes spinning")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    device = torch.device(args.device)
    report = run_roi(device, size=args.size, channels=args.channels, rounds=args.rounds)
    checks = check_targets(report) if args.size == 1024 else []
    if args.busy > 0:
        with busy_cpu(args.busy):
            busy = run_roi(
                device, size=args.size, channels=args.channels, rounds=args.rounds, peaks=False, strategies=("auto",)
            )
        report["busy"] = {"k": args.busy, "rows": busy_rows(report, busy)}
    if not args.no_large:
        report["large"] = run_large(device)
    report["targets"] = checks
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(format_report(report, checks))
    if "busy" in report:
        print()
        print(format_busy(report["busy"]["rows"], args.busy))
    return 0
