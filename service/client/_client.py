"""A Python client for the roiconv server: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), on httpx.

Importing it needs httpx and numpy only (no FastAPI, torch or OpenCV). Arrays are (H, W) or (H, W, C) in the
server's channel order (OpenCV's: gray, BGR, BGRA), uint8, uint16 or float32.

ROI-aware transfer (the default for arrays): the client uploads only the ROI's bounding rectangle grown by the
filter's halo (``crop``), asks for only the ROI's rectangle back (``output_region: "roi"``, as npy) and pastes it
into a copy of the caller's array, so bytes and server work follow the ROI and the result equals sending the whole
image (the planning: ``_planning.py``; PNG and npy uploads: ``_upload.py``). Encoded files (bytes, paths) and
requests with a mask file are sent whole; the server decodes them.
:meth:`Client.convolve_file` sends a file and returns the server's encoded answer as it comes (``roiconv apply
--server``: the server's per-file path, metadata policy included).

Example:
    >>> from service.client import Client
    >>> with Client("http://127.0.0.1:8000") as c:  # doctest: +SKIP
    ...     out = c.convolve(image, {"filter": {"name": "gaussian", "ksize": 31},
    ...                              "roi": {"boxes": [[40, 30, 200, 120]]}})
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import httpx
import numpy as np

from ._planning import crop_request, paste_region
from ._transport import DeadlineTransport, RoiconvError, body_cap_check, call_deadline, load_npy, transport_error
from ._upload import upload_part

__all__ = [
    "AsyncClient",
    "Client",
    "RequestRejected",
    "RoiconvError",
    "ServerBusy",
    "ServerError",
]

ImageInput = np.ndarray | bytes | str | PathLike
_RETRY_STATUSES = (429, 503)
RAW_TYPE = "application/octet-stream"  # the server's raw /convolve body: the image file, the spec in X-Spec
_RAW_SPEC_BYTES = 4096  # longer specs go multipart: proxies limit a header line (nginx: 8 KB by default)


def _goes_raw(plan: _Plan, spec_json: str) -> bool:
    return set(plan.files) == {"image"} and len(spec_json) <= _RAW_SPEC_BYTES


def _multipart_only(plan: _Plan, exc: RoiconvError) -> bool:
    """Whether the raw body of ``plan`` was refused by a server that reads only multipart (one from before raw
    bodies: 422 naming the body); the call is then sent again as multipart."""
    raw = _goes_raw(plan, json.dumps(plan.spec))
    return raw and isinstance(exc, RequestRejected) and exc.status == 422 and exc.field == "body"


def _file_plan(data: bytes, spec: dict) -> _Plan:
    return _Plan({"image": ("image", data, "application/octet-stream")}, spec, None)


class RequestRejected(RoiconvError):
    """A 4xx other than 429: the request itself is wrong (``field`` names what, e.g. "spec.filter.ksize")."""


class ServerBusy(RoiconvError):
    """429 or 503 still answered after every retry."""


class ServerError(RoiconvError):
    """A 5xx answer (other than 503)."""


def _error(response: httpx.Response, content: bytes) -> RoiconvError:
    status = response.status_code
    if status < 400:  # httpx follows no redirect unless asked: a 3xx is the final answer
        where = response.headers.get("location", "elsewhere")
        reason = f"the server redirects ({status} to {where}); redirects are not followed: give the final URL"
        return RoiconvError(status, "redirect", None, reason)
    try:
        body = json.loads(content)
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    code = str(body.get("error", "http_error"))
    text = bytes(content[:200]).decode("utf-8", "replace")
    reason = str(body.get("reason") or body.get("detail") or text or response.reason_phrase)
    field = body.get("field")
    cls = ServerBusy if status in _RETRY_STATUSES else RequestRejected if status < 500 else ServerError
    return cls(status, code, field, reason)


# --- one request: what to send, how to read the answer -------------------------------------------------------------


@dataclass
class _Plan:
    files: dict
    spec: dict
    base: np.ndarray | None  # the caller's array when the answer is a rectangle to paste


def _as_spec(spec: dict | str) -> dict:
    if isinstance(spec, str):
        spec = json.loads(spec)
    if not isinstance(spec, dict) or "filter" not in spec:
        raise ValueError(
            'spec must be a dict (or JSON text) with at least a "filter", e.g. {"filter": {"name": '
            '"gaussian", "ksize": 9}, "roi": {"boxes": [[x0, y0, x1, y1]]}}'
        )
    return dict(spec)


def _read(data: ImageInput | None) -> np.ndarray | bytes | None:
    if data is None or isinstance(data, (np.ndarray, bytes)):
        return data
    if isinstance(data, (str, PathLike)):
        return Path(data).read_bytes()
    raise TypeError(f"image must be a numpy array, bytes or a path, got {type(data).__name__}")


def _plan(image: ImageInput, spec: dict | str, mask: ImageInput | None, roi_transfer: bool, catalog) -> _Plan:
    spec = {**_as_spec(spec), "format": "npy"}
    img, msk = _read(image), _read(mask)
    if isinstance(img, bytes) and img.startswith(b"\x93NUMPY"):
        img = np.load(io.BytesIO(img), allow_pickle=False)
    files: dict = {}
    if isinstance(msk, np.ndarray):
        files["mask"] = upload_part(msk.astype(np.uint8) if msk.dtype == bool else msk)
    elif msk is not None:
        files["mask"] = ("mask", msk, "application/octet-stream")
    if isinstance(img, bytes):
        files["image"] = ("image", img, "application/octet-stream")
        return _Plan(files, spec, None)
    if img.ndim not in (2, 3) or img.dtype not in (np.uint8, np.uint16, np.float32):
        raise ValueError(f"image must be (H, W) or (H, W, C) uint8, uint16 or float32, got {img.shape} {img.dtype}")
    cropped = crop_request(img, spec, catalog) if roi_transfer and msk is None else None
    if cropped is None:
        files["image"] = upload_part(img)
        return _Plan(files, spec, None)
    region, spec = cropped
    files["image"] = upload_part(region)
    return _Plan(files, spec, img)


def _finish(plan: _Plan, response: httpx.Response, body: bytearray) -> np.ndarray:
    result = load_npy(body)
    if plan.base is None:
        return result
    rect = response.headers.get("X-ROI-Rect")
    if rect is None:
        raise RoiconvError(200, "bad_response", None, "the answer to a cropped request has no X-ROI-Rect header")
    return paste_region(plan.base, result, rect, plan.spec.get("outside", "keep"))


def _retry_delay(response: httpx.Response, attempt: int, max_wait: float) -> float:
    """Retry-After in seconds when it is a finite number, else an exponential backoff; within 0..max_wait."""
    try:
        delay = float(response.headers.get("Retry-After", ""))
    except ValueError:
        delay = math.nan
    if not math.isfinite(delay):
        delay = 0.25 * 2**attempt
    return min(max(delay, 0.0), max_wait)


def _json(body: bytearray) -> dict:
    try:
        return json.loads(body)
    except ValueError:
        raise RoiconvError(200, "bad_response", None, "the answer is not JSON") from None


class _Base:
    def __init__(
        self,
        url: str,
        api_key: str | None,
        timeout: float,
        retries: int,
        max_retry_wait: float,
        roi_transfer: bool,
        max_response_bytes: int,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if not timeout > 0 or not max_response_bytes > 0:
            raise ValueError(f"timeout and max_response_bytes must be > 0, got {timeout} and {max_response_bytes}")
        self.max_response_bytes = max_response_bytes
        self.url = url.rstrip("/")
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.timeout, self.retries, self.max_retry_wait = timeout, retries, max_retry_wait
        self.roi_transfer = roi_transfer
        self.catalog: dict | None = None
        self.bytes_sent = 0  # request body bytes of the image and mask parts, over the client's life

    def _post_kwargs(self, plan: _Plan, raw: bool = True) -> dict:
        """The request: the image alone as a raw body with the spec in ``X-Spec`` when ``raw``, no mask goes with
        it and the spec is short enough for a header; else multipart."""
        self.bytes_sent += sum(len(f[1]) for f in plan.files.values())
        spec = json.dumps(plan.spec)  # ASCII: a header value
        if raw and _goes_raw(plan, spec):
            headers = {"Content-Type": RAW_TYPE, "X-Spec": spec}
            return {"content": plan.files["image"][1], "headers": headers}
        return {"files": plan.files, "data": {"spec": spec}}

    def _needs_catalog(self, spec: dict | str, image: ImageInput) -> bool:
        return self.catalog is None and self.roi_transfer and isinstance(image, np.ndarray)

    def _retry_wait(self, response: httpx.Response, attempt: int, deadline: float) -> float | None:
        """How long to wait before retrying ``response``; None when it is final (not 429/503, out of retries, or
        the wait would pass the call's deadline)."""
        if response.status_code not in _RETRY_STATUSES or attempt == self.retries:
            return None
        delay = _retry_delay(response, attempt, self.max_retry_wait)
        return delay if time.monotonic() + delay < deadline else None


class Client(_Base):
    """Blocking client. ``timeout``: seconds for a whole call (connecting, sending, retries, reading the answer);
    ``retries``: how many times a 429/503 is retried (after Retry-After, at most ``max_retry_wait`` seconds each);
    ``max_response_bytes``: the largest answer accepted; ``roi_transfer=False`` sends whole images. Every failure
    raises :class:`RoiconvError`."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        max_retry_wait: float = 10.0,
        roi_transfer: bool = True,
        max_response_bytes: int = 2**30,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, max_retry_wait, roi_transfer, max_response_bytes)
        transport = transport or DeadlineTransport()
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs) -> tuple[httpx.Response, bytearray]:
        """The final answer and its body, within the call's deadline; RoiconvError for an error answer or none."""
        with call_deadline(self.timeout) as deadline:
            try:
                for attempt in range(self.retries + 1):
                    with self.http.stream(method, path, **kwargs) as response:
                        body = bytearray()
                        body_cap_check(response, 0, self.max_response_bytes, deadline)
                        for chunk in response.iter_bytes():
                            body += chunk
                            body_cap_check(response, len(body), self.max_response_bytes, deadline)
                    wait = self._retry_wait(response, attempt, deadline)
                    if wait is None:
                        break
                    time.sleep(wait)
            except httpx.HTTPError as exc:
                raise transport_error(exc, self.timeout) from None
        if response.status_code >= 300:
            raise _error(response, body)
        return response, body

    def filters(self) -> dict:
        """GET /filters: the filter catalog."""
        return _json(self._request("GET", "/filters")[1])

    def info(self) -> dict:
        """GET /info: version, devices, settings."""
        return _json(self._request("GET", "/info")[1])

    def convolve(self, image: ImageInput, spec: dict | str, mask: ImageInput | None = None) -> np.ndarray:
        """Filter ``image`` (array, encoded bytes or a path) inside the ROI of ``spec``; returns the whole result
        as an array (H, W[, C]). Raises RequestRejected (4xx: ``field``, ``reason``), ServerBusy, ServerError."""
        if self._needs_catalog(spec, image):
            self.catalog = self.filters()
        plan = _plan(image, spec, mask, self.roi_transfer, self.catalog)
        return _finish(plan, *self._convolve(plan))

    def convolve_file(self, data: bytes, spec: dict | str) -> tuple[bytes, dict[str, str]]:
        """Send an encoded file whole and return the server's encoded answer (in ``spec``'s format, the input's by
        default) with its headers: the server's per-file path, metadata policy included."""
        response, body = self._convolve(_file_plan(data, _as_spec(spec)))
        return bytes(body), dict(response.headers)

    def _convolve(self, plan: _Plan) -> tuple[httpx.Response, bytearray]:
        try:
            return self._request("POST", "/convolve", **self._post_kwargs(plan))
        except RoiconvError as exc:
            if not _multipart_only(plan, exc):
                raise
            return self._request("POST", "/convolve", **self._post_kwargs(plan, raw=False))


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client` (same arguments and methods, awaited); safe to share between tasks."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        max_retry_wait: float = 10.0,
        roi_transfer: bool = True,
        max_response_bytes: int = 2**30,
        limits: httpx.Limits | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, max_retry_wait, roi_transfer, max_response_bytes)
        self.http = httpx.AsyncClient(
            base_url=self.url,
            headers=self.headers,
            timeout=timeout,
            limits=limits or httpx.Limits(max_connections=64),
            transport=transport,
        )
        self._catalog_lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _request(self, method: str, path: str, **kwargs) -> tuple[httpx.Response, bytearray]:
        """The final answer and its body, the whole call bounded by ``timeout``; RoiconvError otherwise."""
        deadline = time.monotonic() + self.timeout
        try:
            response, body = await asyncio.wait_for(self._attempts(method, path, deadline, kwargs), self.timeout)
        except asyncio.TimeoutError:
            raise transport_error(httpx.ReadTimeout("deadline"), self.timeout) from None
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.timeout) from None
        if response.status_code >= 300:
            raise _error(response, body)
        return response, body

    async def _attempts(self, method: str, path: str, deadline: float, kwargs: dict):
        for attempt in range(self.retries + 1):
            async with self.http.stream(method, path, **kwargs) as response:
                body = bytearray()
                body_cap_check(response, 0, self.max_response_bytes, deadline)
                async for chunk in response.aiter_bytes():
                    body += chunk
                    body_cap_check(response, len(body), self.max_response_bytes, deadline)
            wait = self._retry_wait(response, attempt, deadline)
            if wait is None:
                return response, body
            await asyncio.sleep(wait)

    async def filters(self) -> dict:
        return _json((await self._request("GET", "/filters"))[1])

    async def info(self) -> dict:
        return _json((await self._request("GET", "/info"))[1])

    async def convolve(self, image: ImageInput, spec: dict | str, mask: ImageInput | None = None) -> np.ndarray:
        if self._needs_catalog(spec, image):
            async with self._catalog_lock:
                if self.catalog is None:
                    self.catalog = await self.filters()
        plan = await asyncio.to_thread(_plan, image, spec, mask, self.roi_transfer, self.catalog)
        response, body = await self._convolve(plan)
        return await asyncio.to_thread(_finish, plan, response, body)

    async def convolve_file(self, data: bytes, spec: dict | str) -> tuple[bytes, dict[str, str]]:
        response, body = await self._convolve(_file_plan(data, _as_spec(spec)))
        return bytes(body), dict(response.headers)

    async def _convolve(self, plan: _Plan) -> tuple[httpx.Response, bytearray]:
        try:
            return await self._request("POST", "/convolve", **self._post_kwargs(plan))
        except RoiconvError as exc:
            if not _multipart_only(plan, exc):
                raise
            return await self._request("POST", "/convolve", **self._post_kwargs(plan, raw=False))
