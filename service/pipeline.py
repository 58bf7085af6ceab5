"""The per-request work around the batch: decode and check everything before queueing, encode after.

Both functions run in a thread (``asyncio.to_thread``), off the event loop. Every problem with the input becomes an
:class:`~service.errors.ApiError` naming the field: 413 for images over MAX_PIXELS (from the header, before
decoding), 422 for the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

import convcore
from convcore._checks import conv_geometry

from . import codec
from .compute import Work, finish
from .errors import ApiError
from .filters import FilterOp, build_filter
from .roi import RoiError, build_mask
from .schemas import Spec

__all__ = ["Prepared", "encode_result", "prepare"]

_NEEDS = {"morph": "morph_conv2d", "adaptive": "adaptive_gaussian_blur2d"}


@dataclass
class Prepared:
    """A decoded, checked request: the filter, the work for a worker, and what the response needs."""

    op: FilterOp
    work: Work
    format: str
    coverage: float
    positions: int


def _decode(data: bytes, max_pixels: int, field: str) -> codec.Image:
    try:
        return codec.decode(data, max_pixels, field=field)
    except codec.TooLarge as exc:
        raise ApiError(413, "image_too_large", str(exc), field) from None
    except codec.DecodeError as exc:
        raise ApiError(422, "invalid_request", str(exc), field) from None


def _check_deadline(deadline: float | None, step: str) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        raise ApiError(504, "timeout", f"the deadline passed while {step} (timeout_ms / ROICONV_REQUEST_TIMEOUT_S)")


def prepare(
    spec: Spec,
    image_bytes: bytes,
    mask_bytes: bytes | None,
    max_pixels: int,
    *,
    deadline: float | None = None,
    bands: int = 1,
) -> Prepared:
    """Decode the image (and mask), rasterize the ROI, resolve the filter and check that the output can be written.

    ``deadline`` (a ``time.perf_counter()`` value) is checked after each step and while drawing the ROI (504);
    ``bands`` > 1 asks the compute to run the convolution in that many row bands (bounded working memory).
    """
    image = _decode(image_bytes, max_pixels, "image")
    _check_deadline(deadline, "decoding the image")
    mask_pixels = None if mask_bytes is None else _decode(mask_bytes, max_pixels, "mask").pixels
    _check_deadline(deadline, "decoding the mask")
    try:
        mask = build_mask(spec.roi, image.height, image.width, mask_pixels, deadline=deadline)
    except RoiError as exc:
        raise ApiError(422, "invalid_request", str(exc), exc.field) from None
    except TimeoutError:
        raise ApiError(504, "timeout", "the deadline passed while drawing the ROI") from None
    op = build_filter(spec.filter, spec.border)
    if op.kind in _NEEDS and not hasattr(convcore, _NEEDS[op.kind]):
        raise ApiError(422, "invalid_request", f"{op.name} is not available in this build of convcore", "spec.filter")
    color = 1 if image.channels == 1 else 3
    out_channels = color
    if op.kind == "mix":
        o, c = op.weight.shape[:2]
        if c != color:
            raise ApiError(
                422,
                "invalid_request",
                f"4-D weights have C={c} but the image has {color} color channel(s)",
                "spec.filter.weights",
            )
        if o != color and spec.outside == "keep" and (mask is not None):
            raise ApiError(
                422,
                "invalid_request",
                f"outside='keep' needs O = C ({color}), got O={o}; use outside='zero'",
                "spec.outside",
            )
        out_channels = o
    if op.kind != "model":
        try:
            conv_geometry((image.height, image.width), op.ksize, padding="same", padding_mode=op.padding_mode)
        except ValueError:
            raise ApiError(
                422,
                "invalid_request",
                f"the image ({image.width}x{image.height}) is too small for a {op.ksize[1]}x{op.ksize[0]} kernel "
                f"with border {spec.border!r}",
                "spec.filter.ksize",
            ) from None
    depth = "float32" if spec.depth == "float32" or image.pixels.dtype == np.float32 else image.pixels.dtype.name
    fmt = spec.format or image.format
    channels = out_channels + (1 if image.channels == 4 and out_channels == 3 else 0)
    why = codec.check_encodable(fmt, depth, channels, image.width, image.height)
    if why is not None:
        raise ApiError(422, "invalid_request", why, "spec.format" if spec.format else "spec.depth")
    coverage = 1.0 if mask is None else float(mask.mean())
    work = Work(image.pixels, mask, spec.outside, spec.depth, bands=bands)
    return Prepared(op, work, fmt, coverage, image.height * image.width * color)


def encode_result(result: np.ndarray, prepared: Prepared) -> bytes:
    """Round/saturate the float result to the output depth, put the alpha back, and encode it."""
    return codec.encode(finish(result, prepared.work), prepared.format)
