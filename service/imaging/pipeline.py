"""The per-request work around the compute: decode and check everything first, filter, encode.

``prepare`` decodes the image (upright by its EXIF orientation unless ``exif: "ignore"``), places it in the full
image (``crop``), turns the ROI into rectangles (:mod:`service.regions`), resolves the filter and picks the engine:
``"opencv"`` (the CPU engine, :func:`run_opencv`, per request on a thread) or ``"torch"`` (convcore: batched on the
pool's devices through :func:`service.imaging.torch_engine.run_batch`). ``encode_result`` encodes either engine's
result.
:func:`process` is the whole path in process, for callers without a server.

Every problem with the input becomes an :class:`~service.errors.ApiError` naming the field: 413 for images over
MAX_PIXELS (from the header, before decoding), 422 for the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from convcore import conv_geometry

from ..server.errors import ApiError
from . import codec
from . import metadata as exif
from . import opencv_engine as cvengine
from .filters import TORCH_ONLY, FilterOp, build_filter, piece_side, sized_op
from .regions import Piece, RegionError, bounding_rect, build_pieces, check_inside, pieces_mask
from .spec import Spec
from .torch_engine import Work, finish, run_batch

__all__ = ["Prepared", "encode_result", "prepare", "process", "run_on_cpu", "run_opencv"]

_RANGE = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}


@dataclass
class Prepared:
    """A decoded, checked request: the filter, the engine and its input, and what the response needs.

    ``work`` holds the (upright, uploaded) pixels; for the torch engine also the full ROI mask. ``pieces`` are the
    ROI's rectangles in the upload's coordinates, ``region`` (x0, y0, x1, y1) the part of the upload the response
    holds, ``origin`` (x, y) where the upload sits in the full image, ``headers`` extra response headers
    (``X-Engine``; ``X-ROI-Rect: x0,y0,x1,y1`` in full-image coordinates, x1/y1 exclusive, with
    ``output_region: "roi"``). For the torch engine ``work`` holds only ``window`` (x0, y0, x1, y1): the ROI's
    bounding rectangle grown by the halo, when that is all the filter reads; ``source`` is the whole upload.
    """

    op: FilterOp
    work: Work
    format: str
    coverage: float
    positions: int
    engine: str = "torch"
    headers: dict[str, str] = field(default_factory=dict)
    pieces: list[Piece] = field(default_factory=list)
    border: str = "reflect101"
    region: tuple[int, int, int, int] = (0, 0, 0, 0)
    origin: tuple[int, int] = (0, 0)
    source: np.ndarray | None = None
    window: tuple[int, int, int, int] | None = None


def _decode(data: bytes, max_pixels: int, field: str, orient: bool) -> codec.Image:
    try:
        image = codec.decode(data, max_pixels, field=field)
    except codec.TooLarge as exc:
        raise ApiError(413, "image_too_large", str(exc), field) from None
    except codec.DecodeError as exc:
        raise ApiError(422, "invalid_request", str(exc), field) from None
    if orient:
        image.pixels = exif.upright(image.pixels, exif.orientation(data, image.format))
    return image


def _check_mask_header(image: bytes, mask: bytes, orient: bool) -> None:
    """A mask whose header declares another size than the image's is refused before either is decoded (its decode
    would cost what its own header declares, not what the image's does). Sides may swap when EXIF turns one."""
    try:
        sizes = [codec.header_size(data, codec.sniff_format(data)) for data in (image, mask)]
    except codec.DecodeError:
        return  # decoding says what is wrong with it
    (iw, ih), (mw, mh) = sizes
    if (mw, mh) != (iw, ih) and not (orient and (mh, mw) == (iw, ih)):
        raise _bad(f"mask is {mw}x{mh} but the image is {iw}x{ih}; they must have the same width and height", "mask")


def _bad(reason: str, field: str) -> ApiError:
    return ApiError(422, "invalid_request", reason, field)


def _check_deadline(deadline: float | None, step: str) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        raise ApiError(504, "timeout", f"the deadline passed while {step} (timeout_ms / ROICONV_REQUEST_TIMEOUT_S)")


def prepare(
    spec: Spec,
    image_bytes: bytes,
    mask_bytes: bytes | None,
    max_pixels: int,
    *,
    prefer_torch: bool = False,
    deadline: float | None = None,
    bands: int = 1,
) -> Prepared:
    """Decode, place and check a request; ``prefer_torch`` (a server with CUDA devices) sends the classic linear
    and morphology filters to convcore instead of OpenCV.

    ``deadline`` (a ``time.perf_counter()`` value) is checked after each step and while drawing the ROI (504);
    ``bands`` > 1 asks the torch engine to run the convolution in that many row bands (bounded working memory).
    """
    orient = spec.exif == "upright"
    if mask_bytes is not None:
        _check_mask_header(image_bytes, mask_bytes, orient)
    image = _decode(image_bytes, max_pixels, "image", orient)
    _check_deadline(deadline, "decoding the image")
    mask_pixels = None if mask_bytes is None else _decode(mask_bytes, max_pixels, "mask", orient).pixels
    _check_deadline(deadline, "decoding the mask")
    h, w = image.height, image.width
    origin = _place(spec, w, h, max_pixels)
    try:
        full = (spec.crop.width, spec.crop.height) if spec.crop else (w, h)
        check_inside(spec.roi, *full)
        pieces = build_pieces(spec.roi, h, w, mask_pixels, origin, full, deadline=deadline)
    except RegionError as exc:
        raise _bad(str(exc), exc.field) from None
    except TimeoutError:
        raise ApiError(504, "timeout", "the deadline passed while drawing the ROI") from None
    op = build_filter(spec.filter, spec.border)
    engine = "torch" if op.kind in TORCH_ONLY or (prefer_torch and op.kind in ("conv", "morph")) else "opencv"
    color = 1 if image.channels == 1 else 3
    out_channels = _check_filter(spec, op, image, engine, color, pieces)
    depth = "float32" if spec.depth == "float32" or image.pixels.dtype == np.float32 else image.pixels.dtype.name
    fmt = spec.format or image.format
    channels = out_channels + (1 if image.channels == 4 and out_channels == 3 else 0)
    why = codec.check_encodable(fmt, depth, channels, *_output_size(spec, pieces, w, h))
    if why is not None:
        raise _bad(why, "spec.format" if spec.format else "spec.depth")
    headers = {"X-Engine": engine}
    region = (0, 0, w, h)
    if spec.output_region == "roi":
        rect = bounding_rect(pieces)
        if rect is None:
            raise _bad("output_region 'roi' needs a non-empty ROI inside the image", "spec.output_region")
        region = rect
        x0, y0, x1, y1 = rect
        headers["X-ROI-Rect"] = f"{x0 + origin[0]},{y0 + origin[1]},{x1 + origin[0]},{y1 + origin[1]}"
    coverage = min(1.0, sum(p.positions for p in pieces) / (h * w))  # overlaps count twice (a metric)
    work, window = Work(image.pixels, None, spec.outside, spec.depth, bands=bands), None
    if engine == "torch" and not _whole(pieces, image):
        window = _torch_window(op, pieces, spec.border, w, h)
        x0, y0, x1, y1 = window or (0, 0, w, h)
        sub = image.pixels if window is None else np.ascontiguousarray(image.pixels[y0:y1, x0:x1])
        work = Work(sub, pieces_mask(pieces, y1 - y0, x1 - x0, (x0, y0)), spec.outside, spec.depth, bands=bands)
    prepared = Prepared(op, work, fmt, coverage, h * w * color, engine, headers, pieces, spec.border, region, origin)
    prepared.source, prepared.window = image.pixels, window
    return prepared


def _output_size(spec: Spec, pieces: list[Piece], w: int, h: int) -> tuple[int, int]:
    """(width, height) of the response image: the upload's, or the ROI's bounding rectangle's."""
    rect = bounding_rect(pieces) if spec.output_region == "roi" else None
    return (w, h) if rect is None else (rect[2] - rect[0], rect[3] - rect[1])


def _torch_window(op: FilterOp, pieces: list[Piece], border: str, w: int, h: int) -> tuple | None:
    """The ROI's bounding rectangle grown by the kernel's halo (clipped): all the torch engine needs to read.

    convcore pads the window's edges, which are the image's edges or lie a halo away from every ROI pixel, so the
    ROI's result is the whole image's. None (the whole image) for models (their reach is unknown), ``wrap`` (it reads
    the opposite edge) and an empty ROI.
    """
    rect = bounding_rect(pieces)
    if rect is None or op.kind == "model" or border == "wrap":
        return None
    hy, hx = op.ksize[0] // 2, op.ksize[1] // 2
    return max(rect[0] - hx, 0), max(rect[1] - hy, 0), min(rect[2] + hx, w), min(rect[3] + hy, h)


def _place(spec: Spec, w: int, h: int, max_pixels: int) -> tuple[int, int]:
    """Where the upload sits in the full image: (0, 0), or the crop's (x, y) once it fits its stated image (which
    must itself be within MAX_PIXELS: shapes are drawn where the full image clips them)."""
    crop = spec.crop
    if crop is None:
        return (0, 0)
    if crop.width * crop.height > max_pixels:
        raise _bad(
            f"the stated full image is {crop.width}x{crop.height} = {crop.width * crop.height} pixels, more than "
            f"the limit {max_pixels}",
            "spec.crop",
        )
    if crop.x + w > crop.width or crop.y + h > crop.height:
        raise _bad(
            f"the uploaded {w}x{h} image at ({crop.x}, {crop.y}) does not fit in the stated "
            f"{crop.width}x{crop.height} image: need x + {w} <= width and y + {h} <= height",
            "spec.crop",
        )
    return (crop.x, crop.y)


def _check_filter(spec: Spec, op: FilterOp, image: codec.Image, engine: str, color: int, pieces) -> int:
    """Check what depends on the image; returns the output's color channel count."""
    dtype = image.pixels.dtype
    if op.name == "median" and dtype != np.uint8:
        sides = [piece_side(p.x0, p.y0, p.x1, p.y1) for p in pieces]
        ksize = max((sized_op(op, s).extra["ksize"] for s in sides), default=3) if op.auto else op.extra["ksize"]
        if ksize > 5:
            given = f"auto gives {ksize} for the largest ROI piece" if op.auto else str(ksize)
            raise _bad(
                f"median ksize {given}: that needs an 8-bit image; {dtype.name} allows 3 or 5", "spec.filter.ksize"
            )
    if op.name == "fill":
        values = op.extra["color"]
        if len(values) not in (1, color):
            raise _bad(f"color needs 1 or {color} value(s) for this image, got {len(values)}", "spec.filter.color")
        top = _RANGE.get(dtype)
        if top is not None and any(v < 0 or v > top or v != int(v) for v in values):
            raise _bad(
                f"color values must be integers in 0..{top} for a {dtype.name} image, got {values}", "spec.filter.color"
            )
    if op.kind == "mix":
        o, c = op.weight.shape[:2]
        if c != color:
            raise _bad(f"4-D weights have C={c} but the image has {color} color channel(s)", "spec.filter.weights")
        if o != color and spec.outside == "keep" and not _whole(pieces, image):
            raise _bad(f"outside='keep' needs O = C ({color}), got O={o}; use outside='zero'", "spec.outside")
        color = o
    if engine == "torch" and op.kind != "model":
        try:
            conv_geometry((image.height, image.width), op.ksize, padding="same", padding_mode=op.padding_mode)
        except ValueError:
            raise _bad(
                f"the image ({image.width}x{image.height}) is too small for a {op.ksize[1]}x{op.ksize[0]} kernel "
                f"with border {spec.border!r}; border 'constant' or 'replicate' works at any size",
                "spec.filter.weights" if op.name == "kernel" else "spec.filter.ksize",
            ) from None
    return color


def _whole(pieces: list[Piece], image: codec.Image) -> bool:
    return len(pieces) == 1 and pieces[0].mask is None and pieces[0].area == image.height * image.width


def run_opencv(prepared: Prepared) -> np.ndarray:
    """The CPU engine's result (h, w, C) in the output depth, ready for :func:`encode_result`.

    With ``outside: "keep"`` in the input's depth the decoded image itself is the output buffer and only the ROI's
    rectangles are read and written; ``outside: "zero"`` allocates the one zeroed output; ``depth: "float32"``
    converts the output region once.
    """
    work = prepared.work
    src = work.pixels  # [H, W, C]
    x0, y0, x1, y1 = prepared.region
    dtype = np.dtype(np.float32) if work.depth == "float32" else src.dtype
    whole = (x0, y0, x1, y1) == (0, 0, src.shape[1], src.shape[0])
    if work.outside == "zero":
        out = np.zeros((y1 - y0, x1 - x0, src.shape[2]), dtype)  # [h, w, C]
        if src.shape[2] == 4:
            out[:, :, 3] = src[y0:y1, x0:x1, 3]  # alpha unchanged
    elif whole and dtype == src.dtype:
        out = src  # in place: apply() reads every piece before writing any
    else:
        out = src[y0:y1, x0:x1].astype(dtype)  # [h, w, C], a copy of the region only
    cvengine.apply(prepared.op, src, out, prepared.pieces, prepared.border, out_origin=(x0, y0), origin=prepared.origin)
    return out


def encode_result(result: np.ndarray, prepared: Prepared) -> bytes:
    """Encode an engine's result: the OpenCV engine's pixels as they are; the torch engine's float result rounded
    and saturated to the output depth (alpha put back), put back into the image when it covers only ``window``,
    and cut to the output region."""
    if prepared.engine == "opencv":
        return codec.encode(_finite(result, prepared.op), prepared.format)
    pixels = _finite(finish(result, prepared.work), prepared.op)  # [h, w, C'] over the window (or the whole upload)
    wx, wy = (0, 0) if prepared.window is None else prepared.window[:2]
    x0, y0, x1, y1 = prepared.region
    if prepared.window is not None and prepared.region == bounding_rect(prepared.pieces):
        pixels = pixels[y0 - wy : y1 - wy, x0 - wx : x1 - wx]  # output_region "roi": inside the window
    elif prepared.window is not None:
        pixels = _paste(pixels, prepared)[y0:y1, x0:x1]
    else:
        pixels = pixels[y0:y1, x0:x1]
    return codec.encode(np.ascontiguousarray(pixels), prepared.format)


def _finite(pixels: np.ndarray, op: FilterOp) -> np.ndarray:
    """Float results must be finite: a filter that overflows float32 (its largest value is 3.4e38) is the request's
    fault (422 naming the filter), never inf or NaN pixels in a 200. Integer results saturate, as OpenCV's do."""
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        bad = int(pixels.size - np.isfinite(pixels).sum())
        raise _bad(
            f"the {op.name} filter's float32 result is infinite or NaN at {bad} value(s): the input's values times the "
            "filter's weights pass 3.4e38; scale the image or the filter's parameters down",
            "spec.filter",
        )
    return pixels


def _paste(window: np.ndarray, prepared: Prepared) -> np.ndarray:
    """The whole output: the input (keep) or zeros (alpha kept), with the window's result written in."""
    src = prepared.source  # [H, W, C]
    x0, y0, x1, y1 = prepared.window
    if prepared.work.outside == "keep" and window.shape[2] == src.shape[2]:
        out = src if window.dtype == src.dtype else src.astype(window.dtype)  # in place when the depth is kept
    else:
        out = np.zeros((*src.shape[:2], window.shape[2]), window.dtype)
        if window.shape[2] == 4:
            out[:, :, 3] = src[:, :, 3]
    out[y0:y1, x0:x1] = window
    return out


def process(
    spec: Spec, image_bytes: bytes, mask_bytes: bytes | None = None, *, max_pixels: int
) -> tuple[bytes, str, dict[str, str]]:
    """The whole request in process: decode, filter (OpenCV, or convcore on the CPU), encode.

    Returns (body, media type, extra headers). Models (``model:<name>``) are served by the server only (422).
    """
    import torch

    prepared = prepare(spec, image_bytes, mask_bytes, max_pixels)
    if prepared.op.kind == "model":
        raise _bad("models are served by the server only (ROICONV_MODELS_DIR)", "spec.filter")
    if prepared.engine == "opencv":
        result = run_opencv(prepared)
    else:
        result = run_batch(prepared.op, [prepared.work], torch.device("cpu"))[0]
    return encode_result(result, prepared), codec.CONTENT_TYPES[prepared.format], dict(prepared.headers)


def run_on_cpu(prepared: Prepared) -> tuple[bytes | None, float]:
    """For the OpenCV engine, filter and encode here (the caller's thread): (body, seconds spent filtering); for the
    torch engine (None, 0.0): it runs on the device pool."""
    if prepared.engine != "opencv":
        return None, 0.0
    t = time.perf_counter()
    result = run_opencv(prepared)
    seconds = time.perf_counter() - t
    return encode_result(result, prepared), seconds
