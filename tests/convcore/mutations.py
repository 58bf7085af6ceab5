"""Break convcore on purpose, one breakage at a time, and count how many of the relevant tests notice.

Run from the repository root: ``python tests/convcore/mutations.py [--only NAME]``. Each mutation edits one line of a
temporary copy of the tree (the working tree is never touched), runs the tests that exercise that code, and prints
failed / run. Not collected by pytest (the file name does not start with ``test_``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# (name, file, original text, broken text, pytest arguments selecting the relevant tests)
MUTATIONS = [
    (
        "symmetric border: edge not repeated",
        "convcore/gather.py",
        "idx = torch.where(idx < 0, -idx - 1, idx)",
        "idx = torch.where(idx < 0, -idx, idx)",
        ["tests/convcore", "-k", "symmetric"],
    ),
    (
        "uneven 'same': extra pixel top/left instead of bottom/right",
        "convcore/geometry.py",
        "return (span_h // 2, span_h - span_h // 2, span_w // 2, span_w - span_w // 2)",
        "return (span_h - span_h // 2, span_h // 2, span_w - span_w // 2, span_w // 2)",
        ["tests/convcore", "-k", "same and not test_docs"],
    ),
    (
        "reset_parameters: conv init ~ N(0, 100^2)",
        "convcore/layers.py",
        "nn.init.kaiming_uniform_(weight, a=math.sqrt(5))",
        "nn.init.normal_(weight, 0, 100)",
        ["tests/convcore/test_layers.py", "-k", "initialization and not morph"],
    ),
    (
        "reset_parameters: structuring element zeroed",
        "convcore/layers.py",
        "nn.init.uniform_(self.weight, -0.1, 0.1)",
        "nn.init.zeros_(self.weight)",
        ["tests/convcore/test_layers.py", "-k", "initialization and morph"],
    ),
    (
        "full-mask shortcut: a mask covering a tenth counts as full",
        "convcore/engine/policy.py",
        "return (None if covered == mask.numel() else mask), covered",
        "return (None if 10 * covered >= mask.numel() else mask), covered",
        ["tests/convcore", "-k", "box or random or mixed or inside_mask", "--deselect", "tests/convcore/test_docs.py"],
    ),
    (
        "zero padding: taps past the bottom/right edge read the edge instead of 0",
        "convcore/gather.py",
        "valid = (idx >= 0) & (idx < size)",
        "valid = idx >= 0",
        ["tests/convcore", "-k", "zeros", "--deselect", "tests/convcore/test_docs.py"],
    ),
    (
        "windows engine: the scratch-buffer gather keeps out-of-image taps",
        "convcore/gather.py",
        "return out if valid is None else out.mul_(valid.to(out.dtype))",
        "return out",
        ["tests/convcore/test_engine.py", "-k", "reuse and zeros"],
    ),
    (
        "tiles engine: partial rectangles written without the mask",
        "convcore/engine/tiles.py",
        "dst.copy_(y if r.full else torch.where(s.mask[r.n, r.y0 : r.y1, r.x0 : r.x1], y, dst))",
        "dst.copy_(y)",
        ["tests/convcore", "-k", "tiles or box or mixed or random", "--deselect", "tests/convcore/test_docs.py"],
    ),
    (
        "plan/mask agreement check removed",
        "convcore/functional.py",
        "if (given is None) != (plan.mask is None) or (given is not None and not torch.equal(given, plan.mask)):",
        "if False:",
        ["tests/convcore/test_functional.py", "-k", "plan_for_another_mask or plan_for_other_shapes"],
    ),
    (
        "compiled band: the last kernel tap dropped from the reduction",
        "convcore/compile/taps.py",
        "taps = [(m, q) for m in range(kh) for q in range(kw)]",
        "taps = [(m, q) for m in range(kh) for q in range(kw)][:-1]",
        ["tests/convcore/test_compiled.py", "tests/convcore/test_fused_band.py", "-k", "compiled_form or oracle"],
    ),
    (
        "compiled band: stride ignored along the width",
        "convcore/compile/taps.py",
        "xs = x[..., m * dh : m * dh + (h - 1) * sh + 1 : sh, q * dw : q * dw + (w - 1) * sw + 1 : sw]",
        "xs = x[..., m * dh : m * dh + (h - 1) * sh + 1 : sh, q * dw : q * dw + w]",
        ["tests/convcore/test_compiled.py", "tests/convcore/test_fused_band.py", "-k", "compiled_form or oracle"],
    ),
    (
        "fused band: the patch gradient reads the output gradient's windows unflipped",
        "convcore/compile/fused.py",
        "return win.flip(3, 4)[:, :, 0, :, :, None]",
        "return win[:, :, 0, :, :, None]",
        ["tests/convcore/test_fused_band.py", "-k", "not inductor"],
    ),
    (
        "fused band: max/min route the gradient to the last of tied winners",
        "convcore/compile/fused.py",
        "index = torch.where(hit, flat, Cg * kh * kw).amin((3, 4, 5)).to(torch.int32)",
        "index = torch.where(hit, flat, -1).amax((3, 4, 5)).to(torch.int32)",
        ["tests/convcore/test_fused_band.py", "-k", "not inductor"],
    ),
    (
        "fused band: the window view ignores the stride along the width",
        "convcore/compile/fused.py",
        "v = v.unfold(3, dw * (kw - 1) + 1, sw)[..., ::dw]  # [B, C, h, w, kh, kw]",
        "v = v.unfold(3, dw * (kw - 1) + 1, 1)[..., ::dw]  # [B, C, h, w, kh, kw]",
        ["tests/convcore/test_compiled.py", "tests/convcore/test_fused_band.py", "-k", "compiled_form or oracle"],
    ),
    (
        "fused band: a function's own parameters ignored (their gradients lost)",
        "convcore/compile/bands.py",
        "return not reaching and fused_supported(reduce, keep_window, stride, needs_grad)",
        "return fused_supported(reduce, keep_window, stride, needs_grad)",
        ["tests/convcore/test_fused_band.py", "tests/convcore/test_compiled.py", "-k", "not inductor"],
    ),
    (
        "incremental: every layer's changed range one position short at its end",
        "convcore/network/cone.py",
        "return (c, d) if d > c else None",
        "return (c, d - 1) if d - 1 > c else None",
        ["tests/convcore/test_incremental.py", "-k", "not cone_one_pixel"],
    ),
    (
        "groups: the eager windows of every group read the first group's channels",
        "convcore/window.py",
        "x = x.view(P, 1, G, Cg, kh, kw).transpose(1, 2)  # [P, G, 1, C/G, kh, kw]",
        "x = x.view(P, 1, G, Cg, kh, kw)[:, :, :1].expand(P, 1, G, Cg, kh, kw).transpose(1, 2)",
        ["tests/convcore/test_peers.py", "-k", "groups and not inductor"],
    ),
    (
        "groups: the fused band's window view splits the channels into groups the wrong way round",
        "convcore/compile/fused.py",
        "v = v.unflatten(1, (groups, p.shape[1] // groups))  # [B, G, C/G, h, w, kh, kw]",
        "v = v.unflatten(1, (p.shape[1] // groups, groups)).transpose(1, 2)  # [B, G, C/G, h, w, kh, kw]",
        ["tests/convcore/test_peers.py", "-k", "groups and not inductor"],
    ),
    (
        "custom gradient: the eager backward uses dfn_dx for the weight too",
        "convcore/compile/grad.py",
        "gw = (g * dfn_dw(x, w)).sum_to_size(w.shape) if ctx.needs_input_grad[1] else None",
        "gw = (g * dfn_dx(x, w)).sum_to_size(w.shape) if ctx.needs_input_grad[1] else None",
        ["tests/convcore/test_peers.py", "-k", "gradient and not inductor"],
    ),
    (
        "custom gradient: the fused band's derived backward ignores it",
        "convcore/compile/fused.py",
        "    if grad is not None:\n        return (cot * grad[which](xs, ws)).sum_to_size((xs, ws)[which].shape)",
        "    if False:\n        return (cot * grad[which](xs, ws)).sum_to_size((xs, ws)[which].shape)",
        ["tests/convcore/test_peers.py", "-k", "gradient and not inductor"],
    ),
    (
        "custom gradient: distance p=1's tile loop flips the sign of AdderNet's input gradient",
        "convcore/algebraic.py",
        "                    gxs[:, c] += gx.sum(1)",
        "                    gxs[:, c] -= gx.sum(1)",
        ["tests/convcore/test_peers.py", "-k", "adder"],
    ),
    (
        "rect ROI: a box's rectangle planned one row too low",
        "convcore/engine/rects.py",
        "boxes.append(Rect(0, y0, y1, x0, x1, covered == area,",
        "boxes.append(Rect(0, y0 + 1, y1 + 1, x0, x1, covered == area,",
        ["tests/convcore/test_rect_roi.py"],
    ),
    (
        "rect ROI: the tiles of a box's local mask offset by one column",
        "convcore/engine/rects.py",
        "box.x0 + r.x0, box.x0 + r.x1)",
        "box.x0 + r.x0 + 1, box.x0 + r.x1 + 1)",
        ["tests/convcore/test_rect_roi.py"],
    ),
    (
        "rect ROI: the dense form of overlapping boxes keeps only the last box's mask",
        "convcore/engine/rects.py",
        "view |= r.local",
        "view.copy_(r.local)",
        ["tests/convcore/test_rect_roi.py"],
    ),
    (
        "affine gradient: AdderNet's weight gradient as a convolution adds w·Σg instead of subtracting it",
        "convcore/compile/grad.py",
        "    return a * xg + b * weight * total",
        "    return a * xg - b * weight * total",
        ["tests/convcore/test_peers.py", "-k", "adder"],
    ),
    (
        "morph tap form: the gathered patch gradient reads the taps unflipped",
        "convcore/compile/extremum.py",
        "r0, c0 = top + dh * (kh - 1 - m), left + dw * (kw - 1 - q)",
        "r0, c0 = top + dh * m, left + dw * q",
        ["tests/convcore/test_extremum.py", "-k", "not inductor"],
    ),
    (
        "morph tap form: a tie's gradient goes to the last winner",
        "convcore/compile/extremum.py",
        "index = torch.where(better(v, acc), (c * kh + m) * kw + q, index)",
        "index = torch.where(~better(acc, v), (c * kh + m) * kw + q, index)",
        ["tests/convcore/test_fused_band.py", "-k", "ties"],
    ),
]


def run(tree: Path, args: list[str]) -> tuple[int, int]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", "-rN", *args]
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (failed|passed|error|errors)", tail)}
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    return failed, failed + counts.get("passed", 0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", default=None, help="run only the mutations whose name contains this string")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="convcore-mutations-") as tmp:
        tree = Path(tmp)
        for part in ("convcore", "tests/convcore", "tests/conftest.py", "pyproject.toml"):
            src, dst = ROOT / part, tree / part
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dst)
        print("| mutation | file | failed / run |\n|---|---|---:|")
        for name, rel, old, new, selection in MUTATIONS:
            if args.only and args.only not in name:
                continue
            path = tree / rel
            original = path.read_text()
            if original.count(old) != 1:
                print(f"| {name} | {rel} | the line to break was not found exactly once |")
                continue
            path.write_text(original.replace(old, new))
            try:
                failed, total = run(tree, selection)
            finally:
                path.write_text(original)
            print(f"| {name} | {rel} | {failed} / {total} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
