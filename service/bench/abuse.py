"""The abuse probe (decode bombs, slow work, the upload trickle): ``python -m service.bench.abuse [--quick]``.

Starts a real server (``python -m service`` on 127.0.0.1) under the default settings, then under a 64 MiB budget
(ROICONV_MAX_INFLIGHT_BYTES), sends each bomb while a small request is sent every 0.25 s, and prints
a table: the answer's status, its wall time, the server's CPU seconds for it, its peak RSS (VmHWM, reset before
each probe) and the slowest small request meanwhile. Then: slow work against MAX_QUEUE, the 140-socket upload
trickle, and the client against a trickling fake server. Loopback only; every probe is bounded in size and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import cv2
import httpx
import numpy as np

from .bombs import crop_bypass_spec, float_tiff, png_trailing_bomb, scan_bomb, tiled_tiff
from .harness import Served, server_process
from .load import make_body, make_image
from .trickle import trickle

GAUSS = {"filter": {"name": "gaussian", "ksize": 3}}
_TICK = os.sysconf("SC_CLK_TCK")


class Server(Served):
    """A served benchmark's server, read through /proc: CPU seconds, peak and current memory."""

    def cpu_s(self) -> float:
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime

    def reset_peak(self) -> None:
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS

    def status_kib(self, key: str) -> int:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0


@contextmanager
def server(env: dict[str, str]) -> Iterator[Server]:
    with server_process({"ROICONV_DEVICES": "cpu", **env}) as served:
        yield Server(served.url, served.proc)


def _post(url: str, image: bytes, spec: dict, mask: bytes | None = None, timeout: float = 120) -> httpx.Response:
    files = {"image": ("i", image)} | ({"mask": ("m", mask)} if mask is not None else {})
    return httpx.post(url + "/convolve", files=files, data={"spec": json.dumps(spec)}, timeout=timeout)


class _Meanwhile:
    """Small requests every 0.25 s on a thread; the slowest latency and the statuses seen."""

    def __init__(self, url: str) -> None:
        self.url, self.stop, self.worst, self.statuses = url, threading.Event(), 0.0, []
        self.image = make_image(64)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.25):
            t = time.perf_counter()
            try:
                self.statuses.append(_post(self.url, self.image, GAUSS, timeout=60).status_code)
            except httpx.HTTPError:
                self.statuses.append(0)
            self.worst = max(self.worst, time.perf_counter() - t)

    def __enter__(self) -> _Meanwhile:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(70)


def probes(quick: bool) -> list[tuple[str, bytes, dict, bytes | None]]:
    """(name, image, spec, mask) for each bomb of the issue; ``quick`` scales the two slowest to build down."""
    one = cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes()
    mask = float_tiff(6324, 6324, 0.0)
    zeros_gib = 1 if quick else 8
    return [
        ("1 scan bomb: 6000² progressive, 20,000 scans", scan_bomb(6000, 6000, 20_000), GAUSS, None),
        ("2 crop bypass: 3 x 4096-pt zig-zags, 10⁶ rows", one, crop_bypass_spec(1_000_000), None),
        (f"3 PNG 1x1 + {zeros_gib} GiB zlib zeros", png_trailing_bomb(zeros_gib * 2**30), GAUSS, None),
        ("4a TIFF 1x1, one 16384x16368 tile", tiled_tiff(1, 1, 16384, 16368), GAUSS, None),
        ("4b 1x1 + 6324² float32 TIFF mask", one, GAUSS, mask),
        ("9a 65501x1 PNG as jpeg", make_png(65501, 1), {**GAUSS, "format": "jpeg"}, None),
        ("9b 3x3x31x31 kernel on 10x10", make_png(10, 10), {"filter": {"name": "kernel", "weights": _k31()}}, None),
        ("10 box of 3e38, normalize false", float_tiff(8, 8, 3e38), _box_raw(), None),
    ]


def make_png(width: int, height: int) -> bytes:
    return cv2.imencode(".png", np.zeros((height, width), np.uint8))[1].tobytes()


def _k31() -> list:
    return np.zeros((3, 3, 31, 31)).tolist()


def _box_raw() -> dict:
    return {"filter": {"name": "box", "ksize": 3, "normalize": False}}


def run_probes(srv: Server, cases) -> list[tuple]:
    small, times = make_image(64), []
    for _ in range(20):
        t = time.perf_counter()
        _post(srv.url, small, GAUSS)
        times.append(time.perf_counter() - t)
    times.sort()
    rows = [("0 a small request alone (20 sent)", 200, f"p50 {times[10]:.3f} s", "", "", f"max {times[-1]:.2f} s")]
    for name, image, spec, mask in cases:
        time.sleep(0.5)
        srv.reset_peak()
        rss = srv.status_kib("VmRSS")
        cpu = srv.cpu_s()
        with _Meanwhile(srv.url) as meanwhile:
            t = time.perf_counter()
            try:
                status = _post(srv.url, image, spec, mask).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            wall = time.perf_counter() - t
            time.sleep(0.3)
        cpu = srv.cpu_s() - cpu
        peak = (srv.status_kib("VmHWM") - rss) / 1024
        small = f"{meanwhile.worst:.2f} s ({sum(s == 200 for s in meanwhile.statuses)}/{len(meanwhile.statuses)})"
        rows.append((name, status, f"{wall:.2f} s", f"{cpu:.2f} s", f"+{peak:.0f} MiB", small))
    return rows


def slow_work(quick: bool) -> tuple:
    """Issue item 5: 8 slow requests against MAX_QUEUE=4 and a 5 s timeout; when are small ones served again?"""
    big = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (3000, 3000, 3), np.uint8))[1].tobytes()
    spec = {"filter": {"name": "median", "ksize": 5}, "timeout_ms": 5000}
    env = {"ROICONV_MAX_QUEUE": "4", "ROICONV_REQUEST_TIMEOUT_S": "5"}
    with server(env) as srv:
        results: list = []
        threads = [
            threading.Thread(target=lambda: results.append(_post(srv.url, big, spec).status_code)) for _ in range(8)
        ]
        t = time.perf_counter()
        for th in threads:
            th.start()
        time.sleep(0.5)
        small = make_image(64)
        while _post(srv.url, small, GAUSS).status_code != 200 and time.perf_counter() - t < 60:
            time.sleep(0.1)
        served_at = time.perf_counter() - t
        for th in threads:
            th.join(60)
    counts = {s: results.count(s) for s in sorted(set(results))}
    return ("5 8 slow requests, MAX_QUEUE 4, 5 s", counts, f"small served at t={served_at:.1f} s", "", "", "")


def trickle_probe(quick: bool) -> tuple:
    """Issue item 6: 140 trickling sockets (a byte every 0.5 s) and 47 other requests over 25 s."""
    body, ctype = make_body(make_image(64), GAUSS)
    with server({}) as srv:
        seconds = 10 if quick else 25
        r = asyncio.run(trickle(srv.url, body, ctype, sockets=140, requests=47, seconds=seconds))
    lat = sorted(r.latencies)
    worst = f"p50 {lat[len(lat) // 2]:.2f} s, max {lat[-1]:.2f} s"
    return ("6 140 trickling sockets, 47 requests", dict(r.statuses), f"{seconds} s", "", "", worst)


def client_probe() -> tuple:
    """Issue item 8: Client(timeout=5) against a server that sends a byte every 1.5 s."""
    from service.client import Client, RoiconvError

    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            try:
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100:
                    conn.sendall(bytes([byte]))
                    time.sleep(1.5)
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    t = time.perf_counter()
    try:
        Client(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=5).convolve(b"x", GAUSS)
        outcome = "answered"
    except RoiconvError as exc:
        outcome = f"RoiconvError {exc.code}"
    listener.close()
    return ("8 Client(timeout=5), server trickling 1 B/1.5 s", outcome, f"{time.perf_counter() - t:.2f} s", "", "", "")


def _table(rows: list[tuple]) -> str:
    head = ("probe", "status", "time", "server CPU", "peak RSS", "slowest small request (200s)")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(head, widths))]
    lines.append("-|-".join("-" * w for w in widths))
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1 GiB PNG bomb (not 8) and a 10 s trickle")
    args = parser.parse_args()
    cases = probes(args.quick)
    for label, env in [("default settings", {}), ("64 MiB budget", {"ROICONV_MAX_INFLIGHT_BYTES": str(64 * 2**20)})]:
        with server(env) as srv:
            print(f"\n## {label}\n\n{_table(run_probes(srv, cases))}", flush=True)
    print(f"\n## load and client\n\n{_table([slow_work(args.quick), trickle_probe(args.quick), client_probe()])}")


if __name__ == "__main__":
    main()
