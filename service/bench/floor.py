"""Floor comparison: ``python -m service.bench [--quick]``.

Measures the service against the same work done by a plain OpenCV loop — decode → filter each ROI crop with its
halo → encode, one process per core — and prints each ratio next to its target:

- served throughput (a real uvicorn process, default settings, concurrency 8) / the floor's, for a 1080p JPEG with
  two face boxes and gaussian k=31, the same with pixelate, and a 4K PNG with a 1% box and gaussian k=15;
- the JPEG matrix (:mod:`.matrix`): 1080p and 4K, the synthetic photo and a real photograph, ROI 1%, 5%, 25%, in
  process and served;
- concurrency 1: the server's p50 latency / one floor call;
- in process, the CPU engine's compute / OpenCV on the crops, and a 1% ROI / the whole image on 4K;
- ``crop`` + ``output_region: "roi"`` on the 4K PNG: throughput / sending the whole image.

Requests are sent as :class:`service.client.Client` sends them (the image file as the body, the spec in
``X-Spec``). Client and server share the machine's cores; ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import time

import cv2
import numpy as np

from .harness import floor_call, photo, server_process
from .load import load, make_raw

FACES = [[700, 300, 880, 520], [1100, 350, 1260, 550]]  # two face-sized boxes on 1920×1080 (~3.3% of the image)
BOX_4K = [[1700, 900, 2084, 1116]]  # 384×216 = 1.0% of 3840×2160
WORKLOADS = {
    "1080p JPEG, 2 faces, gaussian 31": ("jpeg", {"name": "gaussian", "ksize": 31, "sigma": 8}, FACES),
    "1080p JPEG, 2 faces, pixelate 16": ("jpeg", {"name": "pixelate", "block": 16}, FACES),
    "4K PNG, 1% box, gaussian 15": ("png4k", {"name": "gaussian", "ksize": 15}, BOX_4K),
}


def images() -> dict[str, bytes]:
    return {
        "jpeg": cv2.imencode(".jpg", photo(1920, 1080))[1].tobytes(),
        "png4k": cv2.imencode(".png", photo(3840, 2160, 1))[1].tobytes(),
    }


# --- the floor: what a vision engineer writes with OpenCV -------------------------------------------------------


def _floor_worker(args) -> int:
    data, filt, boxes, ext, n, quality = args
    cv2.setNumThreads(1)
    for _ in range(n):
        floor_call(data, filt, boxes, ext, quality)
    return n


def floor_throughput(data: bytes, filt: dict, boxes, ext: str, seconds: float, quality: int | None = None) -> float:
    """Images per second of one floor process per core (each loops n times)."""
    procs = os.cpu_count() or 1
    t = time.perf_counter()
    floor_call(data, filt, boxes, ext, quality)
    one = time.perf_counter() - t
    n = max(2, int(seconds / one / procs * procs))  # about ``seconds`` of work in all
    per = max(1, n // procs)
    ctx = mp.get_context("spawn")
    with ctx.Pool(procs) as pool:
        pool.map(_floor_worker, [(data, filt, boxes, ext, 1, quality)] * procs)  # start-up outside the timing
        t = time.perf_counter()
        done = sum(pool.map(_floor_worker, [(data, filt, boxes, ext, per, quality)] * procs))
        return done / (time.perf_counter() - t)


def floor_latency(data: bytes, filt: dict, boxes, ext: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        floor_call(data, filt, boxes, ext)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# --- in-process compute -------------------------------------------------------------------------------------------

COMPUTE = [
    ("gaussian 9", {"name": "gaussian", "ksize": 9}, lambda c: cv2.GaussianBlur(c, (9, 9), 0), 4),
    ("gaussian 31", {"name": "gaussian", "ksize": 31}, lambda c: cv2.GaussianBlur(c, (31, 31), 0), 15),
    ("gaussian 101", {"name": "gaussian", "ksize": 101}, lambda c: cv2.GaussianBlur(c, (101, 101), 0), 50),
    ("box 51", {"name": "box", "ksize": 51}, lambda c: cv2.blur(c, (51, 51)), 25),
    ("median 5", {"name": "median", "ksize": 5}, lambda c: cv2.medianBlur(c, 5), 2),
    ("sobel", {"name": "sobel", "dx": 1, "dy": 0}, lambda c: cv2.Sobel(c, -1, 1, 0), 1),
    ("dilate 7", {"name": "dilate", "ksize": 7}, lambda c: cv2.dilate(c, np.ones((7, 7), np.uint8)), 3),
]


def side_by_side(a, b, repeats: int) -> tuple[float, float]:
    """Seconds per call of ``a`` and ``b``, timed in alternation over loops of about 5 ms; the best of each."""
    a(), b()
    t = time.perf_counter()
    a()
    n = max(1, int(0.005 / max(time.perf_counter() - t, 1e-7)))
    best_a = best_b = float("inf")
    for _ in range(repeats):
        for fn, is_a in ((a, True), (b, False)):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            dt = (time.perf_counter() - t) / n
            best_a, best_b = (min(best_a, dt), best_b) if is_a else (best_a, min(best_b, dt))
    return best_a, best_b


def engine_call(img: np.ndarray, filt: dict, boxes: list[list[int]] | None):
    """The CPU engine's compute only (decoded pixels in, filtered pixels out in place, no decode or encode)."""
    from ..imaging.pipeline import plan, run_opencv
    from ..imaging.spec import Spec

    spec = Spec.model_validate({"filter": filt, "roi": {"boxes": boxes or []}})
    prepared = plan(spec, img, None, 10**9)  # img (H, W, 3): the pixels-in entry, no codec
    return lambda: run_opencv(prepared)


def crops_call(img: np.ndarray, fn, halo: int, boxes):
    """OpenCV on each ROI crop with its halo, the inside written back (the floor's compute)."""
    h, w = img.shape[:2]

    def run():
        for x0, y0, x1, y1 in boxes:
            t, b, l, r = max(y0 - halo, 0), min(y1 + halo, h), max(x0 - halo, 0), min(x1 + halo, w)
            img[y0:y1, x0:x1] = fn(img[t:b, l:r])[y0 - t : y1 - t, x0 - l : x1 - l]

    return run


# --- the run ------------------------------------------------------------------------------------------------------


def _served(url: str, concurrency: int, n: int, body: bytes, ctype: str | dict[str, str], max_s: float):
    asyncio.run(load(url, concurrency, concurrency * 2, max_s, body, ctype))  # warm-up
    return asyncio.run(load(url, concurrency, n, max_s, body, ctype))


def _row(rows: list, what: str, measured: str, ratio: float, target: str, ok: bool) -> None:
    rows.append((what, measured, f"{ratio:.2f}×", target, "met" if ok else "missed"))
    print(f"{what}: {measured} -> {ratio:.2f}x (target {target}: {'met' if ok else 'missed'})", flush=True)


def _served_rows(url: str, data: dict[str, bytes], rounds: int, secs: float, reqs: int, reps: int, rows: list):
    """Throughput and latency through a real server against the floor, and a 4K crop against the whole image."""
    for label, (kind, filt, boxes) in WORKLOADS.items():
        ext = ".jpg" if kind == "jpeg" else ".png"
        body, ctype = make_raw(data[kind], {"filter": filt, "roi": {"boxes": boxes}})  # as the client sends it
        fl, sv = 0.0, None
        for _ in range(rounds):  # alternate, keep the best of each: the machine is shared
            fl = max(fl, floor_throughput(data[kind], filt, boxes, ext, secs))
            r = _served(url, 8, reqs if kind == "jpeg" else max(8, reqs // 4), body, ctype, 120)
            sv = r if sv is None or r.throughput > sv.throughput else sv
        bad = {k: v for k, v in sv.statuses.items() if k != "200"}
        measured = f"served {sv.throughput:.1f}/s vs floor {fl:.1f}/s" + (f" (errors {bad})" if bad else "")
        want = 1.2 if kind == "jpeg" else 0.9
        ok = sv.throughput >= want * fl
        _row(rows, f"throughput c=8, {label}", measured, sv.throughput / fl, f"≥ {want}×", ok)
    kind, filt, boxes = WORKLOADS["1080p JPEG, 2 faces, gaussian 31"]
    body, ctype = make_raw(data[kind], {"filter": filt, "roi": {"boxes": boxes}})
    one, p50 = float("inf"), float("inf")
    for _ in range(rounds):
        one = min(one, floor_latency(data[kind], filt, boxes, ".jpg", reps * 2))
        p50 = min(p50, _served(url, 1, reqs * 2, body, ctype, 120).pct(50))
    measured = f"{p50 * 1e3:.1f} ms vs floor {one * 1e3:.1f} ms"
    _row(rows, "c=1 p50, 1080p JPEG gaussian 31", measured, p50 / one, "≤ 1.0×", p50 <= one)
    img4k = cv2.imdecode(np.frombuffer(data["png4k"], np.uint8), cv2.IMREAD_UNCHANGED)
    (x0, y0, x1, y1), halo = BOX_4K[0], 7
    cx0, cy0, cx1, cy1 = x0 - halo, y0 - halo, x1 + halo, y1 + halo
    crop = cv2.imencode(".png", img4k[cy0:cy1, cx0:cx1])[1].tobytes()
    spec = {"filter": {"name": "gaussian", "ksize": 15}, "roi": {"boxes": BOX_4K}}
    crop_spec = {**spec, "crop": {"x": cx0, "y": cy0, "width": 3840, "height": 2160}, "output_region": "roi"}
    whole = _served(url, 8, max(8, reqs // 4), *make_raw(data["png4k"], spec), 120)
    part = _served(url, 8, reqs * 4, *make_raw(crop, crop_spec), 120)
    measured = f"{part.throughput:.1f}/s vs whole image {whole.throughput:.1f}/s"
    ratio = part.throughput / whole.throughput
    _row(rows, "crop + output_region roi, 4K PNG 1%", measured, ratio, "≥ 5×", part.throughput >= 5 * whole.throughput)


def _compute_rows(data: dict[str, bytes], reps: int, rows: list) -> None:
    """The CPU engine's compute in process (one core, like one floor process) against OpenCV on the crops."""
    cv2.setNumThreads(1)
    img = cv2.imdecode(np.frombuffer(data["jpeg"], np.uint8), cv2.IMREAD_UNCHANGED)
    for label, filt, fn, h in COMPUTE:
        eng, cv = side_by_side(engine_call(img.copy(), filt, FACES), crops_call(img.copy(), fn, h, FACES), 3 * reps)
        measured = f"engine {eng * 1e3:.3f} ms vs OpenCV crops {cv * 1e3:.3f} ms"
        _row(rows, f"compute 1080p 2 faces, {label}", measured, eng / cv, "≤ 1.1×", eng <= 1.1 * cv)
    img4k = cv2.imdecode(np.frombuffer(data["png4k"], np.uint8), cv2.IMREAD_UNCHANGED)
    for label, filt, _, _ in (COMPUTE[1], COMPUTE[3]):
        roi, whole_s = side_by_side(engine_call(img4k.copy(), filt, BOX_4K), engine_call(img4k.copy(), filt, None), 3)
        measured = f"{roi * 1e3:.2f} ms vs {whole_s * 1e3:.1f} ms"
        _row(rows, f"compute 4K 1% / whole, {label}", measured, roi / whole_s, "≤ 0.03×", roi <= 0.03 * whole_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--seconds", type=float, default=6.0, help="work per throughput measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating floor/served rounds (best of each kept)")
    parser.add_argument("--no-matrix", action="store_true", help="leave out the JPEG matrix (service.bench.matrix)")
    args = parser.parse_args(argv)
    secs = 1.0 if args.quick else args.seconds
    reqs = 16 if args.quick else 60
    reps = 3 if args.quick else 15
    from . import matrix  # it builds on this module's floor

    data = images()
    rows: list = []
    print(f"cores: {os.cpu_count()}, OpenCV {cv2.__version__}", flush=True)
    with server_process({"ROICONV_DEVICES": "cpu"}) as served:
        _served_rows(served.url, data, args.rounds, secs, reqs, reps, rows)
        measured = [] if args.no_matrix else matrix.rows(served, secs, reqs, 2 if args.quick else 5)
    _compute_rows(data, reps, rows)
    print("\n| measurement | measured | ratio | target | |\n|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if measured:
        print("\n" + matrix.table(measured))
    print(json.dumps({"cores": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
