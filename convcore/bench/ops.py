"""``python -m convcore.bench ops``: the window ops compiled, against eager, F.conv2d and the compiled unfold recipe
(:mod:`convcore.bench.compiled`, N=2 — the default table); with ``--recipes``, also the generalized window ops
(eager) against the recipes they replace (this module's table, below).

Every op runs at N=4, 16→16 channels, 3×3 kernel, padding 1, 256×256, in this one process, against the forum recipe
it replaces (``F.unfold`` + broadcast + reduce; offset and quadratic also against one plain ``F.conv2d`` of the same
shape), then again with a 10% box mask. Reported: median time, speed ratio, peak extra memory (CPU: the peak RSS
over the call, from /proc/self/status VmHWM after a reset through /proc/self/clear_refs; GPU: allocator stats), and
PASS/MISS against these targets:

* offset_conv2d, quadratic_conv2d: >= 0.7× the speed of one plain F.conv2d;
* morph, distance, adaptive, dynamic: >= 2× faster than the unfold recipe with <= 1/4 of its peak memory;
* window_op2d (generic fn): no slower than 1.5× the recipe, with <= 1/4 of its peak memory;
* with a 10% box mask: >= 5× faster than the same op unmasked.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ..adaptive import adaptive_conv2d, adaptive_gaussian_blur2d, dynamic_conv2d
from ..algebraic import distance_conv2d, offset_conv2d, quadratic_conv2d
from ..morph import morph_conv2d
from ..window import window_op2d
from . import compiled
from .compiled import format_table as format_compiled
from .measure import box_mask, busy_cpu, measure, peak_extra_bytes

__all__ = ["build_cases", "main", "measure_case"]

N, C, O, K, SIZE = 4, 16, 16, 3, 256


@dataclass
class Case:
    name: str
    kind: str  # "lowered" | "fast" | "generic": which targets apply
    ours: Callable[..., torch.Tensor]  # ours(mask, out=None)
    recipe: Callable[[], torch.Tensor]
    conv: Callable[[], torch.Tensor] | None = None


def _unfold(x: torch.Tensor) -> torch.Tensor:
    return F.unfold(x, K, padding=1)  # [N, C*K*K, L]


def _recipe(x: torch.Tensor, w: torch.Tensor, fn, reduce: str) -> torch.Tensor:
    """The forum recipe: unfold, broadcast against every filter, reduce over the window."""
    cols = _unfold(x)[:, None]  # [N, 1, C*K*K, L]
    v = fn(cols, w.reshape(1, w.shape[0], -1, 1))  # [N, O, C*K*K, L]
    y = getattr(v, reduce)(2) if reduce != "max" else v.amax(2)  # [N, O, L]
    return y.view(x.shape[0], w.shape[0], x.shape[2], x.shape[3])


def _data(device: torch.device, size: int) -> SimpleNamespace:
    """The benchmark's inputs: image, weights, per-location kernels, sigmas and the MLP kernel function."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device)

    d = SimpleNamespace(x=rand(N, C, size, size), w=rand(O, C, K, K) / 12, w2=rand(O, C, K, K) / 12, bias=rand(O))
    d.kernel = torch.softmax(rand(N, K, K, size, size).flatten(1, 2), 1).view(N, K, K, size, size)
    d.sigma = (d.x[:, :1].abs() * 2).contiguous()
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(C * K * K, 8), torch.nn.ReLU(), torch.nn.Linear(8, O * C * K * K))
    mlp = mlp.to(device).requires_grad_(False)

    def kernel_fn(p):
        return mlp(p).view(p.shape[0], O, C * K * K)

    d.kernel_fn = kernel_fn
    return d


def _recipes(d: SimpleNamespace, device: torch.device, size: int) -> SimpleNamespace:
    """The unfold recipes a user would write for the per-location ops."""
    x, w, kernel, sigma, kernel_fn = d.x, d.w, d.kernel, d.sigma, d.kernel_fn
    L = size * size

    def adaptive_recipe():
        cols = _unfold(x).view(N, C, K * K, L) * kernel.view(N, 1, K * K, L)  # [N, C, K*K, L]
        return (w.view(O, -1) @ cols.view(N, C * K * K, L)).view(N, O, size, size)

    def blur_recipe():
        dd = (torch.arange(K, device=device) - (K - 1) / 2).square()
        dist = (dd[:, None] + dd[None, :]).view(1, K * K, 1)
        k = torch.exp(-dist / (2 * sigma.view(N, 1, L).clamp_min(1e-2) ** 2))  # [N, K*K, L]
        k = k / k.sum(1, keepdim=True)
        xp = F.pad(x, (1, 1, 1, 1), mode="reflect")
        cols = F.unfold(xp, K).view(N, C, K * K, L)
        return (cols * k[:, None]).sum(2).view(N, C, size, size)

    def dynamic_recipe():
        cols = _unfold(x).transpose(1, 2)  # [N, L, C*K*K]
        wts = kernel_fn(cols.reshape(N * L, -1)).view(N, L, O, -1)  # [N, L, O, C*K*K]
        return (wts * cols[:, :, None]).sum(-1).transpose(1, 2).reshape(N, O, size, size)

    def keep_recipe():
        patches = F.pad(x, (1, 1, 1, 1)).unfold(2, K, 1).unfold(3, K, 1)  # [N, C, H, W, K, K]
        return (patches[:, None] * w[None, :, :, None, None]).sum(2)  # [N, O, H, W, K, K]: channel-only sum

    return SimpleNamespace(adaptive=adaptive_recipe, blur=blur_recipe, dynamic=dynamic_recipe, keep=keep_recipe)


def build_cases(device: torch.device, size: int) -> list[Case]:
    d = _data(device, size)
    r = _recipes(d, device, size)
    x, w, w2, bias, kernel, sigma, kernel_fn = d.x, d.w, d.w2, d.bias, d.kernel, d.sigma, d.kernel_fn
    adaptive_recipe, blur_recipe, dynamic_recipe, keep_recipe = r.adaptive, r.blur, r.dynamic, r.keep

    def conv():
        return F.conv2d(x, w, padding=1)

    def rbf(a, b):
        return torch.exp(-((a - b) ** 2))

    pad = dict(padding=1)
    return [
        Case(
            "offset_conv2d",
            "lowered",
            lambda m, out=None: offset_conv2d(x, w, w2, bias, mask=m, out=out, **pad),
            lambda: _recipe(x, w, lambda a, b: b * (a - w2.reshape(1, O, -1, 1)), "sum"),
            conv,
        ),
        Case(
            "quadratic_conv2d",
            "lowered",
            lambda m, out=None: quadratic_conv2d(x, w, w2, bias, mask=m, out=out, **pad),
            lambda: _recipe(x, w, lambda a, b: b * a * a + w2.reshape(1, O, -1, 1) * a, "sum"),
            conv,
        ),
        Case(
            "distance_conv2d p=1",
            "fast",
            lambda m, out=None: distance_conv2d(x, w, 1, mask=m, out=out, **pad),
            lambda: _recipe(x, w, lambda a, b: -(a - b).abs(), "sum"),
        ),
        Case(
            "distance_conv2d p=2",
            "fast",
            lambda m, out=None: distance_conv2d(x, w, 2, mask=m, out=out, **pad),
            lambda: _recipe(x, w, lambda a, b: -((a - b) ** 2), "sum"),
        ),
        Case(
            "morph_conv2d dilation",
            "fast",
            lambda m, out=None: morph_conv2d(x, w, "dilation", mask=m, out=out, **pad),
            lambda: _recipe(x, w, lambda a, b: a + b, "max"),
        ),
        Case(
            "adaptive_conv2d +weight",
            "fast",
            lambda m, out=None: adaptive_conv2d(x, kernel, w, mask=m, out=out, **pad),
            adaptive_recipe,
        ),
        Case(
            "adaptive_gaussian_blur2d",
            "fast",
            lambda m, out=None: adaptive_gaussian_blur2d(x, sigma, K, "reflect", mask=m, out=out),
            blur_recipe,
        ),
        Case(
            "dynamic_conv2d (MLP)",
            "fast",
            lambda m, out=None: dynamic_conv2d(x, kernel_fn, O, K, mask=m, out=out, **pad),
            dynamic_recipe,
        ),
        Case(
            "window_op2d exp(-(x-w)^2)",
            "generic",
            lambda m, out=None: window_op2d(x, w, rbf, mask=m, out=out, **pad),
            lambda: _recipe(x, w, rbf, "sum"),
        ),
        Case(
            "window_op2d keep_window",
            "generic",
            lambda m, out=None: window_op2d(x, w, lambda a, b: a * b, keep_window=True, mask=m, out=out, **pad),
            keep_recipe,
        ),
    ]


def measure_case(case: Case, device: torch.device, size: int, rounds: int, peaks: bool = True) -> dict:
    mask = box_mask(size, 0.10, device, boxes=1)  # one centred square, shared by the batch
    with torch.no_grad():
        buffer = torch.zeros_like(case.ours(mask))
        fns = {
            "ours": lambda: case.ours(None),
            "masked": lambda: case.ours(mask),
            "masked_out": lambda: case.ours(mask, buffer),
        }
        if case.conv is not None:
            fns["conv"] = case.conv
        peak = {"ours": None, "recipe": None}
        if peaks:
            peak = {"ours": peak_extra_bytes(fns["ours"], device), "recipe": peak_extra_bytes(case.recipe, device)}
        # The recipe allocates gigabytes: timed on its own so that returning them to the OS does not land on the
        # neighbours' timings (it is 3-200x slower, so its own noise hardly moves its ratios).
        times = measure(fns, rounds=rounds, device=device)
        times["recipe"] = measure(case.recipe, rounds=max(1, rounds // 2), device=device)
    row = {
        "op": case.name,
        "kind": case.kind,
        "ours_ms": times["ours"] * 1e3,
        "recipe_ms": times["recipe"] * 1e3,
        "speedup_vs_recipe": times["recipe"] / times["ours"],
        "conv_ms": times["conv"] * 1e3 if "conv" in times else None,
        "speed_vs_conv": times["conv"] / times["ours"] if "conv" in times else None,
        "ours_peak_mib": None if peak["ours"] is None else peak["ours"] / 2**20,
        "recipe_peak_mib": None if peak["recipe"] is None else peak["recipe"] / 2**20,
        "masked_ms": times["masked"] * 1e3,
        "mask_speedup": times["ours"] / times["masked"],
        "masked_out_ms": times["masked_out"] * 1e3,
        "mask_out_speedup": times["ours"] / times["masked_out"],
    }
    row["mem_ratio"] = (
        None
        if not row["ours_peak_mib"] or not row["recipe_peak_mib"]
        else row["ours_peak_mib"] / row["recipe_peak_mib"]
    )
    row["checks"] = _checks(row)
    return row


def _checks(row: dict) -> list[dict]:
    checks = []
    if row["kind"] == "lowered":
        checks.append(_check("speed vs F.conv2d", row["speed_vs_conv"], ">= 0.7x", row["speed_vs_conv"] >= 0.7))
    elif row["kind"] == "fast":
        checks.append(_check("speedup vs recipe", row["speedup_vs_recipe"], ">= 2x", row["speedup_vs_recipe"] >= 2))
    else:
        slow = 1 / row["speedup_vs_recipe"]
        checks.append(_check("time / recipe time", slow, "<= 1.5x", slow <= 1.5))
    if row["kind"] != "lowered" and row["mem_ratio"] is not None:
        checks.append(_check("peak memory / recipe", row["mem_ratio"], "<= 0.25", row["mem_ratio"] <= 0.25))
    checks.append(_check("10% box vs unmasked", row["mask_speedup"], ">= 5x", row["mask_speedup"] >= 5))
    return checks


def _check(what: str, value: float, target: str, ok: bool) -> dict:
    return {"check": what, "value": value, "target": target, "pass": bool(ok)}


def format_table(rows: list[dict], header: str) -> str:
    cols = (
        "| op | ours ms | recipe ms | ×recipe | F.conv2d ms | ×conv | peak MiB ours / recipe | 10% box ms | ×box "
        "| 10% box, out= ms | ×box out= |"
    )
    lines = [header, "", cols, "|" + "---|" * (cols.count("|") - 1)]
    for r in rows:
        conv = "" if r["conv_ms"] is None else f"{r['conv_ms']:.1f}"
        xconv = "" if r["speed_vs_conv"] is None else f"{r['speed_vs_conv']:.2f}"
        mem = f"{_fmt(r['ours_peak_mib'])} / {_fmt(r['recipe_peak_mib'])}"
        lines.append(
            f"| {r['op']} | {r['ours_ms']:.1f} | {r['recipe_ms']:.0f} | {r['speedup_vs_recipe']:.1f} | {conv} | "
            f"{xconv} | {mem} | {r['masked_ms']:.1f} | {r['mask_speedup']:.1f} | {r['masked_out_ms']:.1f} | "
            f"{r['mask_out_speedup']:.1f} |"
        )
    lines += ["", "| op | check | measured | target | result |", "|---|---|---|---|---|"]
    for r in rows:
        for c in r["checks"]:
            lines.append(
                f"| {r['op']} | {c['check']} | {c['value']:.2f} | {c['target']} | {'PASS' if c['pass'] else 'MISS'} |"
            )
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def format_busy(quiet: list[dict], busy: list[dict], k: int) -> str:
    """Quiet and busy speed-ups of each op side by side ("keeps" = busy / quiet, target >= 0.6)."""
    lines = [
        f"quiet vs busy ({k} spinning process{'es' if k != 1 else ''}), measured in this run",
        "",
        "| op | ratio | quiet | busy | keeps | |",
        "|---|---|---:|---:|---:|---|",
    ]
    for q, b in zip(quiet, busy):
        for key, label in (("speedup_vs_recipe", "× recipe"), ("mask_speedup", "10% box × unmasked")):
            keeps = b[key] / q[key]
            verdict = "PASS" if keeps >= 0.6 else "MISS"
            lines.append(f"| {q['op']} | {label} | {q[key]:.2f} | {b[key]:.2f} | {keeps:.2f} | {verdict} |")
    return "\n".join(lines)


def _compiled_table(args: argparse.Namespace, device: torch.device) -> None:
    rows, second = compiled.run(device, args.size, args.rounds, args.only, eager=not args.no_eager)
    header = (
        f"convcore ops compiled on {device.type} ({torch.get_num_threads()} threads, torch {torch.__version__}): "
        f"N={compiled.N}, {compiled.C}→{compiled.O} ch, {compiled.K}×{compiled.K}, {args.size}×{args.size}, "
        f"padding 1; median of {args.rounds} interleaved rounds"
    )
    if args.json:
        print(json.dumps({"config": header, "rows": rows, "second_process": second}, indent=2))
    else:
        print(format_compiled(rows, header, second))
        print()


def main(argv: list[str] | None = None) -> int:
    """``python -m convcore.bench ops [--json] [--device D] [--size S] [--rounds R] [--only NAME] [--threads T]
    [--busy K]``. Returns 0 (the table reports misses; timing targets are not a test)."""
    p = argparse.ArgumentParser(
        prog="python -m convcore.bench ops", description="The generalized window ops against the recipes they replace."
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--size", type=int, default=SIZE, help=f"image side (default {SIZE})")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per op after one warm-up (median reported)")
    p.add_argument("--only", default=None, help="run only the ops whose name contains this string")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--busy", type=int, default=0, metavar="K", help="then measure again with K processes spinning")
    p.add_argument("--recipes", action="store_true", help="also the eager ops vs the unfold recipes table (N=4)")
    p.add_argument("--no-compiled", action="store_true", help="skip the compiled table")
    p.add_argument("--no-eager", action="store_true", help="compiled table: skip the (slow) single eager call per op")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not args.no_compiled and not (args.busy and not args.recipes):
        _compiled_table(args, device)
    if not (args.recipes or args.busy):
        return 0
    cases = [c for c in build_cases(device, args.size) if args.only is None or args.only in c.name]
    rows = [measure_case(c, device, args.size, args.rounds) for c in cases]
    busy = None
    if args.busy > 0:
        with busy_cpu(args.busy):
            busy = [measure_case(c, device, args.size, args.rounds, peaks=False) for c in cases]
    header = (
        f"convcore ops on {device.type} ({torch.get_num_threads()} threads): N={N}, {C}→{O} ch, {K}×{K}, "
        f"{args.size}×{args.size}, padding 1; median of {args.rounds} interleaved rounds"
    )
    if args.json:
        print(json.dumps({"config": header, "rows": rows, "busy": busy}, indent=2))
        return 0
    print(format_table(rows, header))
    if busy is not None:
        print()
        print(format_busy(rows, busy, args.busy))
    return 0
