"""The per-request work around the batch: decode and check everything before queueing, encode after.

Both functions run in a thread (``asyncio.to_thread``), off the event loop. Every problem with the input becomes an
:class:`~service.errors.ApiError` naming the field: 413 for images over MAX_PIXELS (from the header, before
decoding), 422 for the rest.
"""

from __future__ import annotations

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

__all__ = ["Prepared", "encode_result", "prepare", "process", "region_headers"]

_NEEDS = {"morph": "morph_conv2d", "adaptive": "adaptive_gaussian_blur2d"}


@dataclass
class Prepared:
    """A decoded, checked request: the filter, the work for a worker, and what the response needs."""

    op: FilterOp
    work: Work
    format: str
    coverage: float
    positions: int
    rect: tuple[int, int, int, int] | None = None
    offset: tuple[int, int] = (0, 0)


def _decode(data: bytes, max_pixels: int, field: str) -> codec.Image:
    try:
        return codec.decode(data, max_pixels, field=field)
    except codec.TooLarge as exc:
        raise ApiError(413, "image_too_large", str(exc), field) from None
    except codec.DecodeError as exc:
        raise ApiError(422, "invalid_request", str(exc), field) from None


def prepare(spec: Spec, image_bytes: bytes, mask_bytes: bytes | None, max_pixels: int) -> Prepared:
    """Decode the image (and mask), rasterize the ROI, resolve the filter and check that the output can be written."""
    image = _decode(image_bytes, max_pixels, "image")
    mask_pixels = None if mask_bytes is None else _decode(mask_bytes, max_pixels, "mask").pixels
    roi, (ox, oy) = spec.roi, (0, 0)
    if spec.crop is not None:  # TEMP stub: shift the ROI into the crop
        c = spec.crop
        if c.x + image.width > c.width or c.y + image.height > c.height:
            raise ApiError(422, "invalid_request", "the upload does not fit in the crop's full image", "spec.crop")
        ox, oy = c.x, c.y
        roi = roi.model_copy(update={
            "boxes": [[b[0] - ox, b[1] - oy, b[2] - ox, b[3] - oy] for b in roi.boxes],
            "polygons": [[[px - ox, py - oy] for px, py in p] for p in roi.polygons],
            "circles": [[cx - ox, cy - oy, r] for cx, cy, r in roi.circles]})
    try:
        mask = build_mask(roi, image.height, image.width, mask_pixels)
    except RoiError as exc:
        raise ApiError(422, "invalid_request", str(exc), exc.field) from None
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
    why = codec.check_encodable(fmt, depth, channels)
    if why is not None:
        raise ApiError(422, "invalid_request", why, "spec.format" if spec.format else "spec.depth")
    coverage = 1.0 if mask is None else float(mask.mean())
    work = Work(image.pixels, mask, spec.outside, spec.depth)
    rect = None
    if spec.output_region == "roi":
        ys, xs = np.nonzero(mask) if mask is not None else ([0, image.height - 1], [0, image.width - 1])
        rect = (int(min(xs)), int(min(ys)), int(max(xs)) + 1, int(max(ys)) + 1) if len(xs) else (0, 0, 0, 0)
    return Prepared(op, work, fmt, coverage, image.height * image.width * color, rect, (ox, oy))


def encode_result(result: np.ndarray, prepared: Prepared) -> bytes:
    """Round/saturate the float result to the output depth, put the alpha back, and encode it."""
    out = finish(result, prepared.work)
    if prepared.rect is not None:
        x0, y0, x1, y1 = prepared.rect
        out = out[y0:y1, x0:x1]
    return codec.encode(out, prepared.format)


def region_headers(prepared: Prepared) -> dict[str, str]:
    if prepared.rect is None:
        return {}
    (x0, y0, x1, y1), (ox, oy) = prepared.rect, prepared.offset
    return {"X-ROI-Rect": f"{x0 + ox},{y0 + oy},{x1 + ox},{y1 + oy}"}


def process(spec: Spec, image_bytes: bytes, mask_bytes: bytes | None = None, *, max_pixels: int):
    """TEMP stub of the in-process path: (body, media type, headers)."""
    import torch

    from .compute import run_batch

    prepared = prepare(spec, image_bytes, mask_bytes, max_pixels)
    (result,) = run_batch(prepared.op, [prepared.work], torch.device("cpu"))
    return encode_result(result, prepared), codec.CONTENT_TYPES[prepared.format], region_headers(prepared)
