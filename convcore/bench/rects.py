"""A few small boxes in a 4K image: roi_conv2d with a RectRoi vs the same ROI as a dense mask vs F.conv2d.

``python -m convcore.bench rects [--rounds R] [--threads T] [--clock wall|cpu] [--device cpu|cuda]``

The ROI is what an anonymizer hands over: two face-sized boxes (one an ellipse drawn inside its box, one a plain
box) and a box at the image's corner, 2–3 small boxes in 2160×3840. The kernel is the service's: a 5×5 depthwise
blur of the three colour channels (``groups=3``), "same" padding, written into ``out`` (the image kept outside).
Rows, timed in the same interleaved rounds:

* ``F.conv2d``: the whole image, the baseline;
* ``mask (built)``: the ROI rasterized into a full-size mask, then roi_conv2d — what a caller holding boxes did;
* ``mask (given)``: roi_conv2d with that mask built beforehand;
* ``RectRoi``: roi_conv2d with the boxes and their local masks, no full-size mask.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from ..functional import roi_conv2d
from ..roi import RectRoi
from .measure import measure

__all__ = ["main", "rect_roi"]

HEIGHT, WIDTH = 2160, 3840


def rect_roi(device: torch.device) -> RectRoi:
    """Two faces (an ellipse inside a 120×160 box, a plain 96×128 box) and a 64×64 box at the bottom-right corner."""
    yy, xx = torch.meshgrid(torch.arange(160), torch.arange(120), indexing="ij")
    ellipse = ((yy - 79.5) / 80) ** 2 + ((xx - 59.5) / 60) ** 2 <= 1  # [160, 120] bool
    boxes = [(900, 400, 1020, 560), (2600, 1200, 2696, 1328), (WIDTH - 64, HEIGHT - 64, WIDTH, HEIGHT)]
    return RectRoi(boxes, [ellipse.to(device), None, None])


def run(rounds: int, device: torch.device, clock: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 3, HEIGHT, WIDTH, device=device) * 255  # [1, 3, H, W]
    w = torch.full((3, 1, 5, 5), 1 / 25, device=device)  # [3, 1, 5, 5]: a depthwise box blur
    out = x.clone()
    roi = rect_roi(device)
    mask = roi.to_mask(HEIGHT, WIDTH, device=device)  # [H, W] bool
    args = dict(padding="same", groups=3, out=out)
    fns = {
        "F.conv2d (whole image)": lambda: F.conv2d(x, w, padding=2, groups=3),
        "roi_conv2d, mask (built)": lambda: roi_conv2d(x, w, None, roi.to_mask(HEIGHT, WIDTH, device=device), **args),
        "roi_conv2d, mask (given)": lambda: roi_conv2d(x, w, None, mask, **args),
        "roi_conv2d, RectRoi": lambda: roi_conv2d(x, w, None, roi, **args),
    }
    with torch.no_grad():
        times = measure(fns, rounds=rounds, device=device, clock=clock)
    positions = int(mask.sum())
    print(f"\n1×3×{HEIGHT}×{WIDTH}, 5×5 depthwise, {len(roi)} boxes, {positions} ROI positions ({device.type})\n")
    base = times["F.conv2d (whole image)"]
    rect = times["roi_conv2d, RectRoi"]
    print("| call | ms | vs F.conv2d | vs RectRoi |\n|---|---:|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {t * 1e3:.3f} | {t / base:.4f}× | {t / rect:.2f}× |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convcore.bench rects", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: CPU seconds (use --threads 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, median {args.clock} time of {args.rounds} interleaved "
        "rounds; ratios measured in the same rounds"
    )
    run(args.rounds, torch.device(args.device), args.clock)
    return 0
