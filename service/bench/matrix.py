"""JPEG in, JPEG out across sizes, content and ROI sizes: ``python -m service.bench.matrix [--quick] [--no-serve]``.

For each image — the synthetic photo (quality 95, cv2's default) and a real photograph (scikit-image's
``astronaut``, cut to 16:9, upscaled bicubic and written at quality 90, 4:2:0, as a camera would; smoother than a
camera's file, so its entropy data is smaller), at 1920×1080 and 3840×2160 — and a centred square ROI of 1%, 5% and
25% of the image, gaussian k=31 σ=8:

- in process, one core each: ms per image of the OpenCV floor (decode → blur the crop with its halo → encode at the
  file's quality) beside :func:`service.imaging.pipeline.process` (the server's and ``roiconv apply``'s per-file
  path), timed in alternation, the best of each;
- served: a real server's throughput at concurrency 8 beside the floor's (one process per core, same run).

Prints one markdown table; the ratios are floor time / ours (above 1: ours is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os

import cv2
import numpy as np

from ..imaging.codec import header_size
from .floor import floor_throughput, side_by_side
from .harness import floor_call, photo, serve
from .jpeg import centred_box
from .load import load, make_body

__all__ = ["FILTER", "ROIS", "images", "main", "real_photo"]

FILTER = {"name": "gaussian", "ksize": 31, "sigma": 8}
ROIS = (0.01, 0.05, 0.25)
SIZES = {"1080p": (1920, 1080), "4K": (3840, 2160)}


def real_photo(width: int, height: int, name: str = "astronaut") -> np.ndarray | None:
    """scikit-image's photograph ``name`` as BGR (height, width, 3): its centre cut to the aspect ratio, upscaled
    bicubic; None without scikit-image."""
    try:
        from skimage import data
    except ImportError:
        return None
    rgb = getattr(data, name)()  # [h, w, 3] RGB
    h, w = rgb.shape[:2]
    cut_h, cut_w = min(h, round(w * height / width)), min(w, round(h * width / height))
    top, left = (h - cut_h) // 2, (w - cut_w) // 2
    crop = rgb[top : top + cut_h, left : left + cut_w, ::-1]
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_CUBIC)


def images() -> dict[str, tuple[bytes, int]]:
    """name → (JPEG bytes, the quality it was written at); the real photographs only with scikit-image."""
    out = {}
    for size, (w, h) in SIZES.items():
        out[f"synthetic {size}"] = (cv2.imencode(".jpg", photo(w, h))[1].tobytes(), 95)
        real = real_photo(w, h)
        if real is not None:
            out[f"photo {size}"] = (cv2.imencode(".jpg", real, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(), 90)
    return out


def _ours(data: bytes, spec_dict: dict):
    from ..imaging.pipeline import process
    from ..imaging.spec import Spec

    spec = Spec.model_validate(spec_dict)
    return lambda: process(spec, data, max_pixels=10**9)


def _served(url: str, body: bytes, ctype: str, n: int) -> float:
    asyncio.run(load(url, 8, 16, 120, body, ctype))  # warm-up
    return asyncio.run(load(url, 8, n, 300, body, ctype)).throughput


def rows(url: str | None, seconds: float, requests: int, repeats: int) -> list[tuple]:
    """One row per image and ROI: (image, ROI, floor ms, ours ms, ratio, floor /s, served /s, ratio)."""
    cv2.setNumThreads(1)
    out = []
    for name, (data, quality) in images().items():
        w, h = header_size(data, "jpeg")
        for fraction in ROIS:
            box = list(centred_box(w, h, fraction))
            spec = {"filter": FILTER, "roi": {"boxes": [box]}}
            floor = functools.partial(floor_call, data, FILTER, [box], ".jpg", quality)
            t_floor, t_ours = side_by_side(floor, _ours(data, spec), repeats)
            served = (float("nan"),) * 3
            if url is not None:
                fl = floor_throughput(data, FILTER, [box], ".jpg", seconds, quality)
                sv = _served(url, *make_body(data, spec), requests if w < 3000 else max(8, requests // 4))
                served = (fl, sv, sv / fl)
            out.append((name, fraction, t_floor * 1e3, t_ours * 1e3, t_floor / t_ours, *served))
            print(f"{name} {fraction:.0%}: floor {t_floor * 1e3:.1f} ms, ours {t_ours * 1e3:.1f} ms; "
                  f"served {served[1]:.1f}/s vs floor {served[0]:.1f}/s", flush=True)  # fmt: skip
    return out


def table(measured: list[tuple]) -> str:
    lines = [
        "| image | ROI | floor ms | ours ms | floor / ours | floor /s (2 proc.) | served /s (c=8) | served / floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, fraction, fl, ours, ratio, fl_s, sv_s, sv_ratio in measured:
        lines.append(
            f"| {name} | {fraction:.0%} | {fl:.1f} | {ours:.1f} | {ratio:.2f}× | {fl_s:.1f} | {sv_s:.1f} | "
            f"{sv_ratio:.2f}× |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.bench.matrix", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--no-serve", action="store_true", help="in process only")
    parser.add_argument("--seconds", type=float, default=4.0, help="floor work per throughput measurement")
    args = parser.parse_args(argv)
    repeats, requests = (2, 16) if args.quick else (5, 48)
    seconds = 1.0 if args.quick else args.seconds
    print(f"cores: {os.cpu_count()}, OpenCV {cv2.__version__}", flush=True)
    if args.no_serve:
        measured = rows(None, seconds, requests, repeats)
    else:
        with serve({"ROICONV_DEVICES": "cpu"}) as url:
            measured = rows(url, seconds, requests, repeats)
    print(table(measured))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
