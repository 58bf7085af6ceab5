"""What every service benchmark shares: a real server on a free loopback port, the synthetic photo, and the OpenCV
floor (what a vision engineer writes by hand: decode, blur or pixelate each box's crop with its halo, encode).

Benchmarks print ratios measured side by side in one run (ours beside the floor), never pass/fail timings.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import httpx
import numpy as np

__all__ = ["Served", "floor_call", "free_port", "photo", "serve", "server_process"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (free when asked: bind it soon)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Served:
    """A server started by :func:`server_process`: its URL and its process (for its CPU time and memory)."""

    url: str
    proc: subprocess.Popen


@contextmanager
def server_process(env: dict[str, str] | None = None, ready_s: float = 60.0) -> Iterator[Served]:
    """``python -m service serve`` on a free loopback port with the caller's ROICONV_* variables cleared and ``env``
    set; yields it once /readyz answers 200, and stops it on exit."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ROICONV_")}
    full_env.update({"ROICONV_LOG_LEVEL": "warning", **(env or {})})
    cmd = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode} before it was ready")
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not become ready in {ready_s:.0f} s")
            time.sleep(0.1)
        yield Served(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def serve(env: dict[str, str] | None = None, ready_s: float = 60.0) -> Iterator[str]:
    """:func:`server_process`, yielding only the URL."""
    with server_process(env, ready_s) as served:
        yield served.url


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth synthetic BGR photo (height, width, 3) with some texture: it compresses like a photo (a JPEG close to
    a real one's size), unlike noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return cv2.add(img, rng.integers(0, 12, (height, width, 3), dtype=np.uint8))


def floor_call(data: bytes, filt: dict, boxes: list[list[int]], ext: str, quality: int | None = None) -> bytes:
    """The OpenCV floor for one image: decode, filter each box (gaussian on the box's crop grown by the halo, or
    pixelate on whole cells anchored at (0, 0)) written back into the image, encode as ``ext`` (a JPEG at
    ``quality``, cv2's default 95 when None)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    h, w = img.shape[:2]
    for x0, y0, x1, y1 in boxes:
        if filt["name"] == "pixelate":
            b = filt["block"]
            cx0, cy0, cx1, cy1 = x0 // b * b, y0 // b * b, min(-(-x1 // b) * b, w), min(-(-y1 // b) * b, h)
            cells = img[cy0:cy1, cx0:cx1]
            small = cv2.resize(cells, (-(-(cx1 - cx0) // b), -(-(cy1 - cy0) // b)), interpolation=cv2.INTER_AREA)
            big = cv2.resize(small, (cx1 - cx0, cy1 - cy0), interpolation=cv2.INTER_NEAREST)
            img[y0:y1, x0:x1] = big[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
            continue
        k = filt["ksize"]
        r = k // 2
        t, b_, l, rr = max(y0 - r, 0), min(y1 + r, h), max(x0 - r, 0), min(x1 + r, w)
        out = cv2.GaussianBlur(img[t:b_, l:rr], (k, k), filt.get("sigma", 0))
        img[y0:y1, x0:x1] = out[y0 - t : y1 - t, x0 - l : x1 - l]
    params = [] if quality is None else [cv2.IMWRITE_JPEG_QUALITY, quality]
    return cv2.imencode(ext, img, params)[1].tobytes()
