"""Lanes benchmark: ``python -m service.bench.lanes [--detectors 8] [--seconds 20] [--baseline PATH]``.

Small requests beside face detection on a real server: ``--detectors`` clients post POST /detect (a 1280×720 photo)
back to back while one client posts small POST /convolve requests (a 64×64 PNG, box filter 5, whole image); the
small requests' p50/p99 latency and status counts are printed, and beside them the same small request on the idle
server (the floor). ``--baseline PATH`` also starts the server from the source tree at PATH (for instance a checkout
of the previous commit) and measures it the same way in the same run, the two servers alternating, each fresh.

Needs the detect extra. Loopback only; prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

from .harness import photo, serve
from .load import Result, make_body

SMALL_SPEC = {"filter": {"name": "box", "ksize": 5}}
DETECT_SPEC = {"what": "faces"}


def small_body() -> tuple[bytes, str]:
    rng = np.random.default_rng(0)
    image = cv2.imencode(".png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))[1].tobytes()
    return make_body(image, SMALL_SPEC)


def detect_body() -> tuple[bytes, str]:
    image = cv2.imencode(".jpg", photo(1280, 720))[1].tobytes()
    return make_body(image, DETECT_SPEC)


async def _loop(client: httpx.AsyncClient, path: str, body: tuple[bytes, str], until: float, out: Result) -> None:
    while time.perf_counter() < until:
        t = time.perf_counter()
        try:
            r = await client.post(path, content=body[0], headers={"content-type": body[1]})
            status = str(r.status_code)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        out.statuses[status] = out.statuses.get(status, 0) + 1
        if status == "200":
            out.latencies.append(time.perf_counter() - t)


async def mixed(url: str, detectors: int, seconds: float) -> tuple[Result, Result, Result]:
    """(small alone, small beside ``detectors`` detecting clients, the detections) on the server at ``url``."""
    small, detect = small_body(), detect_body()
    alone, beside, found = Result(), Result(), Result()
    limits = httpx.Limits(max_connections=detectors + 2)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        await _loop(client, "/convolve", small, time.perf_counter() + min(3.0, seconds / 4), alone)
        until = time.perf_counter() + seconds
        loops = [_loop(client, "/detect", detect, until, found) for _ in range(detectors)]
        await asyncio.gather(_loop(client, "/convolve", small, until, beside), *loops)
    return alone, beside, found


def _row(label: str, alone: Result, beside: Result, found: Result) -> str:
    ms = [x.pct(q) * 1000 for x in (alone, beside) for q in (50, 99)]
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(beside.statuses.items()))
    return (
        f"| {label} | {ms[0]:.1f} / {ms[1]:.1f} | {ms[2]:.1f} / {ms[3]:.1f} | {statuses} | "
        f"{found.ok} ({', '.join(f'{k}: {v}' for k, v in sorted(found.statuses.items()))}) |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.bench.lanes", description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", type=int, default=8, help="clients posting /detect back to back")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the mixed load lasts, per server")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each server once per round")
    parser.add_argument("--baseline", default=None, help="source tree of the server to compare with (PYTHONPATH)")
    args = parser.parse_args(argv)
    if not (1 <= args.detectors <= 64 and 1 <= args.seconds <= 600 and 1 <= args.rounds <= 10):
        parser.error("need 1 <= detectors <= 64, 1 <= seconds <= 600, 1 <= rounds <= 10")
    # PYTHONSAFEPATH: the working folder is not put before PYTHONPATH, so each server runs its own tree
    servers = [("this tree", {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PYTHONSAFEPATH": "1"})]
    if args.baseline is not None:
        servers.insert(0, ("baseline", {"PYTHONPATH": os.path.abspath(args.baseline), "PYTHONSAFEPATH": "1"}))
    print(f"{os.cpu_count()} cores; {args.detectors} clients detecting on a 1280x720 photo for {args.seconds:.0f} s\n")
    print("| server | small alone p50 / p99 ms | small beside detections p50 / p99 ms | small statuses | detections |")
    print("|---|---|---|---|---|")
    for _ in range(args.rounds):
        for label, env in servers:
            with serve({"ROICONV_DEVICES": "cpu", **env}) as url:
                print(_row(label, *asyncio.run(mixed(url, args.detectors, args.seconds))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
