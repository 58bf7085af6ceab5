"""POST /convolve: read the form, parse the spec, admit the request, run it (:mod:`..execution`), respond."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ...imaging.codec import CONTENT_TYPES
from ...imaging.peak import Peak, request_peak
from ...imaging.pipeline import Prepared
from ...imaging.spec import ModelFilter, Spec
from ..admission import AppState, Record
from ..deps import StateDep, record_of, require_key
from ..errors import ApiError, BodyTooLarge, from_validation
from ..execution import Outcome, run
from ..metrics import Metrics
from ..openapi import FORM_SCHEMA

__all__ = ["RAW_TYPE", "convolve_router", "discard_body"]

log = logging.getLogger("roiconv.routes")

convolve_router = APIRouter(tags=["convolve"])

_CLOSE = {"Connection": "close"}


@dataclass(frozen=True)
class Form:
    """The parts of a /convolve body: image bytes, optional mask bytes, and the spec JSON text."""

    image: bytes
    mask: bytes | None
    spec: bytes


async def read_form(request: Request, state: StateDep, _key: Annotated[None, Depends(require_key)]) -> Form:
    """The multipart body, read within ROICONV_BODY_TIMEOUT_S and the request deadline (408 past either)."""
    record = record_of(request)
    s = state.settings
    with state.uploading(record, request.scope) as upload:
        timeout = max(0.0, min(s.body_timeout_s, record.started + s.request_timeout_s - time.perf_counter()))
        reader = asyncio.ensure_future(_read_form(request, s.max_spec_bytes))
        evicted = asyncio.ensure_future(upload.evicted.wait())
        try:
            await asyncio.wait((reader, evicted), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, evicted):
                task.cancel()
            await asyncio.gather(reader, evicted, return_exceptions=True)
        if reader.done() and not reader.cancelled():
            return reader.result()
        if upload.evicted.is_set():
            reason = "the body arrived too slowly and its upload slot went to another request (all were taken)"
            raise ApiError(408, "upload_too_slow", reason, "body", headers=_CLOSE)
        reason = f"the request body did not arrive within {timeout:.1f} s (ROICONV_BODY_TIMEOUT_S)"
        raise ApiError(408, "body_timeout", reason, "body", headers=_CLOSE)


FormDep = Annotated[Form, Depends(read_form)]


@convolve_router.post("/convolve", openapi_extra=FORM_SCHEMA, response_class=Response)
async def convolve(request: Request, state: StateDep, form: FormDep) -> Response:
    """Filter an image only inside its region of interest (multipart: ``image``, optional ``mask``, ``spec``; or
    the image file as an ``application/octet-stream`` body with the spec in ``X-Spec``)."""
    record = record_of(request)
    spec, peak = await asyncio.to_thread(_read_spec, form, state, record)
    timeout = min(state.settings.request_timeout_s, (spec.timeout_ms or float("inf")) / 1000)
    deadline = record.started + timeout
    async with state.admit(peak.bytes, deadline - time.perf_counter(), state.lane_for(spec)) as ticket:
        prepared, outcome, body = await run(state, spec, form.image, form.mask, deadline, peak.bands, ticket)
    return _respond(state.metrics, prepared, outcome, body)


RAW_TYPE = "application/octet-stream"
"""A /convolve body of this type is the image file itself, its spec JSON in the ``X-Spec`` header (no mask)."""


async def _read_form(request: Request, max_spec_bytes: int) -> Form:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == RAW_TYPE:
        return await _read_raw(request, max_spec_bytes)
    try:
        form = await request.form(max_files=3, max_fields=4, max_part_size=max_spec_bytes)
    except BodyTooLarge as exc:
        raise ApiError(413, "body_too_large", str(exc), "body", headers=_CLOSE) from None
    except ClientDisconnect:
        raise ApiError(499, "client_closed", "the client closed the connection during the upload") from None
    except HTTPException as exc:
        if "maximum size" in str(exc.detail):  # a text part over the limit: the spec (image and mask are files)
            reason = f"a text part is larger than {max_spec_bytes} bytes: the spec may have at most that many"
            raise ApiError(413, "spec_too_large", reason, "spec") from None
        raise ApiError(422, "invalid_request", f"unreadable multipart body: {exc.detail}", "body") from None
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(422, "invalid_request", "the body must be multipart/form-data with image and spec", "body")
    image, mask, spec = form.get("image"), form.get("mask"), form.get("spec")
    if not isinstance(image, UploadFile):
        raise ApiError(422, "invalid_request", "the image file is missing (multipart field 'image')", "image")
    if mask is not None and not isinstance(mask, UploadFile):
        raise ApiError(422, "invalid_request", "mask must be a file (multipart field 'mask')", "mask")
    if isinstance(spec, UploadFile):
        if spec.size is None or spec.size > max_spec_bytes:
            raise ApiError(413, "spec_too_large", f"spec is larger than {max_spec_bytes} bytes", "spec")
        spec = await spec.read()
    if not isinstance(spec, (str, bytes)):
        raise ApiError(422, "invalid_request", "the spec JSON is missing (multipart field 'spec')", "spec")
    spec = spec.encode("utf-8", "replace") if isinstance(spec, str) else spec
    return Form(await image.read(), (await mask.read()) if mask is not None else None, spec)


async def _read_raw(request: Request, max_spec_bytes: int) -> Form:
    """A raw body: the image file as sent (no multipart parsing, no spooled copy), the spec from ``X-Spec``."""
    spec = request.headers.get("x-spec")
    if spec is None:
        reason = f"a {RAW_TYPE} body needs its spec JSON in the X-Spec header (or send multipart/form-data)"
        raise ApiError(422, "invalid_request", reason, "spec")
    if len(spec) > max_spec_bytes:
        raise ApiError(413, "spec_too_large", f"spec is larger than {max_spec_bytes} bytes", "spec")
    try:
        image = await request.body()
    except BodyTooLarge as exc:
        raise ApiError(413, "body_too_large", str(exc), "body", headers=_CLOSE) from None
    except ClientDisconnect:
        raise ApiError(499, "client_closed", "the client closed the connection during the upload") from None
    if not image:
        raise ApiError(422, "invalid_request", "the image file is missing (the request body is empty)", "image")
    return Form(image, None, spec.encode("latin-1"))


def _read_spec(form: Form, state: AppState, record: Record) -> tuple[Spec, Peak]:
    """Off the event loop, in one hop: the spec parsed (the record labelled with its filter), the model checked,
    and the request's peak memory estimated from the image header."""
    spec = _parse_spec(form.spec)
    record.filter = "model" if isinstance(spec.filter, ModelFilter) else spec.filter.name
    _check_model(spec, state)
    return spec, request_peak(spec, form.image, form.mask, state.budget.total, state.settings.max_pixels)


def _parse_spec(text: bytes) -> Spec:
    try:
        return Spec.model_validate_json(text)
    except ValidationError as exc:
        raise from_validation(exc, "spec") from None


def _check_model(spec: Spec, state: AppState) -> None:
    if isinstance(spec.filter, ModelFilter) and spec.filter.model not in state.model_paths:
        known = ", ".join(sorted(state.model_paths)) or "none"
        raise ApiError(422, "invalid_request", f"unknown model {spec.filter.model!r} (loaded: {known})", "spec.filter")


def _respond(metrics: Metrics, prepared: Prepared, outcome: Outcome, body: bytes) -> Response:
    metrics.roi_coverage.observe(prepared.coverage)
    computed = int(round(prepared.coverage * prepared.positions))
    metrics.windows_computed.inc(computed)
    metrics.windows_skipped.inc(prepared.positions - computed)
    headers = {
        "X-ROI-Coverage": f"{prepared.coverage:.6f}",
        "X-Queue-Seconds": f"{outcome.queue_s:.6f}",
        "X-Compute-Seconds": f"{outcome.compute_s:.6f}",
        "X-Batch-Size": str(outcome.batch_size),
        "X-Device": outcome.device,
        **prepared.headers,
    }
    return Response(body, media_type=CONTENT_TYPES[prepared.format], headers=headers)


async def discard_body(request: Request, limit: int) -> None:
    """Read and drop what is left of a rejected request's body, at most ``limit`` bytes.

    Closing a connection whose unread body still sits in the socket makes the kernel reset it, and the client may
    then see the reset instead of the 429/503 it was sent; reading the rest first (no parsing) avoids that.
    """
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                return
    except Exception:  # already read, or the client went away
        return
