"""The checks a request passes before any filtering, on the decoded pixels: where the upload sits in the full image
(``crop``), what the filter needs of the image, and that the result can be encoded. Each problem is a
:class:`Refused` naming the field (HTTP status 413, 422 or 504 in ``status``)."""

from __future__ import annotations

import numpy as np

from . import codec
from .filters import FilterOp, piece_side, sized_op
from .regions import Piece, bounding_rect
from .spec import Spec
from .work import MAX_VALUE

__all__ = ["Refused", "bad", "check_encodable", "check_filter", "place", "whole"]


class Refused(Exception):
    """A request the pipeline refuses: ``status`` (413, 422 or 504, as HTTP), a short ``code``, the ``field`` at
    fault and a ``reason``."""

    def __init__(self, status: int, code: str, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason, self.field = status, code, reason, field


def bad(reason: str, field: str) -> Refused:
    return Refused(422, "invalid_request", reason, field)


def check_encodable(spec: Spec, fmt: str, pixels: np.ndarray, out_channels: int, pieces: list[Piece]) -> None:
    depth = "float32" if spec.depth == "float32" or pixels.dtype == np.float32 else pixels.dtype.name
    channels = out_channels + (1 if pixels.shape[2] == 4 and out_channels == 3 else 0)
    rect = bounding_rect(pieces) if spec.output_region == "roi" else None
    w, h = (pixels.shape[1], pixels.shape[0]) if rect is None else (rect[2] - rect[0], rect[3] - rect[1])
    why = codec.check_encodable(fmt, depth, channels, w, h)
    if why is not None:
        raise bad(why, "spec.format" if spec.format else "spec.depth")


def place(spec: Spec, w: int, h: int, max_pixels: int) -> tuple[int, int]:
    """Where the upload sits in the full image: (0, 0), or the crop's (x, y) once it fits its stated image (which
    must itself be within MAX_PIXELS: shapes are drawn where the full image clips them)."""
    crop = spec.crop
    if crop is None:
        return (0, 0)
    if crop.width * crop.height > max_pixels:
        raise bad(
            f"the stated full image is {crop.width}x{crop.height} = {crop.width * crop.height} pixels, more than "
            f"the limit {max_pixels}",
            "spec.crop",
        )
    if crop.x + w > crop.width or crop.y + h > crop.height:
        raise bad(
            f"the uploaded {w}x{h} image at ({crop.x}, {crop.y}) does not fit in the stated "
            f"{crop.width}x{crop.height} image: need x + {w} <= width and y + {h} <= height",
            "spec.crop",
        )
    return (crop.x, crop.y)


def check_filter(spec: Spec, op: FilterOp, pixels: np.ndarray, runs_on: str, color: int, pieces: list) -> int:
    """Check what depends on the image; returns the output's color channel count."""
    dtype = pixels.dtype
    covers_all = whole(pieces, *pixels.shape[:2])
    if op.name == "median" and dtype != np.uint8:
        sides = [piece_side(p.x0, p.y0, p.x1, p.y1) for p in pieces]
        ksize = max((sized_op(op, s).extra["ksize"] for s in sides), default=3) if op.auto else op.extra["ksize"]
        if ksize > 5:
            given = f"auto gives {ksize} for the largest ROI piece" if op.auto else str(ksize)
            raise bad(
                f"median ksize {given}: that needs an 8-bit image; {dtype.name} allows 3 or 5", "spec.filter.ksize"
            )
    if op.name == "fill":
        values = op.extra["color"]
        if len(values) not in (1, color):
            raise bad(f"color needs 1 or {color} value(s) for this image, got {len(values)}", "spec.filter.color")
        top = MAX_VALUE.get(dtype)
        if top is not None and any(v < 0 or v > top or v != int(v) for v in values):
            raise bad(
                f"color values must be integers in 0..{top:.0f} for a {dtype.name} image, got {values}",
                "spec.filter.color",
            )
    if op.kind == "mix":
        o, c = op.weight.shape[:2]
        if c != color:
            raise bad(f"4-D weights have C={c} but the image has {color} color channel(s)", "spec.filter.weights")
        if o != color and spec.outside == "keep" and not covers_all:
            raise bad(f"outside='keep' needs O = C ({color}), got O={o}; use outside='zero'", "spec.outside")
        color = o
    if runs_on == "torch" and op.kind != "model":
        from convcore import conv_geometry  # the torch engine's own rule for what fits

        h, w = pixels.shape[:2]
        try:
            conv_geometry((h, w), op.ksize, padding="same", padding_mode=op.padding_mode)
        except ValueError:
            raise bad(
                f"the image ({w}x{h}) is too small for a {op.ksize[1]}x{op.ksize[0]} kernel "
                f"with border {spec.border!r}; border 'constant' or 'replicate' works at any size",
                "spec.filter.weights" if op.name == "kernel" else "spec.filter.ksize",
            ) from None
    return color


def whole(pieces: list[Piece], h: int, w: int) -> bool:
    return len(pieces) == 1 and pieces[0].mask is None and pieces[0].area == h * w
