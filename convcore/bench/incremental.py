"""Benchmark of incremental mode: ``python -m convcore.bench incremental [--rounds 5] [--only centerface]``.

Frame sequences in which only small patches change: each patch moves 4 pixels to the right per frame (then back),
so a frame differs from the one before inside the patch's old and new place. For each case the dense model on every
frame and ``roi_network(model, mode="incremental")`` fed the same frames in order run interleaved, round by round;
the table gives the median seconds, their ratio, the fraction of pixels that changed, and two MAC fractions:

* ideal: the convolution MACs at output positions whose value really changes (found with forward hooks on the dense
  model, comparing two consecutive frames — independent of the code under test);
* measured: what incremental mode computes (``last_plan.mac_fraction``: its rectangles, halos and dense layers).

The dense model runs with the threads asked for (``--threads``, default 2; the speed-up the targets are about) and
on one thread (the speed-up in parentheses): on a CPU that other processes keep busy, a 2-thread op waits for its
slower thread, and incremental mode runs its small steps on one thread (the engine's policy), so the one-thread
ratio tells how much of the gain is that alone.

Models (random weights: speed and MAC fractions do not depend on them): CenterFace (the architecture of
``service.imaging.faces.model.CenterFace``, imported lazily when the service package is importable; its rows are
skipped otherwise), and the UNet and ResNet-18 trunk of ``python -m convcore.bench network``. "all" rows change
every pixel of every frame (fresh noise): incremental mode must then cost no more than the dense model.
"""

from __future__ import annotations

import argparse
import importlib

import torch
from torch import nn

from ..engine import single_thread
from ..network.module import roi_network
from .measure import measure
from .network import ResNetTrunk, UNet4

__all__ = ["CASES", "ideal_mac_fraction", "main"]

# (model, height, width, patches as (side, count), or "all" for every pixel)
CASES = [
    ("centerface", 384, 640, (80, 1)),
    ("centerface", 1088, 1920, (120, 1)),
    ("centerface", 1088, 1920, (120, 2)),
    ("centerface", 1088, 1920, (40, 1)),
    ("centerface", 384, 640, "all"),
    ("centerface", 1088, 1920, "all"),
    ("unet", 512, 512, (64, 1)),
    ("unet", 512, 512, "all"),
    ("resnet18", 512, 512, (64, 1)),
    ("resnet18", 512, 512, "all"),
]
STEP = 4  # pixels a patch moves per frame
FRAMES = 6


def _model(name: str) -> nn.Module | None:
    torch.manual_seed(0)
    if name == "centerface":
        try:
            return importlib.import_module("service.imaging.faces.model").CenterFace().eval()
        except ImportError:
            return None
    return {"unet": UNet4, "resnet18": ResNetTrunk}[name]().eval()


def frames(h: int, w: int, patches, device) -> list[torch.Tensor]:
    """``FRAMES`` frames: a noise background (0..255) with textured patches that move STEP pixels right per frame."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, h, w, generator=g) * 255
    textures = [torch.rand(1, 3, 256, 256, generator=g) * 255 for _ in range(2)]
    out = []
    for t in range(FRAMES):
        if patches == "all":
            out.append((torch.rand(1, 3, h, w, generator=g) * 255).to(device))
            continue
        side, count = patches
        f = base.clone()
        for i in range(count):
            y = (h // (count + 1)) * (i + 1) - side // 2
            x = w // 3 + i * w // 4 + STEP * t
            f[:, :, y : y + side, x : x + side] = textures[i][:, :, :side, :side]  # a textured patch: all of it moves
        out.append(f.to(device))
    return out


def ideal_mac_fraction(model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> float:
    """Conv MACs at output positions whose value differs between ``model(a)`` and ``model(b)`` / dense conv MACs."""
    seen: dict[nn.Module, list[torch.Tensor]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, _, out: seen.setdefault(mod, []).append(out))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    try:
        model(a)
        model(b)
    finally:
        for h in hooks:
            h.remove()
    changed = dense = 0.0
    for mod, (ya, yb) in seen.items():
        n, o, h, w = ya.shape
        kh, kw = mod.kernel_size
        if isinstance(mod, nn.Conv2d):
            per = o * (mod.in_channels // mod.groups) * kh * kw
        else:  # transposed: its dense MACs spread evenly over its output positions
            per = mod.in_channels * (o // mod.groups) * kh * kw / (mod.stride[0] * mod.stride[1])
        moved = (ya != yb).any(1).sum().item()  # [N, h, w] positions whose value changed
        changed += moved * per
        dense += n * h * w * per
    return changed / dense if dense else 0.0


def run_case(model, h, w, patches, rounds: int, device) -> dict:
    """Dense vs incremental on one frame sequence: seconds, ratio, changed pixels, ideal/measured MAC fraction."""
    seq = frames(h, w, patches, device)
    order = list(range(FRAMES)) + list(range(FRAMES - 2, 0, -1))  # forth and back: every step moves STEP pixels
    inc = roi_network(model, mode="incremental")
    state = {"t": 0}
    inc(seq[0])  # the first, dense call (captures the graph)

    def incremental():
        state["t"] += 1
        return inc(seq[order[state["t"] % len(order)]])

    def dense():
        return model(seq[order[(state["t"] + 1) % len(order)]])  # the frame incremental() gets next

    def dense_one_thread():
        with single_thread(device.type == "cpu"):
            return dense()

    fns = {"dense": dense, "dense 1t": dense_one_thread, "incremental": incremental}
    secs = measure(fns, rounds=rounds, device=device)
    cur, prev = seq[order[state["t"] % len(order)]], seq[order[(state["t"] - 1) % len(order)]]
    return {
        "dense": secs["dense"],
        "incremental": secs["incremental"],
        "dense_1t": secs["dense 1t"],
        "speedup": secs["dense"] / secs["incremental"],
        "speedup_1t": secs["dense 1t"] / secs["incremental"],
        "changed": (cur != prev).any(1).float().mean().item(),
        "ideal": ideal_mac_fraction(model, prev, cur),
        "measured": inc.last_plan.mac_fraction if inc.last_plan is not None else 1.0,
        "kept_mib": inc.kept_bytes / 2**20,
    }


TARGETS = {  # (model, width, patches) → speed-up it must reach
    ("centerface", 1920, (120, 1)): 5.0,
    ("centerface", 1920, (120, 2)): 3.0,
    ("centerface", 640, (80, 1)): 1.5,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convcore.bench incremental", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="timed calls per case; the median is reported")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--only", default="", help="comma-separated models (centerface, unet, resnet18)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    only = [m for m in args.only.split(",") if m]
    print(f"{device.type}, {args.threads} threads, median of {args.rounds} interleaved rounds; patches move {STEP} px")
    head = ("model", "input", "change", "changed", "ideal", "measured", "dense s", "1-thr s", "incr s", "speed-up")
    print("{:10} {:>9} {:>6} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>15} {:>8}".format(*head, "kept MiB"))
    checks = []
    for name, h, w, patches in CASES:
        if only and name not in only:
            continue
        model = _model(name)
        if model is None:
            print(f"{name}: skipped (the service package, which defines the architecture, is not importable)")
            continue
        with torch.inference_mode():
            r = run_case(model.to(device), h, w, patches, args.rounds, device)
        change = "all" if patches == "all" else f"{patches[1]}x{patches[0]}"
        print(
            f"{name:10} {w:>4}x{h:<4} {change:>6} {r['changed']:8.2%} {r['ideal']:6.1%} {r['measured']:8.1%} "
            f"{r['dense']:8.3f} {r['dense_1t']:8.3f} {r['incremental']:8.3f} "
            f"{r['speedup']:6.2f}x ({r['speedup_1t']:5.2f}x) {r['kept_mib']:8.0f}",
            flush=True,
        )
        target = TARGETS.get((name, w, patches))
        if target is not None:
            checks.append((r["speedup"] >= target, f"{name} {w}x{h} {change}: {r['speedup']:.2f}x >= {target}x"))
        if patches == "all":
            checks.append((r["speedup"] >= 1 / 1.1, f"{name} {w}x{h} all changed: {r['speedup']:.2f}x >= 0.91x"))
    print()
    for ok, text in checks:
        print(("PASS " if ok else "MISS ") + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
