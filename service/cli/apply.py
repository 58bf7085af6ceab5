"""``roiconv apply INPUT… --out DIR``: filter the ROIs of image files, in process or through a server.

In process (the default) every file is decoded with OpenCV (JPEG upright by its EXIF orientation, as the server
does), filtered inside its ROI by the server's own pipeline (pixels in, pixels out: only the ROI's rectangles are
read and written) and encoded, in worker processes across the cores. With ``--server URL`` the
files are decoded the same way and sent with :class:`service.client.AsyncClient` (ROI-aware transfer,
``--concurrency`` requests in flight), so the work can go to a cluster behind a load balancer. Outputs keep the
input's name, folder layout and format (EXIF and ICC copied for JPEG and PNG); a file whose output exists is skipped
unless ``--overwrite``; a file without ROI shapes is copied unchanged. Exit status: 0 when nothing failed, 1 when a
file failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..imaging.metadata import copy_metadata, format_of
from .sources import RoiSource, expand_inputs, grow_roi, has_shapes, load_coco, load_mapping

__all__ = ["Task", "add_arguments", "convolve_local", "plan_tasks", "process_file", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``apply`` subcommand's arguments."""
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or globs")
    p.add_argument("--out", required=True, type=Path, help="output folder (created); names and layout are kept")
    p.add_argument(
        "--filter",
        required=True,
        help='a filter name ("pixelate") or a JSON filter ({"name": "gaussian", "ksize": 31})',
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--roi", type=Path, help="JSON file: {file name: ROI object}; default: NAME.json sidecars")
    src.add_argument("--coco", type=Path, help="COCO annotation file: boxes, or segmentation polygons")
    p.add_argument("--categories", help="with --coco: comma-separated category names or ids to use (default all)")
    p.add_argument("--mask-scale", type=float, default=1.0, help="grow every shape about its centre (default 1.0)")
    p.add_argument("--outside", choices=["keep", "zero"], default="keep", help="pixels outside the ROI")
    p.add_argument("--border", default="reflect101", help="border mode at the image's edges (default reflect101)")
    p.add_argument("--server", help="send the files to this server URL instead of filtering in process")
    p.add_argument(
        "--api-key", default=os.environ.get("ROICONV_API_KEY"), help="with --server (default ROICONV_API_KEY)"
    )
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="in process: worker processes (default: the cores)"
    )
    p.add_argument("--concurrency", type=int, default=8, help="with --server: requests in flight (default 8)")
    p.add_argument("--overwrite", action="store_true", help="write outputs that exist already (default: skip them)")
    p.add_argument("--dry-run", action="store_true", help="list what would be done, write nothing")


@dataclass
class Task:
    """One file: where it is, where its output goes, and the spec (None: no ROI shapes, copy it unchanged)."""

    src: Path
    dst: Path
    spec: dict | None


def _filter(text: str) -> dict:
    text = text.strip()
    if text.startswith("{"):
        value = json.loads(text)
        return value["filter"] if "filter" in value and isinstance(value["filter"], dict) else value
    return {"name": text}


def plan_tasks(args: argparse.Namespace) -> tuple[list[Task], list[tuple[Path, str]]]:
    """The tasks for every input file, and the files skipped with the reason (output exists)."""
    filt = _filter(args.filter)
    if args.coco is not None:
        cats = None if args.categories is None else [c.strip() for c in args.categories.split(",") if c.strip()]
        source = RoiSource(load_coco(args.coco, cats))
    else:
        source = RoiSource(load_mapping(args.roi) if args.roi is not None else None)
    tasks, skipped = [], []
    for src, rel in expand_inputs(args.inputs):
        dst = args.out / rel
        if dst.exists() and not args.overwrite:
            skipped.append((src, "output exists (--overwrite to redo)"))
            continue
        roi = source.find(src, rel)
        roi = None if roi is None else grow_roi(roi, args.mask_scale)
        spec = None
        if roi is not None and has_shapes(roi):
            spec = {"filter": filt, "roi": roi, "outside": args.outside, "border": args.border}
        tasks.append(Task(src, dst, spec))
    return tasks, skipped


def _write(dst: Path, data: bytes) -> None:
    """Write through a temporary name, so an interrupted run leaves no partial output to be skipped later."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, dst)


def process_file(task: Task, max_pixels: int) -> str:
    """In process: filter one file and write its output; returns "done", "copied" or "failed: <reason>"."""
    try:
        return _process_file(task, max_pixels)
    except Exception as exc:  # as text: not every exception survives the trip back from a worker process
        return f"failed: {_reason(exc)}"


def _process_file(task: Task, max_pixels: int) -> str:
    if task.spec is None:
        task.dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(task.src, task.dst)
        return "copied"
    data = task.src.read_bytes()
    fmt = format_of(task.src)
    pixels = _decode(data, fmt)
    if pixels.shape[0] * pixels.shape[1] > max_pixels:
        raise ValueError(f"{pixels.shape[1]}x{pixels.shape[0]} pixels, more than ROICONV_MAX_PIXELS={max_pixels}")
    result = convolve_local(pixels, task.spec, max_pixels, inplace=True)
    _write(task.dst, copy_metadata(data, _encode(result, fmt, task.src.suffix), fmt))
    return "done"


def convolve_local(pixels: np.ndarray, spec: dict, max_pixels: int, *, inplace: bool = False) -> np.ndarray:
    """``pixels`` (H, W[, C]) filtered in this process by the server's own pipeline, pixels in and pixels out
    (:func:`service.imaging.pipeline.process_pixels`): only the ROI's rectangles are read and written (into ``pixels``
    itself with ``inplace=True``, else into a copy). torch is imported only for the filters the torch engine runs."""
    from ..imaging.pipeline import process_pixels
    from ..imaging.spec import Spec

    return process_pixels(Spec.model_validate(spec), pixels, max_pixels=max_pixels, inplace=inplace)


def _reason(exc: BaseException) -> str:
    field = getattr(exc, "field", None)
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return f"{field}: {reason}" if field else reason


class Progress:
    """A tqdm bar (rate, ETA) on a terminal, one plain line per file otherwise."""

    def __init__(self, total: int, stream=None) -> None:
        stream = stream or sys.stderr
        self.total, self.count, self.stream, self.t0 = total, 0, stream, time.monotonic()
        self.bar = None
        if stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", file=stream, dynamic_ncols=True)

    def step(self, name: str, status: str) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
            if status.startswith("failed"):
                self.bar.write(f"{name}: {status}", file=self.stream)
            return
        elapsed = time.monotonic() - self.t0
        rate = self.count / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.count) / rate if rate > 0 else 0.0
        print(f"[{self.count}/{self.total}] {name}: {status} ({rate:.1f} img/s, ETA {eta:.0f} s)", file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_local(tasks: list[Task], workers: int, progress: Progress, max_pixels: int) -> dict[Path, str]:
    results: dict[Path, str] = {}

    def record(task: Task, status: str) -> None:
        results[task.src] = status
        progress.step(str(task.src), status)

    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            try:
                record(task, process_file(task, max_pixels))
            except Exception as exc:
                record(task, f"failed: {_reason(exc)}")
        return results
    # forkserver: workers fork from a fresh single-threaded process that imported the pipeline once (forking a
    # parent whose OpenMP threads already ran can hang or crash the child)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["service.imaging.pipeline"])
    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context, initializer=_worker_init) as pool:
        futures = {pool.submit(process_file, t, max_pixels): t for t in tasks}
        for future in as_completed(futures):
            try:
                record(futures[future], future.result())
            except Exception as exc:
                record(futures[future], f"failed: {_reason(exc)}")
    return results


def _worker_init() -> None:
    """One thread per worker process: the processes are the parallelism (torch, if a filter imports it, reads
    OMP_NUM_THREADS when it loads)."""
    import cv2

    os.environ["OMP_NUM_THREADS"] = "1"
    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _decode(data: bytes, fmt: str) -> np.ndarray:
    import cv2

    # JPEG: decoded upright by its EXIF orientation, as the server does; others as stored, alpha and depth kept
    flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH if fmt == "jpeg" else cv2.IMREAD_UNCHANGED
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if pixels is None:
        raise ValueError(f"corrupt or unsupported {fmt or 'image'} file: OpenCV could not decode it")
    return pixels


def _encode(pixels: np.ndarray, fmt: str, suffix: str) -> bytes:
    import cv2

    ok, buf = cv2.imencode(suffix, pixels)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {pixels.dtype} {pixels.shape} result as {fmt}")
    return buf.tobytes()


async def _run_server(tasks: list[Task], args: argparse.Namespace, progress: Progress) -> dict[Path, str]:
    from ..client import AsyncClient

    results: dict[Path, str] = {}
    gate = asyncio.Semaphore(max(1, args.concurrency))

    async def one(client: AsyncClient, task: Task) -> None:
        async with gate:
            try:
                if task.spec is None:
                    await asyncio.to_thread(process_file, task, 0)
                    status = "copied"
                else:
                    fmt = format_of(task.src)
                    data = await asyncio.to_thread(task.src.read_bytes)
                    pixels = await asyncio.to_thread(_decode, data, fmt)
                    result = await client.convolve(pixels, task.spec)
                    body = await asyncio.to_thread(_encode, result, fmt, task.src.suffix)
                    await asyncio.to_thread(_write, task.dst, copy_metadata(data, body, fmt))
                    status = "done"
            except Exception as exc:
                status = f"failed: {_reason(exc)}"
        results[task.src] = status
        progress.step(str(task.src), status)

    async with AsyncClient(args.server, api_key=args.api_key) as client:
        await asyncio.gather(*(one(client, t) for t in tasks))
    return results


def _summary(results: dict[Path, str], skipped: list[tuple[Path, str]], seconds: float) -> str:
    failed = {p: s for p, s in results.items() if s.startswith("failed")}
    done = sum(s == "done" for s in results.values())
    copied = sum(s == "copied" for s in results.values())
    lines = [
        f"done {done}, copied without ROI {copied}, skipped {len(skipped)}, failed {len(failed)} in {seconds:.1f} s"
    ]
    lines += [f"  skipped {p}: {why}" for p, why in skipped]
    lines += [f"  FAILED {p}: {s.removeprefix('failed: ')}" for p, s in sorted(failed.items())]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``roiconv apply``; returns the exit status."""
    try:
        tasks, skipped = plan_tasks(args)
        if args.server is None and tasks:
            from pydantic import ValidationError

            from ..imaging.spec import Spec, field_errors

            probe = next((t.spec for t in tasks if t.spec is not None), None)
            if probe is not None:
                try:
                    Spec.model_validate(probe)
                except ValidationError as exc:
                    first = (field_errors(exc, "spec") or [{"field": "spec", "reason": "invalid"}])[0]
                    raise ValueError(f"{first['field']}: {first['reason']}") from None
    except (ValueError, OSError, KeyError, TypeError) as exc:  # bad inputs, ROI files or filter JSON
        print(f"roiconv apply: {'missing key ' if isinstance(exc, KeyError) else ''}{exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for t in tasks:
            what = "copy (no ROI)" if t.spec is None else json.dumps(t.spec["roi"], separators=(",", ":"))
            print(f"{t.src} -> {t.dst}: {what}")
        for src, why in skipped:
            print(f"{src}: skip, {why}")
        print(f"dry run: {len(tasks)} to write, {len(skipped)} skipped")
        return 0
    t0 = time.monotonic()
    progress = Progress(len(tasks))
    try:
        if args.server is not None:
            results = asyncio.run(_run_server(tasks, args, progress))
        else:
            from ..server.settings import load_settings  # ROICONV_MAX_PIXELS, as the server reads it

            results = _run_local(tasks, args.workers, progress, load_settings().max_pixels)
    finally:
        progress.close()
    print(_summary(results, skipped, time.monotonic() - t0), file=sys.stderr)
    return 1 if any(s.startswith("failed") for s in results.values()) else 0
