"""``roiconv apply`` on videos: the options, and the run (one video at a time, in this process, frame by frame).

A video's task carries the same spec as an image's (filter, border, outside, and the ROI: image shapes filtered in
every frame, ``tracks`` (:mod:`service.video.tracks`) and ``detect``); :func:`run_videos` turns it into an
:class:`service.video.Anonymizer` and writes the file with :func:`service.video.anonymize_file`. Each video prints
its progress in frames on stderr (a line every 2 s) and a line when done.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from ..video.formats import is_video
from .interrupts import Interrupted, interrupts

__all__ = ["add_arguments", "is_video_task", "run_videos"]

_SHAPES = ("boxes", "polygons", "circles", "ellipses", "invert")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options that only videos read."""
    from ..video.container import DEFAULT_CRF, DEFAULT_PRESET
    from ..video.stream import DEFAULT_HOLD, DEFAULT_INTERVAL

    g = p.add_argument_group("videos (.mp4 .mov .m4v .mkv .webm .avi; the video extra; docs/video.md)")
    g.add_argument(
        "--crf", type=int, default=DEFAULT_CRF, help=f"video quality, lower is better (default {DEFAULT_CRF})"
    )
    g.add_argument("--preset", default=DEFAULT_PRESET, help=f"x264 speed preset (default {DEFAULT_PRESET})")
    g.add_argument(
        "--keyframe-interval",
        type=int,
        default=DEFAULT_INTERVAL,
        help=f"with --detect: frames between whole-frame detections (default {DEFAULT_INTERVAL})",
    )
    g.add_argument(
        "--hold",
        type=int,
        default=DEFAULT_HOLD,
        help=f"with --detect: frames a face stays covered before its first and after its last detection "
        f"(default {DEFAULT_HOLD})",
    )


def is_video_task(task) -> bool:
    """A task the video path runs: a video with something to filter (one to copy unchanged is copied as a file)."""
    return task.spec is not None and is_video(task.src)


def run_videos(tasks: list, args: argparse.Namespace, progress, max_pixels: int) -> dict[Path, str]:
    """Each video task run in turn; returns {source: "done" | "failed: <reason>"} and steps ``progress``. A Ctrl-C
    stops the video in progress at its next frame (its temporary file removed, nothing written) and raises
    :class:`.interrupts.Interrupted` with the videos finished before it."""
    results: dict[Path, str] = {}
    if any(t.spec["roi"].get("detect") for t in tasks):
        _threads()
    with interrupts() as stop:
        for task in tasks:
            if stop.is_set():
                break
            try:
                status = _one(task, args, max_pixels, stop)
            except _Stopped:
                break
            except (ValueError, ImportError, OSError, RuntimeError) as exc:  # VideoError is a ValueError
                status = f"failed: {exc}"
            results[task.src] = status
            progress.step(str(task.src), status)
        if stop.is_set():
            raise Interrupted(results)
    return results


class _Stopped(Exception):
    """Raised from a video's frame callback after a Ctrl-C: the video is abandoned (its ``.part`` file removed)."""


def _threads() -> None:
    """The detector on half the cores (at least one): the decoder and the encoder run their own threads beside it,
    and torch's thread pool slows down sharply when the cores are oversubscribed."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))


def _one(task, args: argparse.Namespace, max_pixels: int, stop: threading.Event) -> str:
    from ..imaging.spec import Detect
    from ..video.container import anonymize_file
    from ..video.stream import Anonymizer, FaceDetector
    from ..video.tracks import parse_tracks

    if getattr(args, "crf", None) is not None and not 0 <= args.crf <= 63:
        raise ValueError(f"--crf must be within 0..63, got {args.crf}")
    spec, roi = task.spec, task.spec["roi"]
    detect = Detect.model_validate(roi["detect"]) if roi.get("detect") else None
    anonymizer = Anonymizer(
        filter=spec["filter"],
        detect=False if detect is None else FaceDetector(detect.threshold, detect.max_side),
        scale=1.3 if detect is None else detect.scale,
        shape="ellipse" if detect is None else detect.shape,
        roi={k: v for k, v in roi.items() if k in _SHAPES},
        tracks=parse_tracks(roi["tracks"]) if roi.get("tracks") else None,
        interval=getattr(args, "keyframe_interval", 8),
        hold=getattr(args, "hold", 12),
        outside=spec["outside"],
        border=spec["border"],
        max_pixels=max_pixels,
    )
    line = _Lines(task.src)

    def frame(done: int, total: int) -> None:
        if stop.is_set():
            raise _Stopped
        line.frame(done, total)

    result = anonymize_file(
        task.src, task.dst, anonymizer, crf=getattr(args, "crf", 18), preset=getattr(args, "preset", "faster"),
        progress=frame,
    )  # fmt: skip
    rate = result.frames / result.seconds if result.seconds > 0 else 0.0
    faces = f", faces covered in {result.covered}, detector on {result.detector_calls}" if detect else ""
    print(f"{task.src}: {result.frames} frames{faces} ({rate:.1f} frames/s)", file=sys.stderr)
    return "done"


class _Lines:
    """Progress in frames: one line on stderr every 2 s."""

    def __init__(self, src: Path) -> None:
        self.src, self.t0 = src, time.monotonic()
        self.last = self.t0

    def frame(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 2.0:
            return
        self.last = now
        rate = done / (now - self.t0)
        of = f"/{total}" if total else ""
        print(f"{self.src}: frame {done}{of} ({rate:.1f} frames/s)", file=sys.stderr)
