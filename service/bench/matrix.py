"""JPEG in, JPEG out across sizes, content and ROI sizes: ``python -m service.bench.matrix [--quick] [--no-serve]``.

For each image — the synthetic photo (quality 95, cv2's default) and a real photograph (scikit-image's
``astronaut``, cut to 16:9, upscaled bicubic and written at quality 90, 4:2:0, as a camera would; smoother than a
camera's file, so its entropy data is smaller), at 1920×1080 and 3840×2160 — and a centred square ROI of 1%, 5% and
25% of the image, gaussian k=31 σ=8:

- in process, one core each: CPU ms per image of the OpenCV floor (decode → blur the crop with its halo → encode at
  the file's quality) beside :func:`service.imaging.pipeline.process` (the server's and ``roiconv apply``'s
  per-file path), timed in alternation, the best of each;
- served: a real server's throughput at concurrency 8 beside the floor's (one process per core, same run), and the
  server process's CPU per request (HTTP included) against the floor's CPU per image.

CPU time is what a shared machine measures most steadily (wall-clock throughput there swings with the other jobs);
the ratios are floor / ours (above 1: ours is cheaper or faster). Prints one markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import time

import cv2
import numpy as np

from ..imaging.codec import header_size
from .floor import floor_throughput
from .harness import Served, floor_call, photo, server_process
from .jpeg import centred_box
from .load import load, make_raw

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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; its threads included)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _served(served: Served, body: bytes, ctype: str | dict[str, str], n: int) -> tuple[float, float]:
    """(requests/s at concurrency 8, the server's CPU ms per request)."""
    asyncio.run(load(served.url, 8, 16, 120, body, ctype))  # warm-up
    cpu = _cpu_seconds(served.proc.pid)
    result = asyncio.run(load(served.url, 8, n, 300, body, ctype))
    return result.throughput, (_cpu_seconds(served.proc.pid) - cpu) / max(result.ok, 1) * 1e3


def _alternate(a, b, repeats: int) -> tuple[float, float, float, float]:
    """(wall a, wall b, CPU a, CPU b) seconds per call, timed in alternation, the best of each."""
    a(), b()
    best = [float("inf")] * 4
    for _ in range(repeats):
        for i, fn in enumerate((a, b)):
            t, c = time.perf_counter(), time.process_time()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
            best[2 + i] = min(best[2 + i], time.process_time() - c)
    return best[0], best[1], best[2], best[3]


def rows(served: Served | None, seconds: float, requests: int, repeats: int) -> list[tuple]:
    """One row per image and ROI: (image, ROI, floor CPU ms, ours CPU ms, floor wall ms, ours wall ms, floor /s,
    served /s, server CPU ms per request)."""
    cv2.setNumThreads(1)
    out = []
    nan = float("nan")
    for name, (data, quality) in images().items():
        w, h = header_size(data, "jpeg")
        for fraction in ROIS:
            box = list(centred_box(w, h, fraction))
            spec = {"filter": FILTER, "roi": {"boxes": [box]}}
            floor = functools.partial(floor_call, data, FILTER, [box], ".jpg", quality)
            wall_f, wall_o, cpu_f, cpu_o = _alternate(floor, _ours(data, spec), repeats)
            fl_s, sv_s, sv_cpu = nan, nan, nan
            if served is not None:
                fl_s = floor_throughput(data, FILTER, [box], ".jpg", seconds, quality)
                n = requests if w < 3000 else max(8, requests // 4)
                sv_s, sv_cpu = _served(served, *make_raw(data, spec), n)  # as the client sends it
            out.append((name, fraction, cpu_f * 1e3, cpu_o * 1e3, wall_f * 1e3, wall_o * 1e3, fl_s, sv_s, sv_cpu))
            print(f"{name} {fraction:.0%}: CPU floor {cpu_f * 1e3:.1f} ms, ours {cpu_o * 1e3:.1f} ms; served "
                  f"{sv_s:.1f}/s ({sv_cpu:.1f} CPU ms each) vs floor {fl_s:.1f}/s", flush=True)  # fmt: skip
    return out


def table(measured: list[tuple]) -> str:
    """The markdown table: CPU ms per image in process (one core each), floor / ours; wall-clock throughput served
    at c=8 against the floor's 2 processes; and the floor's CPU per image over the server's CPU per request (what
    the throughputs would be on 2 idle cores with the clients elsewhere)."""
    lines = [
        "| image | ROI | floor CPU ms | ours CPU ms | floor / ours | floor /s | served /s | served / floor | "
        "server CPU ms | floor CPU / server CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, fraction, cpu_f, cpu_o, _, _, fl_s, sv_s, sv_cpu in measured:
        lines.append(
            f"| {name} | {fraction:.0%} | {cpu_f:.1f} | {cpu_o:.1f} | {cpu_f / cpu_o:.2f}× | {fl_s:.1f} | {sv_s:.1f} "
            f"| {sv_s / fl_s:.2f}× | {sv_cpu:.1f} | {cpu_f / sv_cpu:.2f}× |"
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
        with server_process({"ROICONV_DEVICES": "cpu"}) as served:
            measured = rows(served, seconds, requests, repeats)
    print(table(measured))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
