"""Benchmark of the users' tools: ``python -m service.bench.apply [--images N] [--skip-server] [--skip-client]``.

1. ``roiconv apply`` over N synthetic 1920×1080 JPEGs with two face-sized boxes each (gaussian ksize 31, σ 8):
   the OpenCV floor loop (decode → cv2.GaussianBlur on each box's crop with its halo → encode, one process per
   core), then ``roiconv apply`` in process, then ``roiconv apply --server`` against a local server (a uvicorn
   process, default settings, started before the clock starts). Each side's wall time includes its own start-up:
   the floor loop its two spawned worker interpreters (each importing OpenCV and this module) and the pool; ``roiconv
   apply`` its interpreter, imports, the check of every ROI entry and its worker pool (forked from it once it
   imported the pipeline); ``--server`` the client's start-up, not the server's.
2. :class:`service.client.Client` on a 3840×2160 PNG with a 1% box (gaussian ksize 15): bytes sent with ROI-aware
   transfer against the whole image's encoded size, and requests/s against uploading the whole PNG.

Prints a table with the ratios (side by side in one run) and the targets. Loopback only; temporary files only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

from .harness import floor_call, photo, serve

FILTER = {"name": "gaussian", "ksize": 31, "sigma": 8}
BOXES = [[700, 200, 900, 450], [1100, 300, 1280, 520]]  # two faces, ~4.3% of 1920×1080


def _floor_one(args: tuple[str, str, int | None]) -> None:
    src, dst, quality = args
    Path(dst).write_bytes(floor_call(Path(src).read_bytes(), FILTER, BOXES, ".jpg", quality))


def _floor_init() -> None:
    cv2.setNumThreads(1)


def floor_loop(files: list[Path], out: Path, quality: int | None = None) -> float:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # this process's OpenCV threads ran: fork could hang a child
    with context.Pool(os.cpu_count() or 1, initializer=_floor_init) as pool:
        pool.map(_floor_one, [(str(f), str(out / f.name), quality) for f in files], chunksize=4)
    return time.perf_counter() - t0


def run_apply(folder: Path, rois: Path, out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "service", "apply", str(folder), "--out", str(out), "--roi", str(rois)]
    cmd += ["--filter", json.dumps(FILTER), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds


REAL = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "hubble_deep_field")


def _photos(real: bool) -> tuple[list[bytes], int | None]:
    """Some 1920×1080 JPEGs and the quality they were written at: the synthetic photo (quality 95, cv2's default),
    or scikit-image's photographs upscaled and written at quality 90 as a camera would."""
    if not real:
        return [cv2.imencode(".jpg", photo(1920, 1080, s))[1].tobytes() for s in range(8)], None
    from .matrix import real_photo

    shots = [real_photo(1920, 1080, name) for name in REAL]
    if shots[0] is None:
        raise SystemExit("--real needs scikit-image (the test extra)")
    return [cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for img in shots], 90


def bench_apply(n: int, skip_server: bool, tmp: Path, real: bool = False) -> list[tuple[str, float, str]]:
    folder = tmp / "photos"
    folder.mkdir()
    files = []
    base, quality = _photos(real)
    for i in range(n):
        path = folder / f"img{i:04d}.jpg"
        path.write_bytes(base[i % len(base)])
        files.append(path)
    rois = tmp / "rois.json"
    rois.write_text(json.dumps({f.name: {"boxes": BOXES} for f in files}))
    floor_s = floor_loop(files, tmp / "floor", quality)
    local_s = run_apply(folder, rois, tmp / "local", [])
    rows = [
        (f"OpenCV floor loop ({os.cpu_count()} processes)", n / floor_s, ""),
        ("roiconv apply, in process", n / local_s, f"{floor_s / local_s:.2f}x floor (target >= 1.3)"),
    ]
    if not skip_server:
        with serve() as url:
            server_s = run_apply(folder, rois, tmp / "server", ["--server", url, "--concurrency", "8"])
        rows.append(
            ("roiconv apply --server (local server)", n / server_s, f"{floor_s / server_s:.2f}x floor (target >= 0.6)")
        )
    return rows


def bench_client(requests: int) -> list[tuple[str, float, str]]:
    from ..client import Client

    img = photo(3840, 2160, 1)
    png = cv2.imencode(".png", img)[1].tobytes()
    spec = {"filter": {"name": "gaussian", "ksize": 15}, "roi": {"boxes": [[1700, 900, 2084, 1116]]}}  # 1.0%
    with serve() as url:
        with Client(url, timeout=300) as roi, Client(url, roi_transfer=False, timeout=300) as whole:
            roi.convolve(img, spec)  # warm-up, and the catalog
            whole.convolve(png, spec)
            sent0 = roi.bytes_sent
            t0 = time.perf_counter()
            for _ in range(requests):
                roi.convolve(img, spec)
            roi_s = (time.perf_counter() - t0) / requests
            per_request = (roi.bytes_sent - sent0) / requests
            t0 = time.perf_counter()
            for _ in range(max(2, requests // 5)):
                whole.convolve(png, spec)
            whole_s = (time.perf_counter() - t0) / max(2, requests // 5)
    return [
        ("4K PNG whole-image upload (req/s)", 1 / whole_s, f"{len(png) / 1e6:.2f} MB sent per request"),
        (
            "4K PNG 1% ROI, ROI-aware client (req/s)",
            1 / roi_s,
            f"{whole_s / roi_s:.1f}x whole (target >= 5); {per_request / 1e3:.1f} kB sent = "
            f"1/{len(png) / per_request:.0f} of the PNG (target <= 1/20)",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.bench.apply", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=300, help="number of 1080p JPEGs (default 300)")
    p.add_argument("--client-requests", type=int, default=20, help="ROI-aware requests in the client part")
    p.add_argument("--skip-server", action="store_true", help="leave out roiconv apply --server")
    p.add_argument("--skip-client", action="store_true", help="leave out the 4K client part")
    p.add_argument("--real", action="store_true", help="scikit-image's photographs (quality 90), not the synthetic one")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="roiconv-bench-") as tmp:
        rows += bench_apply(args.images, args.skip_server, Path(tmp), args.real)
    if not args.skip_client:
        rows += bench_client(args.client_requests)
    kind = "photographs (q90)" if args.real else "synthetic (q95)"
    cores = os.cpu_count()
    print(f"roiconv apply / client — {args.images} {kind} JPEGs 1920x1080, 2 boxes, gaussian k31 s8; {cores} cores")
    print("| run | images or requests /s | vs |")
    print("|---|---:|---|")
    for name, rate, note in rows:
        print(f"| {name} | {rate:.1f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
