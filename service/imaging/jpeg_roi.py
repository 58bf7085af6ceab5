"""Edit a JPEG inside a region only: the 8×8 blocks under the changed pixels are re-encoded, every other block keeps
its quantized DCT coefficients bit for bit (the engine: :mod:`.jpeg_blocks`; the header: :mod:`.jpeg_layout`).

Three ways in, one engine:

- :func:`edit_frame` (the server and ``roiconv apply``): the image is never decoded whole. The pixels the filter
  reads (the ROI's rectangles grown by the filter's reach) are decoded from their blocks into an upright frame the
  caller allocated (untouched elsewhere), the caller's ``run`` filters the frame, and the blocks under the ROI whose
  pixels changed are encoded back.
- :func:`write_pixels`: the caller decoded and filtered the whole image already (face detection needs every pixel);
  the blocks under the regions are encoded from its pixels, nothing is decoded.
- :func:`edit_jpeg`: the same in the stored image's coordinates with a per-window callback (the benchmark's).

Decoders then see the input's pixels everywhere except in those blocks and, with subsampled chroma, one pixel around
them (the upsampling filter reads the neighbouring chroma sample). Refused with :class:`Unsupported` (the caller
re-encodes the whole image instead): CMYK/YCCK and Adobe-RGB files, 12-bit, lossless and hierarchical JPEG, and
systems without libturbojpeg. Progressive input is written progressive; a restart interval is not kept (pixels are
unaffected).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from . import jpeg_blocks
from .jpeg_blocks import Rect
from .jpeg_layout import JpegLayout, read_layout
from .turbojpeg import Unsupported, available, optimizes_huffman

__all__ = [
    "JpegLayout",
    "Unsupported",
    "available",
    "edit_frame",
    "edit_jpeg",
    "optimizes_huffman",
    "read_layout",
    "write_pixels",
]

FilterFn = Callable[[np.ndarray, tuple[int, int]], None]
Region = tuple[Rect, "np.ndarray | None"]  # a rectangle and its bool mask (y1 - y0, x1 - x0), None for all of it


def edit_jpeg(data: bytes, rects: Sequence[Rect], filter_fn: FilterFn, halo: tuple[int, int] = (0, 0)) -> bytes:
    """``data`` with ``filter_fn``'s changes written into the blocks under them, every other block kept.

    ``rects`` (x0, y0, x1, y1), exclusive ends, in the stored image's pixels, bound what ``filter_fn`` may change;
    ``halo`` (x, y) is how far outside them it reads. ``filter_fn(pixels, origin)`` gets, for each window (the
    rectangles grown by the halo, rounded out to whole MCUs, clipped to the image), its pixels (h, w, C) uint8 —
    BGR (C = 3) or gray (C = 1), writable — and its top-left corner (x, y) in the image, and writes its result in
    place. No rectangle: ``data`` is returned as it is. Unsupported when the file cannot keep its blocks.
    """
    layout = read_layout(data)
    hx, hy = halo
    boxes = jpeg_blocks.windows([(x0 - hx, y0 - hy, x1 + hx, y1 + hy) for x0, y0, x1, y1 in rects], layout)
    if not boxes:
        return data
    channels = len(layout.sampling)
    frames = {b: np.zeros((min(b[3], layout.height) - b[1], min(b[2], layout.width) - b[0], channels), np.uint8)
              for b in boxes}  # fmt: skip
    before: dict[Rect, np.ndarray] = {}

    def window_of(rect: Rect) -> tuple[Rect, np.ndarray]:
        box = next(b for b in boxes if b[0] <= rect[0] and b[1] <= rect[1] and rect[2] <= b[2] and rect[3] <= b[3])
        return box, frames[box][rect[1] - box[1] : rect[3] - box[1], rect[0] - box[0] : rect[2] - box[0]]

    def decoded(rect: Rect, pixels: np.ndarray) -> None:
        window_of(rect)[1][...] = pixels

    def run() -> None:
        for box, frame in frames.items():
            before[box] = frame.copy()
            filter_fn(frame, box[:2])

    def source(rect: Rect) -> tuple[np.ndarray, np.ndarray]:
        box, new = window_of(rect)
        old = before[box][rect[1] - box[1] : rect[3] - box[1], rect[0] - box[0] : rect[2] - box[0]]
        changed = _differs(old, new) & _rects_mask([(r, None) for r in rects], rect)
        return new, changed

    return jpeg_blocks.edit(data, layout, boxes, source, decoded=decoded, then=run)


def edit_frame(
    data: bytes,
    frame: np.ndarray,
    reads: Sequence[Rect],
    regions: Sequence[Region],
    run: Callable[[], None],
    orientation: int = 1,
) -> bytes:
    """``data`` after ``run`` filtered ``frame`` inside ``regions``, only the blocks under changed pixels re-encoded.

    ``frame`` (H, W, C) uint8 is the image turned upright by the EXIF ``orientation`` (1..8), allocated by the caller
    (e.g. ``np.zeros``): the pixels inside ``reads`` (upright rectangles, exclusive ends) are decoded into it from
    their blocks (rounded out to whole MCUs), then ``run()`` filters it, changing nothing outside ``regions``
    (upright rectangles with their bool masks); a block is re-encoded where a pixel under a region changed. Pixels
    outside the decoded windows are never read. The file keeps its stored orientation and its segments.
    """
    layout = _check_frame(data, frame, orientation)
    hu, wu = frame.shape[:2]
    boxes = jpeg_blocks.windows([_rect_to_stored(r, orientation, wu, hu) for r in reads], layout)
    placed = _placed(regions, orientation, wu, hu)
    stored = _to_stored(frame, orientation)  # [H, W, C] a view of the frame as stored
    before: dict[Rect, np.ndarray] = {}

    def decoded(rect: Rect, pixels: np.ndarray) -> None:
        x0, y0, x1, y1 = rect
        stored[y0:y1, x0:x1] = pixels
        before[rect] = pixels

    def source(rect: Rect) -> tuple[np.ndarray, np.ndarray]:
        x0, y0, x1, y1 = rect
        new = np.ascontiguousarray(stored[y0:y1, x0:x1])
        return new, _rects_mask(placed, rect) & _differs(before[rect], new)

    return jpeg_blocks.edit(data, layout, boxes, source, decoded=decoded, then=run)


def write_pixels(data: bytes, pixels: np.ndarray, regions: Sequence[Region], orientation: int = 1) -> bytes:
    """``data`` with the pixels of ``pixels`` inside ``regions`` written into the blocks under them.

    ``pixels`` (H, W, C) or (H, W) uint8 is the decoded image after an edit that changed nothing outside
    ``regions``, turned upright by the EXIF ``orientation`` (1..8; 1 when the caller did not turn it), as are the
    regions' coordinates; the file keeps its stored orientation and its EXIF. Only the masked pixels are taken.
    """
    frame = pixels if pixels.ndim == 3 else pixels[:, :, None]
    layout = _check_frame(data, frame, orientation)
    hu, wu = frame.shape[:2]
    placed = _placed(regions, orientation, wu, hu)
    boxes = jpeg_blocks.windows([r for r, _ in placed], layout)
    stored = _to_stored(frame, orientation)  # [H, W, C] as stored

    def source(rect: Rect) -> tuple[np.ndarray, np.ndarray]:
        x0, y0, x1, y1 = rect
        return np.ascontiguousarray(stored[y0:y1, x0:x1]), _rects_mask(placed, rect)

    return jpeg_blocks.edit(data, layout, boxes, source)


def _check_frame(data: bytes, frame: np.ndarray, orientation: int) -> JpegLayout:
    layout = read_layout(data)
    h, w = frame.shape[:2]
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    if (w, h) != (layout.width, layout.height):
        raise Unsupported(f"pixels of {w}x{h} (as stored) for a {layout.width}x{layout.height} JPEG")
    if frame.shape[2] != len(layout.sampling) or frame.dtype != np.uint8:
        raise Unsupported(f"{frame.shape[2]}-channel {frame.dtype} pixels for a {len(layout.sampling)}-component JPEG")
    return layout


def _placed(regions: Sequence[Region], orientation: int, wu: int, hu: int) -> list[Region]:
    """The regions in the stored image's coordinates."""
    return [(_rect_to_stored(rect, orientation, wu, hu), None if m is None else _to_stored(m, orientation))
            for rect, m in regions]  # fmt: skip


def _rects_mask(placed: Sequence[Region], rect: Rect) -> np.ndarray:
    """Bool (h, w) over ``rect``: the pixels inside a region."""
    ox, oy, ex, ey = rect
    out = np.zeros((ey - oy, ex - ox), bool)
    for (x0, y0, x1, y1), mask in placed:
        cx0, cy0, cx1, cy1 = max(x0, ox), max(y0, oy), min(x1, ex), min(y1, ey)
        if cx0 < cx1 and cy0 < cy1:
            part = out[cy0 - oy : cy1 - oy, cx0 - ox : cx1 - ox]
            part |= True if mask is None else mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return out


def _differs(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Bool (h, w): where the (h, w, C) uint8 images differ in any channel."""
    diff = cv2.absdiff(old, new)
    if diff.ndim == 3 and diff.shape[2] > 1:
        diff = functools.reduce(cv2.max, cv2.split(diff))
    return diff.reshape(old.shape[:2]) != 0


def _to_stored(a: np.ndarray, value: int) -> np.ndarray:
    """The inverse of EXIF orientation ``value`` applied to ``a`` (H, W, ...) (a view): undo the flip, then the
    transpose (metadata.upright transposes first, then flips)."""
    if value in (2, 6):
        a = a[:, ::-1]
    elif value in (3, 7):
        a = a[::-1, ::-1]
    elif value in (4, 8):
        a = a[::-1]
    return a.swapaxes(0, 1) if value in (5, 6, 7, 8) else a


def _rect_to_stored(rect: Rect, value: int, wu: int, hu: int) -> Rect:
    """``rect`` of the upright image (wu × hu) in the stored image's coordinates (see :func:`_to_stored`)."""
    x0, y0, x1, y1 = rect
    if value in (2, 3, 6, 7):
        x0, x1 = wu - x1, wu - x0
    if value in (3, 4, 7, 8):
        y0, y1 = hu - y1, hu - y0
    return (y0, x0, y1, x1) if value in (5, 6, 7, 8) else (x0, y0, x1, y1)
