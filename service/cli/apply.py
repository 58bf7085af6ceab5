"""``roiconv apply INPUT… --out DIR``: filter the ROIs of image files, in process or through a server.

Every file goes through the server's own per-file path (:func:`service.imaging.pipeline.process`): structure checks
(the decode bombs the server refuses), decode, the EXIF orientation, regions, filter, and encode with the metadata
policy (docs/anonymization.md: only the ICC profile and the orientation are kept unless ``--keep-metadata``; a JPEG
keeps every block outside the ROI). In process (the default) that runs in worker processes across the cores; with
``--server URL`` each file is sent whole with :class:`service.client.AsyncClient` (``--concurrency`` requests in
flight) and the server's answer is written as it comes, so the work can go to a cluster behind a load balancer. Both
write the same bytes. Outputs keep the input's name, folder layout and format, written atomically; a file whose
output exists is skipped unless ``--overwrite``.

It fails closed (docs/anonymization.md): every ROI entry is checked with the server's spec model before any work;
a file that no ROI source covers is left out unless ``--copy-unmatched`` (one whose entry has no shapes is copied
with its pixels unchanged, its metadata by the same policy). Exit status: 0 when everything was done, 1 when a file
failed or was left out or a ROI entry matched no file, 2 for bad arguments or ROI entries (nothing written), 130
after Ctrl-C (:mod:`.interrupts`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from ..imaging.metadata import format_of
from . import sources, video
from .interrupts import CancellableCalls, ClosingGate, Interrupted, interrupts, loop_interrupts
from .sources import RoiSource, check_entry, expand_inputs, grow_roi, has_shapes, load_coco, load_mapping

__all__ = ["Task", "add_arguments", "convolve_file", "copy_file", "plan_tasks", "process_file", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``apply`` subcommand's arguments."""
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, folders (recursive) or globs")
    p.add_argument("--out", required=True, type=Path, help="output folder (created); names and layout are kept")
    p.add_argument(
        "--filter",
        default=DEFAULT_FILTER,
        help='a filter name ("pixelate") or a JSON filter ({"name": "gaussian", "ksize": 31}); default: gaussian with '
        'ksize "auto", sized to each ROI shape (docs/anonymization.md)',
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--roi", type=Path, help="JSON file: {file name: ROI object}; default: NAME.json sidecars")
    src.add_argument("--coco", type=Path, help="COCO annotation file: boxes, or segmentation polygons")
    p.add_argument("--categories", help="with --coco: comma-separated category names or ids to use (default all)")
    p.add_argument("--mask-scale", type=float, default=1.0, help="grow every shape about its centre (default 1.0)")
    p.add_argument(
        "--detect",
        choices=["faces"],
        help="also filter what a detector finds (faces; the detect extra), alone or with a ROI source; every input is "
        "then covered, and files where nothing is found (and nothing else is given) are copied unchanged and counted",
    )
    p.add_argument("--threshold", type=float, default=0.2, help="with --detect: the score a face must pass (0.2)")
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
    p.add_argument(
        "--keep-metadata",
        action="store_true",
        help="keep every input's metadata (EXIF with GPS, names, serial numbers and thumbnails, XMP, IPTC, comments) "
        "byte for byte: unsafe for anonymization (default: keep only the ICC profile and the orientation)",
    )
    p.add_argument("--overwrite", action="store_true", help="write outputs that exist already (default: skip them)")
    p.add_argument(
        "--copy-unmatched",
        action="store_true",
        help="copy inputs that no ROI source covers unchanged (default: leave them out, exit status 1)",
    )
    p.add_argument("--follow-symlinks", action="store_true", help="read links in input folders that lead outside them")
    p.add_argument("--dry-run", action="store_true", help="list what would be done, write nothing")
    video.add_arguments(p)


DEFAULT_FILTER = "gaussian"  # ksize "auto": anonymizing is apply's job, so its default hides a face of any size


@dataclass
class Task:
    """One file: where it is, where its output goes, and the spec (None: copy it unchanged: its ROI entry has no
    shapes, or it has none and ``--copy-unmatched`` was given)."""

    src: Path
    dst: Path
    spec: dict | None
    keep_metadata: bool = False


@dataclass
class Plan:
    """What a run will do: the tasks, the inputs skipped (output exists) and left out (no ROI, with a near miss
    when one is found), and the mapping's entries that no input matched."""

    tasks: list[Task] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    left_out: list[tuple[Path, str]] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


def _filter(text: str) -> dict:
    text = text.strip()
    if text.startswith("{"):
        value = json.loads(text)
        return value["filter"] if "filter" in value and isinstance(value["filter"], dict) else value
    return {"name": text}


def _source(args: argparse.Namespace) -> RoiSource:
    if args.coco is not None:
        cats = None if args.categories is None else [c.strip() for c in args.categories.split(",") if c.strip()]
        return RoiSource(load_coco(args.coco, cats), str(args.coco))
    return RoiSource(load_mapping(args.roi), str(args.roi)) if args.roi is not None else RoiSource()


def plan_tasks(args: argparse.Namespace) -> Plan:
    """Everything a run will do, decided before any work. ValueError (exit 2) for a bad filter, a bad ROI entry
    anywhere (every entry of the mapping, every sidecar found: checked with the server's own spec model), an output
    that would replace its input or an ``--out`` that is a file, ``--detect`` in process without the detect extra,
    and a run where no input has a ROI source."""
    filt = _filter(args.filter)
    check = lambda where, roi: check_entry(where, roi, filt, args.outside, args.border)  # noqa: E731
    error = check("--filter", {})
    if error is not None:
        raise ValueError(error)
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file: give a folder (created when missing) for the outputs")
    for item in args.inputs:
        if Path(item).is_dir() and Path(item).resolve() == args.out.resolve():
            raise ValueError(f"--out {args.out} is the input folder {item}: the outputs would replace the originals")
    detect = {"what": args.detect, "threshold": args.threshold} if getattr(args, "detect", None) else None
    if detect is not None and (error := check("--detect", {"detect": detect})):
        raise ValueError(error)
    if detect is not None and getattr(args, "server", None) is None:
        sources.check_detector()
    source = _source(args)
    errors = [e for key, roi in (source.mapping or {}).items() if (e := check(f"{source.origin}: entry {key!r}", roi))]
    plan, found, total = Plan(), 0, 0
    for src, rel in expand_inputs(args.inputs, exclude=args.out, follow_symlinks=args.follow_symlinks):
        dst = args.out / rel
        if dst.resolve() == src.resolve():
            raise ValueError(f"--out {args.out} would write {rel} over its input {src}; choose another output folder")
        entry = source.find(src, rel)
        found, total = found + (entry is not None), total + 1
        if entry is None and not args.copy_unmatched and detect is None:
            plan.left_out.append((src, _no_roi(source, src, rel)))
            continue
        if entry is not None and source.mapping is None and (e := check(*entry)):
            errors.append(e)
        roi = None if entry is None else grow_roi(entry[1], args.mask_scale)
        if detect is not None:
            roi = {**(roi or {}), "detect": detect}
        spec = None
        if roi is not None and (has_shapes(roi) or "detect" in roi):
            spec = {"filter": filt, "roi": roi, "outside": args.outside, "border": args.border}
        if dst.exists() and not args.overwrite:
            plan.skipped.append((src, "output exists (--overwrite to redo)"))
            continue
        plan.tasks.append(Task(src, dst, spec, getattr(args, "keep_metadata", False)))
    if errors:
        more = f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ValueError("bad ROI entries, nothing written:\n  " + "\n  ".join(errors[:20]) + more)
    if found == 0 and source.mapping is None and total and detect is None:  # even with --copy-unmatched
        raise ValueError(
            "no ROI source: none of the inputs has a NAME.json sidecar; give --roi rois.json (file name → ROI), "
            "--coco annotations.json, or sidecars next to the images"
        )
    plan.unused = source.unused()
    return plan


def _no_roi(source: RoiSource, src: Path, rel: Path) -> str:
    near = source.near_miss(src, rel)
    hint = f"; did you mean {source.origin}'s entry {near!r}? (keys match exactly)" if near else ""
    return f"no ROI{hint}"


def _write(dst: Path, data: bytes | None = None, *, copy_of: Path | None = None) -> None:
    """Write ``data`` (or a copy of the file ``copy_of``) through a temporary file in the same folder renamed over
    ``dst``, so an interrupted run leaves no partial output that a later run would skip as done."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        if copy_of is not None:
            shutil.copyfile(copy_of, tmp)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def process_file(task: Task, max_pixels: int) -> str:
    """In process: filter one file and write its output; returns "done", "copied", "nothing detected" or
    "failed: <reason>"."""
    try:
        return _process_file(task, max_pixels)
    except Exception as exc:  # as text: not every exception survives the trip back from a worker process
        return f"failed: {_reason(exc)}"


def _process_file(task: Task, max_pixels: int) -> str:
    data = task.src.read_bytes()
    if task.spec is None:
        _write(task.dst, copy_file(data, task.keep_metadata, max_pixels))
        return "copied"
    body, headers = convolve_file(data, _file_spec(task), max_pixels)
    _write(task.dst, body)
    return _status_of(task, headers)


def convolve_file(data: bytes, spec: dict, max_pixels: int) -> tuple[bytes, dict[str, str]]:
    """A file's bytes filtered in this process by the server's own per-file path
    (:func:`service.imaging.pipeline.process`: structure checks, decode, orientation, regions, filter, encode with
    the metadata policy); returns (output bytes, the headers the server would send). torch is imported only for the
    filters the torch engine runs."""
    from ..imaging.pipeline import process
    from ..imaging.spec import Spec

    body, _, headers = process(Spec.model_validate(spec), data, max_pixels=max_pixels)
    return body, headers


def copy_file(data: bytes, keep_metadata: bool, max_pixels: int) -> bytes:
    """The bytes written for a file copied unchanged (no ROI to filter): its pixels as they are, its metadata by
    the policy (:func:`service.imaging.pipeline.unfiltered`)."""
    from ..imaging.pipeline import unfiltered

    return unfiltered(data, "keep" if keep_metadata else "strip", max_pixels=max_pixels)


_SPEC_FORMATS = ("png", "jpeg", "tiff", "webp")


def _file_spec(task: Task) -> dict:
    """The task's spec for its file: the output in the format its suffix names, the metadata policy."""
    fmt = format_of(task.dst)
    fmt = fmt if fmt in _SPEC_FORMATS else None  # bmp: the input's own
    return {**task.spec, "format": fmt, "metadata": "keep" if task.keep_metadata else "strip"}


def _status_of(task: Task, headers: dict[str, str]) -> str:
    """ "nothing detected" when the ROI is only what a detector finds and it found nothing (the file is written
    with its pixels as they were), else "done"."""
    detect_only = "detect" in task.spec["roi"] and not has_shapes(task.spec["roi"])
    found = {k.lower(): v for k, v in headers.items()}.get("x-faces-found")  # HTTP header names: any case
    return "nothing detected" if detect_only and found == "0" else "done"


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

            tqdm.monitor_interval = 0  # no monitor thread (the workers fork from this process); miniters=1 instead
            self.bar = tqdm(total=total, unit="img", file=stream, dynamic_ncols=True, miniters=1)

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
    """Each task in process, on ``workers`` worker processes; raises :class:`Interrupted` after a Ctrl-C."""
    results: dict[Path, str] = {}

    def record(task: Task, status: str) -> None:
        results[task.src] = status
        progress.step(str(task.src), status)

    with interrupts() as stop:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                if stop.is_set():
                    break
                try:
                    record(task, process_file(task, max_pixels))
                except Exception as exc:
                    record(task, f"failed: {_reason(exc)}")
        else:
            _run_pool(tasks, min(workers, len(tasks)), max_pixels, record, stop)
        if stop.is_set():
            raise Interrupted(results)
    return results


def _run_pool(tasks: list[Task], workers: int, max_pixels: int, record, stop: threading.Event) -> None:
    """The tasks on a process pool, never more submitted than there are workers (a submitted file starts at once),
    and none after ``stop`` is set."""
    detects = any(t.spec is not None and "detect" in t.spec["roi"] for t in tasks)  # workers fork with the network
    context = _pool_context(detects)
    queue = iter(tasks)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        running = {}
        while True:
            if not stop.is_set():
                for task in itertools.islice(queue, workers - len(running)):
                    running[pool.submit(process_file, task, max_pixels)] = task
            if not running:
                return
            done, _ = wait(running, timeout=0.1, return_when=FIRST_COMPLETED)  # wakes to see a Ctrl-C
            for future in done:
                task = running.pop(future)
                try:
                    record(task, future.result())
                except Exception as exc:
                    record(task, f"failed: {_reason(exc)}")


def _pool_context(detects: bool) -> multiprocessing.context.BaseContext:
    """How the workers start. Without detection, where the system forks and this process runs no other thread:
    forked from this process once it imported the pipeline (its pixel work and any thread pool have not started
    here, so the children start clean), which spares a second interpreter's start-up and imports (measured:
    about 0.3 s of a 120-file run). Else from a forkserver: a fresh single-threaded process that imported the
    pipeline (and the face network) once, since forking a parent whose OpenMP threads already ran can hang or crash
    the child."""
    if not detects and _can_fork():
        import service.imaging.pipeline  # noqa: F401  (once, in the parent: the workers inherit it)

        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["service.imaging.pipeline"] + (["service.imaging.faces.warm"] if detects else []))
    return context


def _can_fork() -> bool:
    """Whether forking this process is safe: Linux, one thread, and neither torch nor a network loaded here."""
    loaded = any(name in sys.modules for name in ("torch", "onnxruntime"))
    return sys.platform == "linux" and threading.active_count() == 1 and not loaded


def _worker_init() -> None:
    """One thread per worker process: the processes are the parallelism (torch, if a filter imports it, reads
    OMP_NUM_THREADS when it loads)."""
    import cv2

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the parent's to handle: it lets running files finish
    os.environ["OMP_NUM_THREADS"] = "1"
    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


async def _run_server(
    tasks: list[Task], args: argparse.Namespace, progress: Progress, max_pixels: int
) -> dict[Path, str]:
    from ..client import AsyncClient

    results: dict[Path, str] = {}
    gate = ClosingGate(max(1, args.concurrency))

    async def one(client: AsyncClient, task: Task) -> None:
        async with gate:
            try:
                data = await asyncio.to_thread(task.src.read_bytes)
                if task.spec is None:
                    body = await asyncio.to_thread(copy_file, data, task.keep_metadata, max_pixels)
                    status = "copied"
                else:  # the server runs the same per-file path on the file's bytes
                    body, headers = await client.convolve_file(data, _file_spec(task))
                    status = _status_of(task, headers)
                await asyncio.to_thread(_write, task.dst, body)
            except Exception as exc:
                status = f"failed: {_reason(exc)}"
        results[task.src] = status
        progress.step(str(task.src), status)

    async with AsyncClient(args.server, api_key=args.api_key) as http:
        client = CancellableCalls(http)
        runs = [asyncio.ensure_future(one(client, t)) for t in tasks]
        with loop_interrupts(gate, client, runs):
            await asyncio.gather(*runs, return_exceptions=True)
    if gate.closed:
        raise Interrupted(results)
    return results


def _summary(results: dict[Path, str], plan: Plan, seconds: float) -> str:
    failed = {p: s for p, s in results.items() if s.startswith("failed")}
    done = sum(s == "done" for s in results.values())
    copied = sum(s == "copied" for s in results.values())
    nothing = sum(s == "nothing detected" for s in results.values())
    detected = f", written unchanged (nothing detected) {nothing}" if nothing else ""
    head = (
        f"done {done}, copied unchanged {copied}{detected}, left out (no ROI) {len(plan.left_out)}, skipped "
        f"{len(plan.skipped)}, failed {len(failed)}, unused ROI entries {len(plan.unused)} in {seconds:.1f} s"
    )
    return "\n".join([head, *_details(plan, failed)])


def _details(plan: Plan, failed: dict[Path, str]) -> list[str]:
    lines = [f"  skipped {p}: {why}" for p, why in plan.skipped]
    lines += [f"  LEFT OUT {p}: {why}" for p, why in plan.left_out]
    if plan.left_out:
        lines.append("  (give them a ROI, or --copy-unmatched to copy them unchanged)")
    lines += [f"  UNUSED entry {key!r}: no input matches it" for key in plan.unused]
    lines += [f"  FAILED {p}: {s.removeprefix('failed: ')}" for p, s in sorted(failed.items())]
    return lines


def _status(results: dict[Path, str], plan: Plan) -> int:
    """1 when a file failed, an input was left out or a ROI entry went unused; else 0."""
    failed = any(s.startswith("failed") for s in results.values())
    return 1 if failed or plan.left_out or plan.unused else 0


def run(args: argparse.Namespace) -> int:
    """Run ``roiconv apply``; returns the exit status (0 all done, 1 something failed or was left out, 2 bad
    arguments or ROI entries: nothing written, 130 interrupted by Ctrl-C)."""
    try:
        plan = plan_tasks(args)
    except (ValueError, OSError, KeyError, TypeError) as exc:  # bad inputs, ROI files or filter JSON
        print(f"roiconv apply: {'missing key ' if isinstance(exc, KeyError) else ''}{exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for t in plan.tasks:
            what = "copy unchanged" if t.spec is None else json.dumps(t.spec["roi"], separators=(",", ":"))
            print(f"{t.src} -> {t.dst}: {what}")
        for line in _details(plan, {}):
            print(line)
        print(f"dry run: {len(plan.tasks)} to write, {len(plan.skipped)} skipped, {len(plan.left_out)} left out")
        return _status({}, plan)
    from ..server.settings import load_settings

    max_pixels = load_settings().max_pixels
    t0 = time.monotonic()
    progress = Progress(len(plan.tasks))
    videos = [t for t in plan.tasks if video.is_video_task(t)]  # in this process, frame by frame
    images = [t for t in plan.tasks if not video.is_video_task(t)]
    results: dict[Path, str] = {}
    interrupted = False
    try:
        if args.server is not None:
            results.update(asyncio.run(_run_server(images, args, progress, max_pixels)))
        else:
            results.update(_run_local(images, args.workers, progress, max_pixels))
        results.update(video.run_videos(videos, args, progress, max_pixels))
    except Interrupted as stop:
        results.update(stop.results)
        interrupted = True
    finally:
        progress.close()
    print(_summary(results, plan, time.monotonic() - t0), file=sys.stderr)
    if interrupted:
        print(f"interrupted (Ctrl-C): {len(plan.tasks) - len(results)} files not started", file=sys.stderr)
        return 130
    return _status(results, plan)
