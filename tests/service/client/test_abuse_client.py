"""The standing abuse suite, the client against a misbehaving fake server on loopback: a server
that trickles, lies about sizes or sends nonsense makes every call end within the client's timeout with a
RoiconvError, never a hang, a ValueError, an httpx error or a MemoryError."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from service.client import AsyncClient, Client, RoiconvError, ServerBusy

SPEC = {"filter": {"name": "box", "ksize": 3}}


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _npy_header_only(shape: tuple[int, ...]) -> bytes:
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".encode()
    text += b" " * (64 - (10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def _head(status: str, length: int | None, extra: str = "") -> bytes:
    size = "" if length is None else f"Content-Length: {length}\r\n"
    return f"HTTP/1.1 {status}\r\n{size}{extra}Connection: close\r\n\r\n".encode()


GOOD = _npy(np.ones((2, 2, 3), np.uint8))
ANSWERS = {  # what the fake server sends back, as a list of (bytes, seconds to wait after them)
    "trickled body": [(_head("200 OK", 100), 0)] + [(b"x", 0.3)] * 100,
    "trickled head": [(bytes([c]), 0.3) for c in _head("200 OK", 0)],
    "retry-after nan": [(_head("429 Too Many Requests", 2, "Retry-After: nan\r\n") + b"{}", 0)],
    "truncated body": [(_head("200 OK", 1000) + b"\x93NUMPY", 0)],
    "npy header declaring 160 GB": [(_head("200 OK", 128) + _npy_header_only((100_000, 100_000, 4)), 0)],
    "declared 2 GiB": [(_head("200 OK", 2**31), 0)],
    "2 MiB without a length": [(_head("200 OK", None) + b"\0" * 2**21, 0)],
    "not npy": [(_head("200 OK", 5) + b"hello", 0)],
    "a good answer": [
        (_head("200 OK", len(_npy(np.ones((2, 2, 3), np.uint8)))) + _npy(np.ones((2, 2, 3), np.uint8)), 0)
    ],
}


@contextmanager
def fake_server(
    answer: list[tuple[bytes, float]], served: list | None = None, completed: list | None = None
) -> Iterator[str]:
    """A loopback server that reads each request and sends ``answer``, then closes; yields its URL. Each request
    read is appended to ``served``, each answer sent to its end to ``completed``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")), 0
            )
            while len(body) < length:
                body += conn.recv(65536)
            if served is not None:
                served.append(head)
            try:
                for chunk, pause in answer:
                    conn.sendall(chunk)
                    if stop.wait(pause):
                        return
                if completed is not None:
                    completed.append(head)
            except OSError:
                return  # the client gave up

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


FAILURES = [name for name in ANSWERS if name != "a good answer"]


TRICKLED = ("trickled body", "trickled head")  # 30 s to send: the client's 1 s deadline ends the call first


@pytest.mark.parametrize("name", FAILURES)
def test_every_misbehaviour_is_a_roiconv_error_within_the_timeout(name):
    served: list[bytes] = []
    completed: list[bytes] = []
    with fake_server(ANSWERS[name], served, completed) as url:
        client = Client(url, timeout=1.0, retries=1, max_retry_wait=0.1, max_response_bytes=2**20)
        with pytest.raises(RoiconvError) as err:
            client.convolve(b"an encoded image", SPEC)
        client.close()
        if name in TRICKLED:
            assert err.value.code == "timeout" and completed == [], (name, err.value)
    if name == "retry-after nan":  # retried after a backoff instead of sleeping NaN seconds
        assert isinstance(err.value, ServerBusy) and len(served) == 2


@pytest.mark.parametrize("name", ["trickled body", "trickled head", "npy header declaring 160 GB", "truncated body"])
def test_the_async_client_gives_up_within_its_timeout_too(name):
    async def call(url: str):
        async with AsyncClient(url, timeout=1.0, retries=0, max_response_bytes=2**20) as client:
            return await client.convolve(b"an encoded image", SPEC)

    completed: list[bytes] = []
    with fake_server(ANSWERS[name], completed=completed) as url:
        with pytest.raises(RoiconvError) as err:
            asyncio.run(call(url))
        if name in TRICKLED:
            assert err.value.code == "timeout" and completed == [], (name, err.value)


def test_a_good_answer_from_the_same_server_is_read():
    with fake_server(ANSWERS["a good answer"]) as url, Client(url, timeout=2) as client:
        out = client.convolve(b"an encoded image", SPEC)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8 and (out == 1).all()


@pytest.mark.parametrize("status", ["302 Found", "307 Temporary Redirect", "308 Permanent Redirect"])
def test_a_redirect_is_an_error_with_its_status_and_is_not_followed(status):
    served: list[bytes] = []
    answer = [(_head(status, 0, "Location: http://127.0.0.1:9/convolve\r\n"), 0)]
    with fake_server(answer, served) as url:
        with Client(url, timeout=5, api_key="secret") as client, pytest.raises(RoiconvError) as err:
            client.convolve(b"an encoded image", SPEC)

        async def call():
            async with AsyncClient(url, timeout=5) as client:
                return await client.convolve(b"an encoded image", SPEC)

        with pytest.raises(RoiconvError) as async_err:
            asyncio.run(call())
    code = int(status.split()[0])
    for e in (err.value, async_err.value):
        assert e.status == code and e.code == "redirect", e
        assert "redirects are not followed" in e.reason and "127.0.0.1:9" in e.reason, e.reason
    assert len(served) == 2  # one request each: nothing was sent to the Location
