"""What the client reads from the network, bounded: a total deadline per call, a cap on the body, and every failure
a :class:`RoiconvError`.

httpx's timeouts are per operation: a server that sends a byte every 1.5 s never trips a 5 s read timeout. For the
blocking client, :class:`DeadlineTransport` gives every connect, read and write of a call only the time left until
that call's deadline (set by :func:`call_deadline`); the asyncio client bounds the whole call with
``asyncio.wait_for``. Bodies are read in chunks into one buffer, refused past ``max_bytes`` (from Content-Length
before reading when there is one), and npy answers are checked against their header before any array is made.
"""

from __future__ import annotations

import contextvars
import io
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpcore
import httpx
import numpy as np

__all__ = ["DeadlineTransport", "RoiconvError", "body_cap_check", "call_deadline", "load_npy", "transport_error"]

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("roiconv_deadline", default=None)


class RoiconvError(Exception):
    """Every failure of a call: an error answer from the server (``status``, ``code`` such as "invalid_request",
    ``field``, ``reason``), or, with ``status`` 0, no usable answer ("timeout", "transport_error",
    "response_too_large", "bad_response")."""

    def __init__(self, status: int, code: str, field: str | None, reason: str) -> None:
        super().__init__(f"{status} {code}" + (f" ({field})" if field else "") + f": {reason}")
        self.status, self.code, self.field, self.reason = status, code, field, reason


@contextmanager
def call_deadline(seconds: float) -> Iterator[float]:
    """Within this block, the blocking transport's network operations end by ``time.monotonic() + seconds``
    (yielded)."""
    deadline = time.monotonic() + seconds
    token = _DEADLINE.set(deadline)
    try:
        yield deadline
    finally:
        _DEADLINE.reset(token)


def _left(timeout: float | None, error: type[Exception]) -> float | None:
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> _Stream:
        timeout = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None) -> _Stream:
        timeout = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None) -> _Stream:
        timeout = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport whose connection pool reads and writes through a deadline-aware network backend."""

    def __init__(self, limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
        super().__init__(limits=limits)
        self._pool = httpcore.ConnectionPool(  # httpx's own pool, with the backend it does not let callers pass
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_Backend(),
        )


def transport_error(exc: httpx.HTTPError, timeout: float) -> RoiconvError:
    """The RoiconvError for an httpx failure: a timeout, or a broken or truncated exchange."""
    if isinstance(exc, httpx.TimeoutException):
        return RoiconvError(0, "timeout", None, f"no complete answer within the client's timeout ({timeout:g} s)")
    return RoiconvError(0, "transport_error", None, f"{type(exc).__name__}: {exc}")


def body_cap_check(response: httpx.Response, received: int, max_bytes: int, deadline: float) -> None:
    """Raise when the body (``received`` bytes so far, or its Content-Length) passes ``max_bytes``, or the call's
    deadline (a ``time.monotonic()`` value) has passed."""
    declared = response.headers.get("content-length", "")
    size = max(received, int(declared) if declared.isdigit() else 0)
    if size > max_bytes:
        reason = f"the answer is larger than max_response_bytes ({max_bytes}); raise it to accept larger images"
        raise RoiconvError(response.status_code, "response_too_large", None, reason)
    if time.monotonic() > deadline:
        raise httpx.ReadTimeout("the call's deadline passed while reading the body")


def load_npy(data: bytearray) -> np.ndarray:
    """The array of an npy answer, sharing ``data``'s memory; RoiconvError unless its header describes exactly the
    bytes that came (a header declaring 160 GB is refused before anything is allocated)."""
    if not data.startswith(b"\x93NUMPY"):
        raise RoiconvError(200, "bad_response", None, "the server did not answer with npy data")
    head = io.BytesIO(bytes(data[: 12 + 65536]))
    try:
        version = np.lib.format.read_magic(head)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(head)
    except Exception as exc:  # numpy raises ValueError and others for a malformed header
        raise RoiconvError(200, "bad_response", None, f"unreadable npy header: {type(exc).__name__}") from None
    count = math.prod(shape)
    if dtype.hasobject or len(data) - head.tell() != count * dtype.itemsize:
        reason = f"the npy header declares {shape} {dtype.str} but {len(data) - head.tell()} data bytes came"
        raise RoiconvError(200, "bad_response", None, reason)
    flat = np.frombuffer(data, dtype, count=count, offset=head.tell())
    return flat.reshape(shape, order="F" if fortran else "C")
