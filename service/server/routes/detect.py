"""POST /detect: faces found in an image (multipart ``image`` + ``spec``), as boxes, scores and landmarks."""

from __future__ import annotations

import asyncio
import functools
import time

from fastapi import APIRouter, Request
from pydantic import ValidationError

from ...imaging import codec
from ...imaging.faces.sizes import detect_bytes
from ...imaging.regions import RegionError
from ...imaging.spec import Detect
from ..deps import StateDep, record_of
from ..errors import ApiError, from_validation
from ..openapi import DETECT_SCHEMA
from .convolve import FormDep

__all__ = ["detect_router"]

detect_router = APIRouter(tags=["detect"])


@detect_router.post("/detect", openapi_extra=DETECT_SCHEMA)
async def detect(request: Request, state: StateDep, form: FormDep) -> dict:
    """Find faces (CenterFace, offline) in ``image``, optionally only ``within`` a region; the ``detect`` extra."""
    record = record_of(request)
    record.filter = "detect"
    spec, peak = await asyncio.to_thread(_read, form.spec, form.image, state.settings.max_pixels)
    deadline = record.started + state.settings.request_timeout_s
    async with state.admit(peak, deadline - time.perf_counter()):
        call = functools.partial(_find, spec, form.image, state.settings.max_pixels)
        hop = asyncio.get_running_loop().run_in_executor(state.cpu_pool, call)
        try:
            return await asyncio.wait_for(hop, max(0.0, deadline - time.perf_counter()))
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", "no result before the deadline (ROICONV_REQUEST_TIMEOUT_S)") from None


def _read(text: bytes, image: bytes, max_pixels: int) -> tuple[Detect, int]:
    """The spec, and the request's peak bytes from the image header (the decoded pixels and the detector)."""
    try:
        spec = Detect.model_validate_json(text)
    except ValidationError as exc:
        raise from_validation(exc, "spec") from None
    try:
        width, height = codec.header_size(image, codec.sniff_format(image))
    except codec.DecodeError:
        return spec, len(image)  # decoding refuses it next
    if width * height > max_pixels:
        return spec, len(image)
    return spec, len(image) + 3 * width * height * 4 + detect_bytes(width, height, spec.max_side)


def _find(spec: Detect, data: bytes, max_pixels: int) -> dict:
    from ...imaging import metadata
    from ...imaging.faces import request as faces

    try:
        image = codec.decode(data, max_pixels, field="image")
    except codec.TooLarge as exc:
        raise ApiError(413, "image_too_large", str(exc), "image") from None
    except codec.DecodeError as exc:
        raise ApiError(422, "invalid_request", str(exc), "image") from None
    pixels = metadata.upright(image.pixels, image.orientation.pending)  # boxes in the displayed frame
    try:
        found = faces.find(spec, pixels)
    except ImportError as exc:
        raise ApiError(501, "not_installed", str(exc), "spec.what") from None
    except RegionError as exc:
        raise ApiError(422, "invalid_request", str(exc), exc.field) from None
    return faces.detections(found, spec, pixels.shape[:2])
