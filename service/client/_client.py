"""A Python client for the roiconv server: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), on httpx.

Importing it needs httpx and numpy only (no FastAPI, torch or OpenCV). Arrays are (H, W) or (H, W, C) in the
server's channel order (OpenCV's: gray, BGR, BGRA), uint8, uint16 or float32.

ROI-aware transfer (the default for arrays): the client uploads only the ROI's bounding rectangle grown by the
filter's halo (``crop``), asks for only the ROI's rectangle back (``output_region: "roi"``, as npy) and pastes it
into a copy of the caller's array, so bytes and server work follow the ROI and the result equals sending the whole
image. Encoded files (bytes, paths) and requests with a mask file are sent whole; the server decodes them.
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
import struct
import time
import zlib
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import httpx
import numpy as np

from ._transport import DeadlineTransport, RoiconvError, body_cap_check, call_deadline, load_npy, transport_error

__all__ = [
    "AsyncClient",
    "Client",
    "RequestRejected",
    "RoiconvError",
    "ServerBusy",
    "ServerError",
    "crop_rect",
    "crop_request",
    "encode_png",
    "filter_halo",
    "paste_region",
    "roi_rect",
]

ImageInput = np.ndarray | bytes | str | PathLike
_RETRY_STATUSES = (429, 503)


class RequestRejected(RoiconvError):
    """A 4xx other than 429: the request itself is wrong (``field`` names what, e.g. "spec.filter.ksize")."""


class ServerBusy(RoiconvError):
    """429 or 503 still answered after every retry."""


class ServerError(RoiconvError):
    """A 5xx answer (other than 503)."""


def _error(response: httpx.Response, content: bytes) -> RoiconvError:
    try:
        body = json.loads(content)
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    code = str(body.get("error", "http_error"))
    text = bytes(content[:200]).decode("utf-8", "replace")
    reason = str(body.get("reason") or body.get("detail") or text or response.reason_phrase)
    field = body.get("field")
    status = response.status_code
    cls = ServerBusy if status in _RETRY_STATUSES else RequestRejected if status < 500 else ServerError
    return cls(status, code, field, reason)


# --- encoding without OpenCV -------------------------------------------------------------------------------------


def encode_png(pixels: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of uint8/uint16 pixels (H, W) or (H, W, C), C in 1, 3 (BGR), 4 (BGRA); numpy and zlib only.

    Every row uses PNG's "Up" filter (the byte difference with the row above), then zlib at ``level``.
    """
    a = np.asarray(pixels)
    if a.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG holds uint8 or uint16 pixels, got {a.dtype}; send float32 as npy")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"pixels must be (H, W) or (H, W, C) with C in 1, 3, 4, got shape {a.shape}")
    h, w, c = a.shape
    if c >= 3:
        a = a[:, :, [2, 1, 0, 3][:c]]  # BGR(A) → RGB(A), PNG's order
    a = np.ascontiguousarray(a, dtype=">u2" if a.dtype == np.uint16 else np.uint8)
    raw = a.reshape(h, -1).view(np.uint8)  # [H, W*C*bytes]
    rows = np.empty((h, raw.shape[1] + 1), np.uint8)  # [H, 1 + W*C*bytes]
    rows[:, 0] = 2  # filter type Up
    rows[:, 1:] = raw
    rows[1:, 1:] -= raw[:-1]  # wraps modulo 256, as PNG defines
    header = struct.pack(">IIBBBBB", w, h, 16 if a.dtype.itemsize == 2 else 8, {1: 0, 3: 2, 4: 6}[c], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows, level))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _npy(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(pixels), allow_pickle=False)
    return buf.getvalue()


def _upload(pixels: np.ndarray) -> tuple[str, bytes, str]:
    if pixels.dtype in (np.uint8, np.uint16):
        return "image.png", encode_png(pixels), "image/png"
    return "image.npy", _npy(pixels), "application/x-npy"


# --- ROI geometry --------------------------------------------------------------------------------------------------


def roi_rect(roi: dict, height: int, width: int) -> tuple[int, int, int, int] | None:
    """The bounding rectangle (x0, y0, x1, y1), x1/y1 exclusive, of a ROI object's shapes, clipped to the image.

    None when the ROI is inverted, asks for detection or gives no shapes (the whole image). May be empty (x0 >= x1)
    when the shapes lie outside the image. Ellipses are bounded by their larger axis, whatever the angle.
    """
    rects = _shape_rects(roi, height, width)
    if rects is None:
        return None
    x0, y0 = min(r[0] for r in rects), min(r[1] for r in rects)
    return x0, y0, max(r[2] for r in rects), max(r[3] for r in rects)


def _shape_rects(roi: dict, height: int, width: int) -> list[tuple[int, int, int, int]] | None:
    """Each shape's bounding rectangle clipped to the image (possibly empty); None when inverted, asking for
    detection (the faces are found on the server, anywhere in the image) or without shapes."""
    if roi.get("invert") or roi.get("detect"):
        return None
    spans: list[tuple[float, float, float, float]] = [tuple(b) for b in roi.get("boxes", [])]
    for poly in roi.get("polygons", []):
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
        spans.append((min(xs), min(ys), max(xs) + 1, max(ys) + 1))
    for cx, cy, r in roi.get("circles", []):
        spans.append((cx - r, cy - r, cx + r + 1, cy + r + 1))
    for cx, cy, ax, ay, *_ in roi.get("ellipses", []):
        r = max(abs(ax), abs(ay)) + 1
        spans.append((cx - r, cy - r, cx + r + 1, cy + r + 1))
    if not spans:
        return None
    return [
        (max(0, math.floor(x0)), max(0, math.floor(y0)), min(width, math.ceil(x1)), min(height, math.ceil(y1)))
        for x0, y0, x1, y1 in spans
    ]


def filter_halo(filt: dict | str, catalog: dict | None = None, largest: int | None = None) -> tuple[int, int] | None:
    """(hx, hy): the context pixels a filter reads around each output pixel; None when unknown (send it all).

    The server's word comes first: the catalog's ``halo`` for the filter (GET /filters, as ``{name: {...}}`` or
    ``{"filters": {name: {...}}}``), a number or a rule ``{"rule": "ksize" | "weights" | "block" | "adaptive" |
    "fixed" | "unknown", ...}`` applied to the filter's parameters (defaults from the catalog's schema). The rules
    are the server's alone: without a catalog entry the halo is unknown (None). A size "auto" follows the rule's
    ``auto`` part for ``largest``, the longer side of the ROI's largest shape (None: unknown, send it all).
    """
    filt = {"name": filt} if isinstance(filt, str) else filt
    name = filt.get("name", "")
    entry = _catalog_entry(catalog, name)
    defaults = {k: v.get("default") for k, v in entry.get("schema", {}).get("properties", {}).items()}
    params = {**{k: v for k, v in defaults.items() if v is not None}, **filt}
    halo = entry.get("halo")
    if isinstance(halo, int) and not isinstance(halo, bool):
        return halo, halo
    if isinstance(halo, dict) and "rule" in halo:
        return _rule_halo(halo, params, largest)
    return None


def _rule_halo(rule: dict, params: dict, largest: int | None = None) -> tuple[int, int] | None:
    """A halo rule applied to a filter's parameters; None when the rule or a parameter it needs is missing."""
    kind = rule.get("rule")
    try:
        size_key = "block" if kind == "block" else "ksize"
        if params.get(size_key) == "auto":
            if largest is None or not isinstance(rule.get("auto"), dict):
                return None
            params = {**params, size_key: _auto_size(rule["auto"], largest)}
        if kind == "fixed":
            return int(rule["value"]), int(rule["value"])
        if kind == "ksize":
            k = params.get("ksize", rule.get("default"))
            kx, ky = (k, k) if isinstance(k, int) else (k[0], k[1])
            least = 2 * int(rule.get("min", 0)) + 1
            return max(kx, least) // 2, max(ky, least) // 2
        if kind == "weights":
            shape = np.asarray(params["weights"]).shape
            return shape[-1] // 2, shape[-2] // 2
        if kind == "block":
            return int(params["block"]) - 1, int(params["block"]) - 1
        if kind == "adaptive":
            k = params.get("ksize") or min(31, 2 * math.ceil(3 * float(params.get("sigma_max", 3.0))) + 1)
            return k // 2, k // 2
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return None


def _auto_size(rule: dict, side: int) -> int:
    """The server's "auto" size for a shape whose longer side is ``side`` (GET /filters: halo.auto)."""
    value = float(rule["fraction"]) * side
    size = 2 * math.floor(value / 2) + 1 if rule.get("odd") else round(value)
    return min(max(size, int(rule["least"])), int(rule["most"]))


def _catalog_entry(catalog: dict | None, name: str) -> dict:
    if not catalog:
        return {}
    table = catalog.get("filters", catalog)
    entry = table.get(name) if isinstance(table, dict) else None
    return entry if isinstance(entry, dict) else {}


def crop_rect(spec: dict, height: int, width: int, catalog: dict | None = None) -> tuple[int, int, int, int] | None:
    """The smallest region to upload for ``spec``: the ROI's rectangle grown by the halo (pixelate: out to whole
    cells of the grid anchored at (0, 0)), clipped to the image; None when the whole image must be sent."""
    roi = spec.get("roi") or {}
    rect, rects = roi_rect(roi, height, width), _shape_rects(roi, height, width) or []
    largest = max((max(r[2] - r[0], r[3] - r[1]) for r in rects), default=None)
    filt = spec.get("filter") or {}
    filt = {"name": filt} if isinstance(filt, str) else filt
    halo = filter_halo(filt, catalog, largest)
    if rect is None or halo is None or rect[0] >= rect[2] or rect[1] >= rect[3]:
        return None
    x0, y0, x1, y1 = rect
    hx, hy = halo
    if filt.get("name") == "pixelate":  # whole cells of the grid anchored at (0, 0); halo = block - 1
        b = hx + 1
        x0, y0, x1, y1 = x0 // b * b, y0 // b * b, -(-x1 // b) * b, -(-y1 // b) * b
        return x0, y0, min(width, x1), min(height, y1)
    return max(0, x0 - hx), max(0, y0 - hy), min(width, x1 + hx), min(height, y1 + hy)


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
        files["mask"] = _upload(msk.astype(np.uint8) if msk.dtype == bool else msk)
    elif msk is not None:
        files["mask"] = ("mask", msk, "application/octet-stream")
    if isinstance(img, bytes):
        files["image"] = ("image", img, "application/octet-stream")
        return _Plan(files, spec, None)
    if img.ndim not in (2, 3) or img.dtype not in (np.uint8, np.uint16, np.float32):
        raise ValueError(f"image must be (H, W) or (H, W, C) uint8, uint16 or float32, got {img.shape} {img.dtype}")
    cropped = crop_request(img, spec, catalog) if roi_transfer and msk is None else None
    if cropped is None:
        files["image"] = _upload(img)
        return _Plan(files, spec, None)
    region, spec = cropped
    files["image"] = _upload(region)
    return _Plan(files, spec, img)


def crop_request(pixels: np.ndarray, spec: dict, catalog: dict | None = None) -> tuple[np.ndarray, dict] | None:
    """The region of ``pixels`` (H, W[, C]) to send and the spec with ``crop`` and ``output_region: "roi"``; None
    when the whole image should be sent (no bounded ROI, unknown halo, or a region over half the image)."""
    h, w = pixels.shape[:2]
    rect = crop_rect(spec, h, w, catalog)
    if rect is None or (rect[2] - rect[0]) * (rect[3] - rect[1]) > 0.5 * h * w:
        return None
    x0, y0, x1, y1 = rect
    crop = {"x": x0, "y": y0, "width": w, "height": h}  # the full image's size; the upload is the region
    return pixels[y0:y1, x0:x1], {**spec, "crop": crop, "output_region": "roi"}


def paste_region(
    base: np.ndarray, result: np.ndarray, rect: str, outside: str = "keep", *, inplace: bool = False
) -> np.ndarray:
    """A copy of ``base`` (H, W[, C]) with ``result`` written at ``rect`` ("x0,y0,x1,y1", the X-ROI-Rect header);
    zeros around it when ``outside`` is "zero" or the result has other channels than ``base``. ``inplace=True``
    writes into ``base`` itself when it can hold the result (same dtype and channels, outside "keep")."""
    x0, y0, x1, y1 = (int(v) for v in rect.split(","))
    zero = outside == "zero" or result.ndim != base.ndim or result.shape[2:] != base.shape[2:]
    shape = base.shape[:2] + result.shape[2:]
    if zero:
        out = np.zeros(shape, result.dtype)
    else:
        out = base if inplace and base.dtype == result.dtype else base.astype(result.dtype, copy=True)
    out[y0:y1, x0:x1] = result.reshape((y1 - y0, x1 - x0) + result.shape[2:])
    return out


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

    def _post_kwargs(self, plan: _Plan) -> dict:
        self.bytes_sent += sum(len(f[1]) for f in plan.files.values())
        return {"files": plan.files, "data": {"spec": json.dumps(plan.spec)}}

    def _file_kwargs(self, data: bytes, spec: dict | str) -> dict:
        self.bytes_sent += len(data)
        return {"files": {"image": ("image", data, "application/octet-stream")}, "data": {"spec": json.dumps(spec)}}

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
        if response.status_code >= 400:
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
        return _finish(plan, *self._request("POST", "/convolve", **self._post_kwargs(plan)))

    def convolve_file(self, data: bytes, spec: dict | str) -> tuple[bytes, dict[str, str]]:
        """Send an encoded file whole and return the server's encoded answer (in ``spec``'s format, the input's by
        default) with its headers: the server's per-file path, metadata policy included."""
        response, body = self._request("POST", "/convolve", **self._file_kwargs(data, _as_spec(spec)))
        return bytes(body), dict(response.headers)


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
        if response.status_code >= 400:
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
        response, body = await self._request("POST", "/convolve", **self._post_kwargs(plan))
        return await asyncio.to_thread(_finish, plan, response, body)

    async def convolve_file(self, data: bytes, spec: dict | str) -> tuple[bytes, dict[str, str]]:
        response, body = await self._request("POST", "/convolve", **self._file_kwargs(data, _as_spec(spec)))
        return bytes(body), dict(response.headers)
