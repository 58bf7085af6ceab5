"""JPEG in, JPEG out without decoding the whole image: the pipeline's fast path for the requests that allow it.

:func:`open_frame` says whether a request can take it — a JPEG whose blocks can be kept, written back as JPEG with
``outside: "keep"`` over the whole image, filtered by the OpenCV engine, and nothing that needs every pixel (face
detection, a mask image) — and gives the upright frame (zeros: untouched memory) the pipeline plans on as if it
were the decoded image. :func:`edit` then decodes into it only what the filter reads (each ROI piece's footprint,
:func:`.opencv_engine.footprint`, rounded out to whole MCUs), runs the filter and writes back the blocks under the
ROI that changed (:func:`.jpeg_roi.edit_frame`): one entropy decode and one entropy encode of the file, pixel work
in the windows only. Anything else decodes the whole image first, as before.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import codec, jpeg_roi, metadata
from .filters import FilterOp, build_filter, engine
from .opencv_engine import footprint
from .regions import Piece
from .spec import Spec

__all__ = ["Frame", "decode_whole", "edit", "open_frame"]

log = logging.getLogger(__name__)


@dataclass
class Frame:
    """The upright image's pixels (H, W, C) uint8, decoded only where :func:`edit` needs them, and the file with its
    EXIF orientation (:func:`.metadata.read_orientation`, the one reader)."""

    pixels: np.ndarray
    data: bytes
    orientation: int  # the one applied to the pixels (1 with ``exif: "ignore"``)
    found: metadata.Orientation  # what the file says


def open_frame(spec: Spec, data: bytes, mask: bytes | None, max_pixels: int, prefer_torch: bool) -> Frame | None:
    """The frame for a request that can skip the whole-image decode, else None (the caller decodes as before; any
    problem with the input is left to that path, which names it)."""
    if mask is not None or spec.roi.detect is not None or spec.outside != "keep" or spec.output_region != "image":
        return None
    if spec.depth != "same" or spec.format not in (None, "jpeg") or spec.border == "wrap":
        return None
    try:
        if engine(build_filter(spec.filter, spec.border).kind, prefer_torch) != "opencv":
            return None
        if codec.sniff_format(data) != "jpeg" or not jpeg_roi.available():
            return None  # before the checks: a PNG's would inflate its image data for nothing
        fmt, width, height, _ = codec.check(data, max_pixels)
        layout = jpeg_roi.read_layout(data)
    except (ValueError, TypeError):  # codec.DecodeError, TooLarge, Unsupported, a bad filter: said by the other path
        return None
    found = metadata.read_orientation(data, "jpeg")
    if spec.exif == "upright" and not (found.clean or found.value == 1):
        return None  # fail closed: viewers could turn kept blocks differently, so the pixels are written upright
    orientation = found.pending if spec.exif == "upright" else 1
    shape = (width, height) if orientation in (5, 6, 7, 8) else (height, width)
    return Frame(_zeros((*shape, len(layout.sampling))), data, orientation, found)


def _zeros(shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 array of zeros in memory of its own, mapped from the system: pages are zeroed when first touched, so
    only the windows cost anything (np.zeros took 3 ms for a 1080p frame once the allocator reused freed memory,
    which it clears first)."""
    size = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(size, 1)), np.uint8, count=size).reshape(shape)


def edit(frame: Frame, op: FilterOp, pieces: list[Piece], border: str, origin, run: Callable[[], None]) -> bytes:
    """The file with ``run``'s filtering of ``pieces`` written into the blocks under them: the pixels each piece's
    result reads are decoded into the frame first. Unsupported when libjpeg-turbo cannot transcode the file."""
    h, w = frame.pixels.shape[:2]
    reads = [footprint(op, p, border, (w, h), origin) or (0, 0, w, h) for p in pieces]
    regions = [((p.x0, p.y0, p.x1, p.y1), p.mask) for p in pieces]
    return jpeg_roi.edit_frame(frame.data, frame.pixels, reads, regions, run, frame.orientation)


def decode_whole(frame: Frame) -> None:
    """Fill the frame with the whole image decoded by OpenCV (when :func:`edit` could not run): DecodeError for a
    file OpenCV cannot decode either."""
    h, w, _ = frame.pixels.shape
    pixels = codec.decode(frame.data, h * w).pixels
    frame.pixels[...] = metadata.upright(pixels, frame.orientation).reshape(frame.pixels.shape)
