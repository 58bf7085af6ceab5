"""Benchmark of the users' tools: ``python -m service.bench.apply [--images N] [--skip-server] [--skip-client]``.

1. ``roiconv apply`` over N synthetic 1920×1080 JPEGs with two face-sized boxes each (gaussian ksize 31, σ 8):
   the OpenCV floor loop (decode → cv2.GaussianBlur on each box's crop with its halo → encode, one process per
   core), then ``roiconv apply`` in process, then ``roiconv apply --server`` against a local server (a uvicorn
   process, default settings, started before the clock starts). Each command's wall time includes its own start-up.
2. :class:`service.client.Client` on a 3840×2160 PNG with a 1% box (gaussian ksize 15): bytes sent with ROI-aware
   transfer against the whole image's encoded size, and requests/s against uploading the whole PNG.

Prints a table with the ratios (side by side in one run) and the targets. Loopback only; temporary files only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

FILTER = {"name": "gaussian", "ksize": 31, "sigma": 8}
BOXES = [[700, 200, 900, 450], [1100, 300, 1280, 520]]  # two faces, ~4.3% of 1920×1080


def make_photo(seed: int, h: int = 1080, w: int = 1920) -> np.ndarray:
    """A smooth synthetic photo with some texture (JPEG size close to a real one's)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(0, 12, (h, w, 3), dtype=np.uint8)
    return cv2.add(img, noise)


def _floor_one(args: tuple[str, str]) -> None:
    src, dst = args
    img = cv2.imdecode(np.fromfile(src, np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    halo = FILTER["ksize"] // 2
    for x0, y0, x1, y1 in BOXES:
        cx0, cy0, cx1, cy1 = max(0, x0 - halo), max(0, y0 - halo), min(w, x1 + halo), min(h, y1 + halo)
        crop = cv2.GaussianBlur(img[cy0:cy1, cx0:cx1], (31, 31), 8, borderType=cv2.BORDER_REFLECT_101)
        img[y0:y1, x0:x1] = crop[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
    Path(dst).write_bytes(cv2.imencode(".jpg", img)[1].tobytes())


def _floor_init() -> None:
    cv2.setNumThreads(1)


def floor_loop(files: list[Path], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # this process's OpenCV threads ran: fork could hang a child
    with context.Pool(os.cpu_count() or 1, initializer=_floor_init) as pool:
        pool.map(_floor_one, [(str(f), str(out / f.name)) for f in files], chunksize=4)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROICONV_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not become ready")


def bench_apply(n: int, skip_server: bool, tmp: Path) -> list[tuple[str, float, str]]:
    folder = tmp / "photos"
    folder.mkdir()
    files = []
    base = [make_photo(s) for s in range(8)]
    for i in range(n):
        path = folder / f"img{i:04d}.jpg"
        path.write_bytes(cv2.imencode(".jpg", base[i % 8])[1].tobytes())
        files.append(path)
    rois = tmp / "rois.json"
    rois.write_text(json.dumps({f.name: {"boxes": BOXES} for f in files}))
    floor_s = floor_loop(files, tmp / "floor")
    local_s = run_apply(folder, rois, tmp / "local", [])
    rows = [
        (f"OpenCV floor loop ({os.cpu_count()} processes)", n / floor_s, ""),
        ("roiconv apply, in process", n / local_s, f"{floor_s / local_s:.2f}x floor (target >= 0.8)"),
    ]
    if not skip_server:
        proc, url = start_server()
        try:
            server_s = run_apply(folder, rois, tmp / "server", ["--server", url, "--concurrency", "8"])
        finally:
            proc.terminate()
            proc.wait(30)
        rows.append(
            ("roiconv apply --server (local server)", n / server_s, f"{floor_s / server_s:.2f}x floor (target >= 0.6)")
        )
    return rows


def bench_client(requests: int) -> list[tuple[str, float, str]]:
    from ..client import Client

    img = make_photo(1, 2160, 3840)
    png = cv2.imencode(".png", img)[1].tobytes()
    spec = {"filter": {"name": "gaussian", "ksize": 15}, "roi": {"boxes": [[1700, 900, 2084, 1116]]}}  # 1.0%
    proc, url = start_server()
    try:
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
    finally:
        proc.terminate()
        proc.wait(30)
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
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="roiconv-bench-") as tmp:
        rows += bench_apply(args.images, args.skip_server, Path(tmp))
    if not args.skip_client:
        rows += bench_client(args.client_requests)
    print(f"roiconv apply / client — {args.images} JPEGs 1920x1080, 2 boxes, gaussian k31 s8; {os.cpu_count()} cores")
    print("| run | images or requests /s | vs |")
    print("|---|---:|---|")
    for name, rate, note in rows:
        print(f"| {name} | {rate:.1f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
