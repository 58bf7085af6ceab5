"""Helpers for the service tests: settings without the caller's environment, an in-process client with the app's
lifespan running, image helpers, and a real uvicorn process on a loopback port."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np

from service.bench.harness import free_port
from service.server.app import create_app
from service.server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def settings(**overrides) -> Settings:
    base = {"devices": "cpu", "max_batch_delay_ms": 2.0}
    base.update(overrides)
    return Settings(_env_file=None, **base)


@asynccontextmanager
async def client_for(app, *, wait_ready: bool = True):
    """An httpx client on the app through ASGITransport, with the app's lifespan entered (workers running)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            if wait_ready:
                for _ in range(500):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("the app never became ready")
            yield client


@asynccontextmanager
async def running(**overrides):
    app = create_app(settings(**overrides))
    async with client_for(app) as client:
        yield app, client


def run(coro):
    return asyncio.run(coro)


def rand_image(h: int, w: int, c: int = 3, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        img = rng.random((h, w, c), dtype=np.float32)
    else:
        img = rng.integers(0, np.iinfo(dtype).max + 1, (h, w, c), dtype=dtype)
    return img[:, :, 0] if c == 1 else img


def smooth(h: int, w: int, c: int = 3, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    """:func:`rand_image` blurred (7x7): photo-like, so that ROI results differ from their surroundings smoothly."""
    img = cv2.GaussianBlur(rand_image(h, w, c, dtype, seed), (7, 7), 0)
    return img if c > 1 or img.ndim == 2 else img[:, :, 0]


def encode(img: np.ndarray, ext: str = ".png") -> bytes:
    if ext == ".npy":
        buf = io.BytesIO()
        np.save(buf, img)
        return buf.getvalue()
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def decode(data: bytes) -> np.ndarray:
    if data.startswith(b"\x93NUMPY"):
        return np.load(io.BytesIO(data))
    out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert out is not None, "response is not an image"
    return out


async def post(client, image: bytes, spec: dict | str, mask: bytes | None = None, headers=None) -> httpx.Response:
    files = {"image": ("image", image, "application/octet-stream")}
    if mask is not None:
        files["mask"] = ("mask", mask, "application/octet-stream")
    text = spec if isinstance(spec, str) else json.dumps(spec)
    return await client.post("/convolve", files=files, data={"spec": text}, headers=headers or {})


class ServerProcess:
    """``python -m service`` on a free loopback port, started and stopped by the test."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ROICONV_")}
        full_env.update({"ROICONV_DEVICES": "cpu", "PYTHONUNBUFFERED": "1"}, **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("server did not become ready")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        out, _ = self.proc.communicate(timeout=30)
        return out


def interrupted_apply(args: list[str], when) -> tuple[int, list[str]]:
    """Run ``python -m service apply ARGS`` and send it SIGINT at the first stderr line for which ``when(line)`` is
    true; returns (exit status, every stderr line). The communicate timeout guards against a hang, not a timing."""
    cmd = [sys.executable, "-m", "service", "apply", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if when(line):
                proc.send_signal(signal.SIGINT)
                break
        _, rest = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, lines + rest.splitlines()
