"""Edit a JPEG inside a region only: the 8×8 blocks whose pixels change are re-encoded, every other block keeps its
quantized DCT coefficients bit for bit.

The entropy-coded data is decoded to coefficients and written back by libjpeg-turbo's lossless transform
(``tjTransform`` of the TurboJPEG API, loaded from the system's ``libturbojpeg``), the way ``jpegtran`` copies a file:
same quantization tables, same sampling factors, the APPn and COM segments (EXIF, ICC, XMP) copied.

:func:`edit_jpeg` decodes pixels from the coefficients of the windows only (two transforms share one entropy decode:
the first, without output, hands over the windows' blocks; the second writes the file): each window is the ROI's
rectangle grown by the filter's halo and rounded out to whole MCUs. Inverse DCT (float), upsampling (libjpeg-turbo's
integer "fancy" filter for 2× factors) and YCbCr → BGR (libjpeg's fixed point) give 97% of values equal to libjpeg's
decode, the rest within 3 levels. :func:`write_pixels` (the server and ``roiconv apply``, which decoded the image
anyway) takes the new pixels from the caller and decodes nothing. Either way a block of a component is re-encoded
(BGR → YCbCr, box downsampling, forward DCT, quantization with the file's own table) only when a pixel under it
changed; decoders then
see the input's pixels everywhere except in those blocks and, with subsampled chroma, one pixel around them (the
upsampling filter reads the neighbouring chroma sample). Cost follows the ROI: outside the windows nothing is
transformed, only entropy-decoded and re-encoded in C.

Refused with :class:`Unsupported` (the caller re-encodes the whole image instead): CMYK/YCCK and Adobe-RGB files,
12-bit, lossless and hierarchical JPEG, and systems without libturbojpeg. Progressive input is written progressive;
a restart interval is not kept (pixels are unaffected).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .codec import jpeg_segments
from .turbojpeg import Unsupported, available, optimizes_huffman, transform

__all__ = [
    "JpegLayout",
    "Unsupported",
    "available",
    "edit_jpeg",
    "optimizes_huffman",
    "read_layout",
    "write_pixels",
]

log = logging.getLogger(__name__)

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
FilterFn = Callable[[np.ndarray, tuple[int, int]], None]

_ZIGZAG = np.array(
    [0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21]
    + [28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60]
    + [61, 54, 47, 55, 62, 63]
)  # natural (row-major) index of the k-th coefficient in zigzag order
_K = np.arange(8)
_DCT = np.sqrt(np.where(_K == 0, 1 / 8, 2 / 8))[:, None] * np.cos((2 * _K[None, :] + 1) * _K[:, None] * np.pi / 16)
"""The orthonormal 8-point DCT-II matrix [u, x]: JPEG's 2-D DCT of a block B is _DCT @ B @ _DCT.T."""
_SOF_OK = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}
_SOF_REFUSED = {0xC3: "lossless", 0xC5: "hierarchical", 0xC6: "hierarchical", 0xC7: "hierarchical"}
_SOF_REFUSED |= {0xC9: "arithmetic-coded", 0xCA: "arithmetic-coded", 0xCB: "lossless", 0xCD: "hierarchical"}
_SOF_REFUSED |= {0xCE: "hierarchical", 0xCF: "lossless"}


@dataclass(frozen=True)
class JpegLayout:
    """What the block edit needs from a JPEG's header.

    ``sampling`` [(h, v)] per component (the luma's is the largest), ``tables`` the quantization table of each
    component (int32 [8, 8], natural order), ``mcu`` (width, height) in pixels.
    """

    width: int
    height: int
    sampling: tuple[tuple[int, int], ...]
    tables: tuple[np.ndarray, ...]
    progressive: bool

    @property
    def mcu(self) -> tuple[int, int]:
        return 8 * max(h for h, _ in self.sampling), 8 * max(v for _, v in self.sampling)

    def factors(self, c: int) -> tuple[int, int]:
        """(x, y) pixels per sample of component ``c``."""
        (mw, mh), (h, v) = self.mcu, self.sampling[c]
        return mw // (8 * h), mh // (8 * v)


def read_layout(data: bytes) -> JpegLayout:
    """The frame header and quantization tables of ``data``; Unsupported for what the block edit cannot keep."""
    tables: dict[int, np.ndarray] = {}
    frame = None
    adobe_transform, jfif = None, False
    try:
        for marker, pos, length in _segments(data):
            body = data[pos + 4 : pos + 2 + length]
            if marker == 0xDA:
                break
            if marker == 0xDB:
                tables |= _dqt(body)
            elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
                adobe_transform = body[11]
            elif marker == 0xE0 and body.startswith(b"JFIF\x00"):
                jfif = True
            elif marker in _SOF_REFUSED:
                raise Unsupported(f"{_SOF_REFUSED[marker]} JPEG (SOF{marker - 0xC0}) cannot be edited block by block")
            elif marker in _SOF_OK:
                frame = (marker, body)
    except (struct.error, IndexError) as exc:
        raise Unsupported(f"unreadable JPEG header ({type(exc).__name__})") from None
    if frame is None:
        raise Unsupported("no frame header (SOF) before the first scan")
    return _layout(frame, tables, adobe_transform, jfif)


def _segments(data: bytes):
    try:
        yield from jpeg_segments(data)
    except ValueError as exc:
        raise Unsupported(f"unreadable JPEG header ({exc})") from None


def _dqt(body: bytes) -> dict[int, np.ndarray]:
    tables, pos = {}, 0
    while pos < len(body):
        precision, tid = body[pos] >> 4, body[pos] & 15
        n = 128 if precision else 64
        values = np.frombuffer(body[pos + 1 : pos + 1 + n], ">u2" if precision else "u1").astype(np.int32)
        if values.size != 64:
            raise Unsupported("unreadable JPEG header: truncated quantization table (DQT)")
        table = np.empty(64, np.int32)
        table[_ZIGZAG] = values
        tables[tid] = table.reshape(8, 8)
        pos += 1 + n
    return tables


def _layout(frame: tuple[int, bytes], tables: dict[int, np.ndarray], adobe: int | None, jfif: bool) -> JpegLayout:
    marker, body = frame
    precision, height, width, count = struct.unpack(">BHHB", body[:6])
    if precision != 8:
        raise Unsupported(f"{precision}-bit JPEG: only 8-bit samples can be edited block by block")
    if count == 4:
        raise Unsupported("CMYK/YCCK JPEG: the service filters BGR pixels; a 4-component file cannot keep its blocks")
    if count not in (1, 3):
        raise Unsupported(f"JPEG with {count} components: expected 1 (grayscale) or 3 (YCbCr)")
    if count == 3 and adobe == 0:
        raise Unsupported("RGB-coded JPEG (Adobe transform 0): only YCbCr colour JPEGs can be edited block by block")
    if count == 3 and adobe is None and not jfif and bytes(body[6:15:3]) == b"RGB":  # libjpeg's rule, no marker
        raise Unsupported("RGB-coded JPEG (component ids 'R', 'G', 'B'): only YCbCr JPEGs can be edited block by block")
    sampling, qts = [], []
    for i in range(count):
        _, hv, tq = body[6 + 3 * i : 9 + 3 * i]
        if tq not in tables:
            raise Unsupported(f"component {i} uses quantization table {tq}, which the file does not define")
        sampling.append((hv >> 4, hv & 15) if count > 1 else (1, 1))
        qts.append(tables[tq])
    hmax, vmax = max(h for h, _ in sampling), max(v for _, v in sampling)
    if any(hmax % h or vmax % v for h, v in sampling):
        raise Unsupported(f"sampling factors {sampling} are not integer ratios")
    return JpegLayout(width, height, tuple(sampling), tuple(qts), marker == 0xC2)


# --- windows, pixels and blocks ---------------------------------------------------------------------------------------


def _windows(rects: Sequence[Rect], halo: tuple[int, int], layout: JpegLayout) -> list[Rect]:
    """The rectangles grown by ``halo`` (x, y), rounded out to whole MCUs, clipped to the MCU-padded image, merged
    until no two overlap (each window is then decoded, filtered and re-encoded on its own)."""
    (mw, mh), (hx, hy) = layout.mcu, halo
    right, bottom = -(-layout.width // mw) * mw, -(-layout.height // mh) * mh
    boxes = []
    for x0, y0, x1, y1 in rects:
        if x1 <= x0 or y1 <= y0:
            continue
        gx0, gy0 = max(x0 - hx, 0) // mw * mw, max(y0 - hy, 0) // mh * mh
        gx1, gy1 = min(-(-(x1 + hx) // mw) * mw, right), min(-(-(y1 + hy) // mh) * mh, bottom)
        boxes.append((gx0, gy0, gx1, gy1))
    merged = True
    while merged:
        merged, out = False, []
        for box in boxes:
            for i, other in enumerate(out):
                if box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]:
                    out[i] = (*np.minimum(box[:2], other[:2]).tolist(), *np.maximum(box[2:], other[2:]).tolist())
                    merged = True
                    break
            else:
                out.append(box)
        boxes = out
    return boxes


def _block_rect(window: Rect, layout: JpegLayout, c: int) -> Rect:
    """The window in blocks of component ``c``: (bx0, by0, bx1, by1)."""
    fx, fy = layout.factors(c)
    return window[0] // (8 * fx), window[1] // (8 * fy), window[2] // (8 * fx), window[3] // (8 * fy)


def _idct(blocks: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Samples (rows*8, cols*8) int16 of quantized blocks (rows, cols, 8, 8), rounded and clamped as libjpeg does."""
    rows, cols = blocks.shape[:2]
    pixels = _DCT32.T @ (blocks * table).astype(np.float32) @ _DCT32  # [rows, cols, y, x]
    pixels = pixels.transpose(0, 2, 1, 3).reshape(rows * 8, cols * 8)
    return np.clip(np.rint(pixels + 128), 0, 255).astype(np.int16)


def _fdct(samples: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Quantized blocks (rows, cols, 8, 8) int16 of float32 samples (rows*8, cols*8) in 0..255."""
    rows, cols = samples.shape[0] // 8, samples.shape[1] // 8
    blocks = (samples - 128).reshape(rows, 8, cols, 8).transpose(0, 2, 1, 3)  # [rows, cols, y, x]
    return np.rint(_DCT32 @ blocks @ _DCT32.T / table).astype(np.int16)  # [rows, cols, v, u]


def _shifted(x: np.ndarray, axis: int, step: int) -> np.ndarray:
    """``x`` moved by one sample along ``axis`` (step -1: each sample sees its predecessor), the edge repeated."""
    out = np.empty_like(x)
    src, dst = [slice(None)] * 2, [slice(None)] * 2
    src[axis], dst[axis] = (slice(0, -1), slice(1, None)) if step < 0 else (slice(1, None), slice(0, -1))
    out[tuple(dst)] = x[tuple(src)]
    edge = [slice(None)] * 2
    edge[axis] = slice(0, 1) if step < 0 else slice(-1, None)
    out[tuple(edge)] = x[tuple(edge)]
    return out


def _interleave(even: np.ndarray, odd: np.ndarray, axis: int) -> np.ndarray:
    shape = list(even.shape)
    shape[axis] *= 2
    out = np.empty(shape, even.dtype)
    at = [slice(None)] * 2
    at[axis] = slice(0, None, 2)
    out[tuple(at)] = even
    at[axis] = slice(1, None, 2)
    out[tuple(at)] = odd
    return out


def _upsample(samples: np.ndarray, fx: int, fy: int) -> np.ndarray:
    """libjpeg-turbo's upsampling in its integer arithmetic: the triangle ("fancy") filter for 2× factors
    (h2v1, h1v2: (3·near + far + 1 or 2) >> 2; h2v2: column sums, then (3·near + far + 8 or 7) >> 4), replication
    for other factors. ``samples`` int16 (rows, cols)."""
    if (fx, fy) == (2, 2):
        near = 3 * samples
        cols = _interleave(near + _shifted(samples, 0, -1), near + _shifted(samples, 0, 1), 0)  # column sums
        near = 3 * cols
        return _interleave((near + _shifted(cols, 1, -1) + 8) >> 4, (near + _shifted(cols, 1, 1) + 7) >> 4, 1)
    for axis, f in ((0, fy), (1, fx)):
        if f == 2 and fx * fy == 2:
            near = 3 * samples
            samples = _interleave(
                (near + _shifted(samples, axis, -1) + 1) >> 2, (near + _shifted(samples, axis, 1) + 2) >> 2, axis
            )
        elif f > 1:
            samples = np.repeat(samples, f, axis)
    return samples


def _fix(v: float) -> int:
    return int(v * 65536 + 0.5)


_TO_YCC = np.array(
    [[0.114, 0.587, 0.299, 0], [0.5, -0.331264, -0.168736, 128], [-0.081312, -0.418688, 0.5, 128]], np.float32
)  # BGR → (Y, Cb, Cr), as libjpeg's rgb_ycc_convert
_DCT32 = _DCT.astype(np.float32)


def _to_bgr(planes: list[np.ndarray]) -> np.ndarray:
    """libjpeg's YCbCr → RGB in its 16-bit fixed point (jdcolor.c's tables, computed), as BGR (H, W, 3) uint8;
    gray (H, W, 1) as it is."""
    if len(planes) == 1:
        return planes[0][:, :, None].astype(np.uint8)
    y = planes[0].astype(np.int32)
    cb, cr = planes[1].astype(np.int32) - 128, planes[2].astype(np.int32) - 128
    half = 1 << 15
    b = y + ((_fix(1.772) * cb + half) >> 16)
    g = y + ((-_fix(0.34414) * cb - _fix(0.71414) * cr + half) >> 16)
    r = y + ((_fix(1.402) * cr + half) >> 16)
    return cv2.merge([np.clip(p, 0, 255).astype(np.uint8) for p in (b, g, r)])  # [H, W, 3]


def _to_ycc(pixels: np.ndarray) -> list[np.ndarray]:
    """float32 planes (Y, Cb, Cr, or gray) of BGR or gray pixels (H, W, C) uint8."""
    if pixels.shape[2] == 1:
        return [pixels[:, :, 0].astype(np.float32)]
    image = pixels.astype(np.float32)
    return [cv2.transform(image, _TO_YCC[c : c + 1]) for c in range(3)]  # 3 × [H, W]


def _decode(coefs: list[np.ndarray], layout: JpegLayout) -> np.ndarray:
    """BGR or gray pixels (h, w, C) uint8 of one window from its components' quantized blocks."""
    planes = [_upsample(_idct(blocks, layout.tables[c]), *layout.factors(c)) for c, blocks in enumerate(coefs)]
    return _to_bgr(planes)


def _diff(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """float32 (H, W), non-zero where the (H, W, C) uint8 images differ."""
    diff = cv2.absdiff(old, new)
    return (cv2.transform(diff, np.ones((1, 3))) if diff.ndim == 3 and diff.shape[2] == 3 else diff).astype(np.float32)


def _encode(new: np.ndarray, changed: np.ndarray, inside: tuple[int, int], layout: JpegLayout) -> list[tuple]:
    """Per component (quantized blocks or None, changed (rows, cols) bool) for a window's new pixels.

    ``inside`` (w, h) is the part of the window inside the image; beyond it ``new`` is replaced by its last column
    and row, as libjpeg pads an image to whole blocks. ``changed`` float32 (window), non-zero where a pixel
    changed: a block is re-encoded when a pixel under it changed.
    """
    w, h = inside
    padded = cv2.copyMakeBorder(new[:h, :w], 0, new.shape[0] - h, 0, new.shape[1] - w, cv2.BORDER_REPLICATE)
    out = []
    for c, plane in enumerate(_to_ycc(padded.reshape(new.shape))):
        fx, fy = layout.factors(c)
        rows, cols = plane.shape[0] // fy, plane.shape[1] // fx
        samples = plane if (fx, fy) == (1, 1) else cv2.resize(plane, (cols, rows), interpolation=cv2.INTER_AREA)
        blocks = cv2.resize(changed, (cols // 8, rows // 8), interpolation=cv2.INTER_AREA) > 0  # [rows/8, cols/8]
        out.append((_fdct(samples, layout.tables[c]) if blocks.any() else None, blocks))
    return out


def edit_jpeg(data: bytes, rects: Sequence[Rect], filter_fn: FilterFn, halo: tuple[int, int] = (0, 0)) -> bytes:
    """``data`` with ``filter_fn``'s changes written into the blocks under them, every other block kept.

    ``rects`` (x0, y0, x1, y1), exclusive ends, in the stored image's pixels, bound what ``filter_fn`` may change;
    ``halo`` (x, y) is how far outside them it reads. ``filter_fn(pixels, origin)`` gets, for each window (the
    rectangles grown by the halo, rounded out to whole MCUs, clipped to the image), its pixels (h, w, C) uint8 —
    BGR (C = 3) or gray (C = 1), writable — and its top-left corner (x, y) in the image, and writes its result in
    place. No rectangle: ``data`` is returned as it is. Unsupported when the file cannot keep its blocks.
    """
    layout = read_layout(data)
    windows = _windows(rects, halo, layout)
    if not windows:
        return data
    edit = _Edit(layout, windows, filter_fn=filter_fn)
    out = transform(data, edit.read, edit.write, layout.progressive)
    log.debug("jpeg_roi: %d window(s), re-encoded blocks per component %s", len(windows), edit.reencoded)
    return out


Source = Callable[[Rect, tuple[int, int]], tuple[np.ndarray, np.ndarray]]


class _Edit:
    """The coefficient callbacks of one edit: ``read`` keeps the blocks of each window and of one MCU around it
    (the upsampling's context), ``write`` replaces the changed ones, computing every window at its first call (once
    all components have been read). A window's new pixels come from ``filter_fn`` over its decoded pixels, or from
    ``source(window, inside)`` → (pixels (window's h, w, C) uint8, changed float32 (h, w)) without decoding."""

    def __init__(
        self, layout: JpegLayout, windows: list[Rect], filter_fn: FilterFn | None = None, source: Source | None = None
    ) -> None:
        self.layout, self.windows, self.filter_fn, self.source = layout, windows, filter_fn, source
        mw, mh = layout.mcu
        padded = (-(-layout.width // mw) * mw, -(-layout.height // mh) * mh)
        self.reads = [(max(x0 - mw, 0), max(y0 - mh, 0), min(x1 + mw, padded[0]), min(y1 + mh, padded[1]))
                      for x0, y0, x1, y1 in windows] if source is None else []  # fmt: skip
        self.read_rows = _spans(self.reads, layout)
        self.write_rows = _spans(windows, layout)
        self.coefs = [
            [np.zeros((by1 - by0, bx1 - bx0, 8, 8), np.int16) for bx0, by0, bx1, by1 in _component_rects(r, layout)]
            for r in self.reads
        ]  # [window][component]: [rows, cols, 8, 8]
        self.new: list[list[tuple] | None] = [None] * len(windows)  # computed at a window's first row, then kept
        self.reencoded = [0] * len(layout.sampling)

    def read(self, coeffs, x: int, y: int, w: int, h: int, c: int) -> None:
        spans = self.read_rows[c].get(y // 8)
        if spans:
            blocks = _blocks(coeffs, x, y, w, h)  # [cols, 8, 8]: the component's blocks, not its MCU padding
            for wi, bx0, bx1, by0 in spans:
                row = blocks[bx0:bx1]
                self.coefs[wi][c][y // 8 - by0, : len(row)] = row

    def write(self, coeffs, x: int, y: int, w: int, h: int, c: int) -> None:
        for wi, bx0, bx1, by0 in self.write_rows[c].get(y // 8, ()):
            if self.new[wi] is None:  # its float temporaries live for one window (a band, with write_pixels) only
                self.new[wi] = self._filter(wi)
            new, changed, rows = self.new[wi][c]
            r = y // 8 - by0
            if rows[r]:
                row = _blocks(coeffs, x, y, w, h)[bx0:bx1]
                mask = changed[r, : len(row)]
                row[mask] = new[r, : len(row)][mask]
                self.reencoded[c] += int(mask.sum())

    def _filter(self, wi: int) -> list[tuple]:
        """The window's new pixels (decoded from its blocks and filtered, or from ``source``), encoded where they
        changed: per component (blocks, changed [rows, cols] bool, rows with a change)."""
        x0, y0, x1, y1 = self.windows[wi]
        inside = (min(x1, self.layout.width) - x0, min(y1, self.layout.height) - y0)
        if self.source is not None:
            new, changed = self.source(self.windows[wi], inside)
        else:
            rx0, ry0 = self.reads[wi][:2]
            old = _decode(self.coefs[wi], self.layout)[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]  # [y1-y0, x1-x0, C]
            self.coefs[wi] = []
            new = old.copy()
            self.filter_fn(new[: inside[1], : inside[0]], (x0, y0))
            changed = _diff(old, new)
        encoded = _encode(new, changed, inside, self.layout)
        return [(blocks, changed, changed.any(1).tolist()) for blocks, changed in encoded]


def _component_rects(window: Rect, layout: JpegLayout) -> list[Rect]:
    return [_block_rect(window, layout, c) for c in range(len(layout.sampling))]


def _spans(windows: list[Rect], layout: JpegLayout) -> list[dict[int, list[tuple[int, int, int, int]]]]:
    """Per component, block row → [(window index, bx0, bx1, by0)] of the windows crossing that row."""
    rows: list[dict] = [{} for _ in layout.sampling]
    for wi, window in enumerate(windows):
        for c, (bx0, by0, bx1, by1) in enumerate(_component_rects(window, layout)):
            for row in range(by0, by1):
                rows[c].setdefault(row, []).append((wi, bx0, bx1, by0))
    return rows


def _blocks(coeffs, x: int, y: int, w: int, h: int) -> np.ndarray:
    """One block row of libjpeg's coefficients as an array [cols, 8, 8] over libjpeg's memory."""
    if x != 0 or h != 8:
        raise Unsupported(f"libturbojpeg passed a {w}x{h} coefficient region at ({x}, {y}); expected one block row")
    return np.ctypeslib.as_array(coeffs, (w // 8, 8, 8))


Region = tuple[Rect, "np.ndarray | None"]  # a rectangle and its bool mask (y1 - y0, x1 - x0), None for all of it
_BAND_ROWS = 256
"""write_pixels encodes a window in bands of about this many rows: its float32 temporaries (about 30 bytes a pixel)
stay within a band, the quantized blocks kept until the file is written take 3 bytes a pixel (4:2:0)."""


def write_pixels(data: bytes, pixels: np.ndarray, regions: Sequence[Region], orientation: int = 1) -> bytes:
    """``data`` with the pixels of ``pixels`` inside ``regions`` written into the blocks under them.

    ``pixels`` (H, W, C) or (H, W) uint8 is the decoded image after an edit that changed nothing outside
    ``regions``, turned upright by the EXIF ``orientation`` (1..8; 1 when the caller did not turn it), as are the
    regions' coordinates; the file keeps its stored orientation and its EXIF. Only the masked pixels are taken.
    """
    stored = _to_stored(pixels if pixels.ndim == 3 else pixels[:, :, None], orientation)  # [H, W, C] as stored
    layout = read_layout(data)
    if (stored.shape[1], stored.shape[0]) != (layout.width, layout.height):
        raise Unsupported(f"pixels of {stored.shape[1]}x{stored.shape[0]} for a {layout.width}x{layout.height} JPEG")
    if stored.shape[2] != len(layout.sampling):
        raise Unsupported(f"{stored.shape[2]}-channel pixels for a {len(layout.sampling)}-component JPEG")
    hu, wu = pixels.shape[:2]
    placed = [(_rect_to_stored(rect, orientation, wu, hu), None if m is None else _to_stored(m, orientation))
              for rect, m in regions]  # fmt: skip

    def source(window: Rect, inside: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        ox, oy, ex, ey = window
        new = np.zeros((ey - oy, ex - ox, stored.shape[2]), np.uint8)  # [h, w, C]
        new[: inside[1], : inside[0]] = stored[oy : oy + inside[1], ox : ox + inside[0]]
        changed = np.zeros(new.shape[:2], np.float32)
        for (x0, y0, x1, y1), mask in placed:
            cx0, cy0, cx1, cy1 = max(x0, ox), max(y0, oy), min(x1, ox + inside[0]), min(y1, oy + inside[1])
            if cx0 < cx1 and cy0 < cy1:
                part = 1 if mask is None else mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
                np.maximum(
                    changed[cy0 - oy : cy1 - oy, cx0 - ox : cx1 - ox],
                    part,
                    out=changed[cy0 - oy : cy1 - oy, cx0 - ox : cx1 - ox],
                )
        return new, changed

    band = max(_BAND_ROWS // layout.mcu[1], 1) * layout.mcu[1]
    windows = [(x0, y, x1, min(y + band, y1)) for x0, y0, x1, y1 in _windows([r for r, _ in placed], (0, 0), layout)
               for y in range(y0, y1, band)]  # fmt: skip
    if not windows:
        return data
    edit = _Edit(layout, windows, source=source)
    return transform(data, None, edit.write, layout.progressive)


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
