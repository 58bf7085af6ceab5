"""Edit a JPEG's pixels inside windows: one entropy decode, pixels made from the coefficients of the windows only,
the blocks under changed pixels forward-transformed and quantized with the file's own tables, one entropy encode.

:func:`edit` runs libjpeg-turbo's lossless transform (``tjTransform``, :mod:`.turbojpeg`) once: its callback is
handed every block row of every component, one component after the other, and that memory stays put for the whole
call (libjpeg keeps the file's coefficient arrays in memory); at the last row of the last component all the work
is done, before the file is written. Windows are rectangles of the stored image rounded out to whole MCUs
(:func:`windows`); each is handled in bands of about 256 rows, so temporaries follow a band, not the window:

1. ``decoded(rect, pixels)``: the band's pixels (h, w, C) uint8, BGR or gray, made from its blocks (and, for an
   upsampled component, one block of it around them: the upsampling reads the neighbouring sample) —
   :mod:`.jpeg_pixels`;
2. ``edit()``: once, after every band was decoded (a filter reads across bands);
3. ``source(rect)`` → (pixels (h, w, C) uint8, changed bool (h, w)): the band's new pixels and where they may
   differ; a block of a component is re-encoded when a pixel under it changed, every other block keeps its
   quantized coefficients bit for bit.

``rect`` is (x0, y0, x1, y1) of the stored image, clipped to the image (a band's MCU padding beyond the image's
right or bottom edge is filled by repeating the last column and row, as libjpeg's encoder pads).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from . import jpeg_pixels as px
from .jpeg_layout import JpegLayout
from .turbojpeg import Unsupported, transform

__all__ = ["BAND_ROWS", "Rect", "edit", "windows"]

log = logging.getLogger(__name__)

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
BAND_ROWS = 256
"""A window is decoded and encoded in bands of about this many rows (whole MCUs): the float32 temporaries of a band
(about 40 bytes a pixel) are freed before the next."""


def windows(rects: Sequence[Rect], layout: JpegLayout) -> list[Rect]:
    """The rectangles (stored image, exclusive ends) rounded out to whole MCUs, clipped to the MCU-padded image,
    merged until no two overlap. Empty rectangles are dropped."""
    (mw, mh), (right, bottom) = layout.mcu, layout.padded
    boxes = []
    for x0, y0, x1, y1 in rects:
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, layout.width), min(y1, layout.height)
        if x1 > x0 and y1 > y0:
            boxes.append((x0 // mw * mw, y0 // mh * mh, min(-(-x1 // mw) * mw, right), min(-(-y1 // mh) * mh, bottom)))
    merged = True
    while merged:
        merged, out = False, []
        for box in boxes:
            for i, o in enumerate(out):
                if box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3]:
                    out[i] = (min(box[0], o[0]), min(box[1], o[1]), max(box[2], o[2]), max(box[3], o[3]))
                    merged = True
                    break
            else:
                out.append(box)
        boxes = out
    return boxes


def _bands(boxes: list[Rect], layout: JpegLayout) -> list[Rect]:
    mh = layout.mcu[1]
    step = max(BAND_ROWS // mh, 1) * mh
    return [(x0, y, x1, min(y + step, y1)) for x0, y0, x1, y1 in boxes for y in range(y0, y1, step)]


Decoded = Callable[[Rect, np.ndarray], None]
Source = Callable[[Rect], tuple[np.ndarray, np.ndarray]]


def edit(
    data: bytes,
    layout: JpegLayout,
    boxes: Sequence[Rect],
    source: Source,
    *,
    decoded: Decoded | None = None,
    then: Callable[[], None] | None = None,
) -> bytes:
    """``data`` with the blocks under the pixels that ``source`` changed re-encoded (see the module's docstring).

    ``boxes`` are MCU-aligned windows of the stored image (:func:`windows`); ``decoded`` (None: nothing is decoded)
    and ``then`` run before ``source`` is asked for anything. Unsupported when libjpeg-turbo cannot transcode the
    file; an exception raised by a callback reaches the caller.
    """
    if not boxes:
        return data
    crops = _crops(boxes, layout) if decoded is not None and _decodes_crops(layout) else []
    job = _Job(layout, _bands(list(boxes), layout), decoded is not None and not crops)
    last = (len(layout.sampling) - 1, layout.blocks(len(layout.sampling) - 1)[1] - 1)
    done: list[bool] = []
    windows_px: list[np.ndarray] = []  # per box: its pixels inside the image, decoded by libjpeg from its crop

    def cropped(jpegs: list[bytes]) -> None:
        windows_px.extend(_crop_pixels(j, crop, box, layout) for j, crop, box in zip(jpegs, crops, boxes))

    def step(coeffs, x: int, y: int, w: int, h: int, c: int) -> None:
        job.collect(coeffs, x, y, w, h, c)
        if (c, y // 8) != last or done:
            return
        done.append(True)  # libjpeg passes every row of every component, component after component: all are here
        job.check_complete()
        if decoded is not None:
            for band in job.bands:
                pixels = _band_of(band, boxes, windows_px, layout) if crops else job.decode(band)
                decoded(_inside(band, layout), pixels)
        if then is not None:
            then()
        for band in job.bands:
            pixels, changed = source(_inside(band, layout))
            job.encode(band, pixels, changed)

    out = transform(data, None, step, layout.progressive, crops, cropped)
    if not done:  # fail closed: never hand back a file whose edit did not run
        raise Unsupported("libjpeg-turbo did not pass the last block row")
    log.debug("jpeg_blocks: %d band(s), re-encoded blocks per component %s", len(job.bands), job.reencoded)
    return out


_TJ_SAMPLINGS = {(1, 1), (2, 1), (2, 2), (1, 2), (4, 1)}  # the luma factors TurboJPEG names (chroma 1×1), and gray


def _decodes_crops(layout: JpegLayout) -> bool:
    """Whether the windows are decoded by libjpeg from cropped copies of the file (TurboJPEG crops the samplings it
    names); else from their coefficients here (:mod:`.jpeg_pixels`)."""
    if len(layout.sampling) == 1:
        return True
    return layout.sampling[0] in _TJ_SAMPLINGS and all(f == (1, 1) for f in layout.sampling[1:])


def _crops(boxes: Sequence[Rect], layout: JpegLayout) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) per box: the box and one MCU around it, inside the image (libjpeg's upsampling reads one
    chroma sample beyond a block, so the box's own pixels decode as in the whole image)."""
    (mw, mh), out = layout.mcu, []
    for x0, y0, x1, y1 in boxes:
        cx, cy = max(x0 - mw, 0), max(y0 - mh, 0)
        out.append((cx, cy, min(x1 + mw, layout.width) - cx, min(y1 + mh, layout.height) - cy))
    return out


def _crop_pixels(jpeg: bytes, crop: tuple[int, int, int, int], box: Rect, layout: JpegLayout) -> np.ndarray:
    """The box's pixels inside the image (h, w, C) uint8, from libjpeg's decode of its crop (OpenCV's)."""
    gray = len(layout.sampling) == 1
    flags = (cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    pixels = cv2.imdecode(np.frombuffer(jpeg, np.uint8), flags)
    cx, cy, cw, ch = crop
    if pixels is None or pixels.shape[:2] != (ch, cw):
        raise Unsupported(f"libjpeg-turbo's crop {crop} did not decode to {cw}x{ch} pixels")
    x0, y0, x1, y1 = _inside(box, layout)
    pixels = pixels[y0 - cy : y1 - cy, x0 - cx : x1 - cx]
    return pixels[:, :, None] if gray else pixels  # [h, w, C]


def _band_of(band: Rect, boxes: Sequence[Rect], pixels: list[np.ndarray], layout: JpegLayout) -> np.ndarray:
    """The band's pixels inside the image (h, w, C): a view of its box's decoded pixels."""
    x0, y0, x1, y1 = band
    i = next(i for i, b in enumerate(boxes) if b[0] <= x0 and b[1] <= y0 and x1 <= b[2] and y1 <= b[3])
    x0, y0, x1, y1 = _inside(band, layout)
    bx, by = boxes[i][:2]
    return pixels[i][y0 - by : y1 - by, x0 - bx : x1 - bx]


def _any_in_cells(mask: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """Bool (rows, cols): whether any pixel of each equal cell of ``mask`` (h, w) bool is set (a box mean in float32
    is > 0 iff one is; OpenCV's resize is 4x faster than NumPy's any over reshaped axes)."""
    return cv2.resize(mask.astype(np.float32), (cols, rows), interpolation=cv2.INTER_AREA) > 0


def _inside(rect: Rect, layout: JpegLayout) -> Rect:
    return rect[0], rect[1], min(rect[2], layout.width), min(rect[3], layout.height)


class _Job:
    """The block rows of one edit (views of libjpeg's memory, taken in the transform's first pass) and the decode
    and encode of a band from and into them."""

    def __init__(self, layout: JpegLayout, bands: list[Rect], decode: bool) -> None:
        self.layout, self.bands = layout, bands
        self.wanted = [set() for _ in layout.sampling]  # per component: the block rows to keep
        for band in bands:
            for c in range(len(layout.sampling)):
                _, by0, _, by1 = self._blocks_of(self._read_rect(band, c) if decode else band, c)
                self.wanted[c].update(range(by0, min(by1, layout.blocks(c)[1])))  # not the MCU padding rows
        self.rows: list[dict[int, tuple[int, int]]] = [{} for _ in layout.sampling]  # [c][row]: (address, cols)
        self.reencoded = [0] * len(layout.sampling)

    def collect(self, coeffs, x: int, y: int, w: int, h: int, c: int) -> None:
        if y // 8 in self.wanted[c]:
            if x != 0 or h != 8:
                raise Unsupported(f"libturbojpeg passed a {w}x{h} coefficient region at ({x}, {y}); expected a row")
            self.rows[c][y // 8] = (coeffs, w // 8)  # the address: viewed when used

    def check_complete(self) -> None:
        missing = [c for c, rows in enumerate(self.rows) if not self.wanted[c] <= rows.keys()]
        if missing:
            raise Unsupported(f"libjpeg-turbo did not pass the block rows of component(s) {missing} before the last")

    def _read_rect(self, band: Rect, c: int) -> Rect:
        """What component ``c`` decodes for a band: the band, and one block of the component around it (inside
        the padded image) when the component is upsampled (its filter reads the neighbouring sample)."""
        fx, fy = self.layout.factors(c)
        if (fx, fy) == (1, 1):
            return band
        (right, bottom), (x0, y0, x1, y1) = self.layout.padded, band
        return max(x0 - 8 * fx, 0), max(y0 - 8 * fy, 0), min(x1 + 8 * fx, right), min(y1 + 8 * fy, bottom)

    def _blocks_of(self, rect: Rect, c: int) -> Rect:
        """``rect`` (aligned to the component's blocks) in blocks of component ``c``."""
        fx, fy = self.layout.factors(c)
        return rect[0] // (8 * fx), rect[1] // (8 * fy), rect[2] // (8 * fx), rect[3] // (8 * fy)

    def _row(self, c: int, r: int) -> np.ndarray | None:
        """Block row ``r`` of component ``c`` as an array [cols, 64] int16 over libjpeg's memory (valid until the
        transform returns), or None when libjpeg did not pass it."""
        found = self.rows[c].get(r)
        if found is None:
            return None
        address, cols = found
        return np.ctypeslib.as_array((ctypes.c_short * (cols * 64)).from_address(address)).reshape(cols, 64)

    def _gather(self, c: int, block_rect: Rect) -> np.ndarray:
        """The blocks (rows, cols, 64) int16 of component ``c`` in ``block_rect``; zeros where libjpeg has none."""
        bx0, by0, bx1, by1 = block_rect
        out = np.zeros((by1 - by0, bx1 - bx0, 64), np.int16)
        for r in range(by0, by1):
            row = self._row(c, r)
            if row is not None:
                part = row[bx0:bx1]  # [cols, 64]
                out[r - by0, : len(part)] = part
        return out

    def decode(self, band: Rect) -> np.ndarray:
        """The band's pixels (inside the image) (h, w, C) uint8."""
        x0, y0, x1, y1 = _inside(band, self.layout)
        planes = []
        for c in range(len(self.layout.sampling)):
            read = self._read_rect(band, c)
            blocks = self._gather(c, self._blocks_of(read, c))  # [rows, cols, 64]
            plane = px.upsample(px.idct(blocks, self.layout.tables[c]), *self.layout.factors(c))  # [read h, w]
            planes.append(plane[y0 - read[1] : y1 - read[1], x0 - read[0] : x1 - read[0]])
        return px.to_bgr(planes)  # [h, w, C]

    def encode(self, band: Rect, pixels: np.ndarray, changed: np.ndarray) -> None:
        """Write the blocks of the band that ``changed`` (h, w) bool marks, from ``pixels`` (h, w, C) uint8 (the
        band inside the image); only the MCUs around the changed pixels are transformed."""
        x0, y0, x1, y1 = band
        h, w = pixels.shape[:2]
        if (h, w) != (y1 - y0, x1 - x0):  # the MCU padding: the last column and row repeated, as libjpeg pads
            pixels = np.pad(pixels, ((0, y1 - y0 - h), (0, x1 - x0 - w), (0, 0)), mode="edge")
            changed = np.pad(changed, ((0, y1 - y0 - h), (0, x1 - x0 - w)))
        mw, mh = self.layout.mcu
        mcus = _any_in_cells(changed, (x1 - x0) // mw, (y1 - y0) // mh)  # [MCU rows, MCU cols]
        rows, cols = np.nonzero(mcus.any(1))[0], np.nonzero(mcus.any(0))[0]
        if len(rows) == 0:
            return
        t, b, l, r = rows[0] * mh, (rows[-1] + 1) * mh, cols[0] * mw, (cols[-1] + 1) * mw  # the changed MCUs' box
        planes = px.to_ycc(pixels[t:b, l:r])
        for c, plane in enumerate(planes):
            self._encode_component(c, (x0 + l, y0 + t, x0 + r, y0 + b), plane, changed[t:b, l:r])

    def _encode_component(self, c: int, rect: Rect, plane: np.ndarray, changed: np.ndarray) -> None:
        fx, fy = self.layout.factors(c)
        bx0, by0, bx1, by1 = self._blocks_of(rect, c)
        mask = _any_in_cells(changed, bx1 - bx0, by1 - by0)  # [rows, cols]
        ncols, nrows = self.layout.blocks(c)
        mask[max(nrows - by0, 0) :] = False  # libjpeg's MCU padding blocks: never shown, not written
        mask[:, max(ncols - bx0, 0) :] = False
        if not mask.any():
            return
        blocks = px.blocks_of(px.fdct(px.downsample(plane, fx, fy), self.layout.tables[c]))  # [rows, cols, 8, 8]
        count = mask.sum(1)  # [rows] changed blocks per row; each row's are mostly one run
        first, last = mask.argmax(1), mask.shape[1] - 1 - mask[:, ::-1].argmax(1)  # [rows]
        for r, n, a, b in zip(np.flatnonzero(count).tolist(), *(v[count > 0].tolist() for v in (count, first, last))):
            row = self._row(c, by0 + r)  # [libjpeg's cols, 64]
            if b - a + 1 == n:
                row[bx0 + a : bx0 + b + 1] = blocks[r, a : b + 1].reshape(-1, 64)
            else:
                cols = np.flatnonzero(mask[r])
                row[bx0 + cols] = blocks[r, cols].reshape(-1, 64)
        self.reencoded[c] += int(count.sum())
