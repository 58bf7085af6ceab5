"""One request, in the order it runs: decode → regions → plan → run → encode.

- decode: :func:`decode` turns the uploaded bytes into pixels (upright by their EXIF orientation unless
  ``exif: "ignore"``), refusing images over MAX_PIXELS from the header, before decoding.
- regions and plan: :func:`plan` places the pixels in the full image (``crop``), turns the ROI into rectangles
  (:mod:`.regions`), resolves the filter (:mod:`.filters`), picks the engine (:func:`.filters.engine`) and checks
  that the result can be encoded. :func:`prepare` is decode + plan.
- run: :func:`run_opencv` (the CPU engine, per request) or, for the torch engine, :func:`run_torch` here or the
  server's device pool (which batches requests; it calls :func:`.torch_engine.run_batch` itself).
- encode: :func:`output` turns an engine's result into the response's pixels, :func:`encode_result` into its bytes
  (a JPEG in and out keeps every block outside the ROI: :func:`.jpeg_roi.write_pixels`).

:func:`process` is the whole path in process (bytes in, bytes out) and :func:`process_pixels` the same without the
codec (pixels in, pixels out), for callers that decoded the image themselves (``roiconv apply``). torch is imported
only when the torch engine runs.

Every problem with the input is a :class:`Refused` naming the field: 413 for images over MAX_PIXELS, 504 past the
deadline, 422 for the rest.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np

from . import codec, jpeg_frame, jpeg_roi, metadata
from .filters import FilterOp, build_filter, engine, piece_side, sized_op
from .regions import Piece, RegionError, bounding_rect, build_pieces, check_inside, pieces_mask
from .spec import Roi, Spec
from .work import MAX_VALUE, Work, finish

__all__ = [
    "Prepared",
    "Refused",
    "decode",
    "encode_result",
    "output",
    "plan",
    "prepare",
    "process",
    "process_pixels",
    "run_and_encode",
    "run_opencv",
    "run_torch",
]


class Refused(Exception):
    """A request the pipeline refuses: ``status`` (413, 422 or 504, as HTTP), a short ``code``, the ``field`` at
    fault and a ``reason``."""

    def __init__(self, status: int, code: str, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason, self.field = status, code, reason, field


@dataclass
class Prepared:
    """A decoded, checked request: the filter, the engine and its input, and what the response needs.

    ``work`` holds the (upright, uploaded) pixels; for the torch engine also the full ROI mask. ``pieces`` are the
    ROI's rectangles in the upload's coordinates, ``region`` (x0, y0, x1, y1) the part of the upload the response
    holds, ``origin`` (x, y) where the upload sits in the full image, ``headers`` extra response headers
    (``X-Engine``; ``X-ROI-Rect: x0,y0,x1,y1`` in full-image coordinates, x1/y1 exclusive, with
    ``output_region: "roi"``). For the torch engine ``work`` holds only ``window`` (x0, y0, x1, y1): the ROI's
    bounding rectangle grown by the halo, when that is all the filter reads; ``source`` is the whole upload.
    ``format`` is the output format (None when the caller keeps the pixels).
    """

    op: FilterOp
    work: Work
    format: str | None
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
    jpeg: tuple[bytes, int] | None = None  # JPEG in and out, outside kept: (the upload, the orientation applied)
    quality: int | None = None
    frame: jpeg_frame.Frame | None = None  # JPEG in and out, not decoded whole: ``work`` holds the frame


def _bad(reason: str, field: str) -> Refused:
    return Refused(422, "invalid_request", reason, field)


def _check_deadline(deadline: float | None, step: str) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        raise Refused(504, "timeout", f"the deadline passed while {step} (timeout_ms / ROICONV_REQUEST_TIMEOUT_S)")


# --- decode ---------------------------------------------------------------------------------------------------------


def _decode_one(data: bytes, max_pixels: int, field: str, orient: bool) -> codec.Image:
    try:
        image = codec.decode(data, max_pixels, field=field)
    except codec.TooLarge as exc:
        raise Refused(413, "image_too_large", str(exc), field) from None
    except codec.DecodeError as exc:
        raise _bad(str(exc), field) from None
    if orient:
        image.pixels = metadata.upright(image.pixels, metadata.orientation(data, image.format))
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


def decode(
    spec: Spec, image_bytes: bytes, mask_bytes: bytes | None, max_pixels: int, deadline: float | None = None
) -> tuple[codec.Image, np.ndarray | None]:
    """The image and the mask's pixels (H, W, C), upright unless ``spec.exif`` is "ignore"."""
    orient = spec.exif == "upright"
    if mask_bytes is not None:
        _check_mask_header(image_bytes, mask_bytes, orient)
    image = _decode_one(image_bytes, max_pixels, "image", orient)
    _check_deadline(deadline, "decoding the image")
    mask = None if mask_bytes is None else _decode_one(mask_bytes, max_pixels, "mask", orient).pixels
    _check_deadline(deadline, "decoding the mask")
    return image, mask


# --- regions → plan -------------------------------------------------------------------------------------------------


def plan(
    spec: Spec,
    pixels: np.ndarray,
    mask: np.ndarray | None,
    max_pixels: int,
    *,
    fmt: str | None = None,
    prefer_torch: bool = False,
    deadline: float | None = None,
    bands: int = 1,
) -> Prepared:
    """Place ``pixels`` (H, W, C) in the full image, draw the ROI, resolve the filter and pick the engine.

    ``fmt`` is the input's format (the output's unless ``spec.format`` says otherwise; None: no encoding checked);
    ``prefer_torch`` (a server with CUDA devices) sends the classic linear and morphology filters to convcore;
    ``deadline`` (a ``time.perf_counter()`` value) bounds the ROI drawing (504); ``bands`` > 1 asks the torch engine
    to run the convolution in that many row bands (bounded working memory).
    """
    h, w, channels = pixels.shape
    origin = _place(spec, w, h, max_pixels)
    headers: dict[str, str] = {}
    try:
        full = (spec.crop.width, spec.crop.height) if spec.crop else (w, h)
        check_inside(spec.roi, *full)
        roi = spec.roi if spec.roi.detect is None else _detect(spec.roi, pixels, origin, full, headers)
        _check_deadline(deadline, "finding faces")
        empty = roi is not spec.roi and not roi.given and not roi.invert and mask is None  # nothing found, nothing else
        pieces = [] if empty else build_pieces(roi, h, w, mask, origin, full, deadline=deadline)
    except RegionError as exc:
        raise _bad(str(exc), exc.field) from None
    except TimeoutError:
        raise Refused(504, "timeout", "the deadline passed while drawing the ROI") from None
    op = build_filter(spec.filter, spec.border)
    runs_on = engine(op.kind, prefer_torch)
    color = 1 if channels == 1 else 3
    whole = _whole(pieces, h, w)
    out_channels = _check_filter(spec, op, pixels, runs_on, color, pieces)
    out_format = spec.format or fmt
    if out_format is not None:
        _check_encodable(spec, out_format, pixels, out_channels, pieces)
    headers["X-Engine"] = runs_on
    region = (0, 0, w, h)
    if spec.output_region == "roi":
        region = bounding_rect(pieces)
        if region is None:
            raise _bad("output_region 'roi' needs a non-empty ROI inside the image", "spec.output_region")
        x0, y0, x1, y1 = region
        headers["X-ROI-Rect"] = f"{x0 + origin[0]},{y0 + origin[1]},{x1 + origin[0]},{y1 + origin[1]}"
    coverage = min(1.0, sum(p.positions for p in pieces) / (h * w))  # overlaps count twice (a metric)
    work, window = Work(pixels, None, spec.outside, spec.depth, bands=bands), None
    if runs_on == "torch" and not whole:
        window = _torch_window(op, pieces, spec.border, w, h)
        x0, y0, x1, y1 = window or (0, 0, w, h)
        sub = pixels if window is None else np.ascontiguousarray(pixels[y0:y1, x0:x1])
        work = Work(sub, pieces_mask(pieces, y1 - y0, x1 - x0, (x0, y0)), spec.outside, spec.depth, bands=bands)
    prepared = Prepared(op, work, out_format, coverage, h * w * color, runs_on, headers, pieces, spec.border, region)
    prepared.origin, prepared.source, prepared.window = origin, pixels, window
    return prepared


def _detect(roi: Roi, pixels: np.ndarray, origin: tuple[int, int], full, headers: dict[str, str]) -> Roi:
    """``roi`` with the faces its ``detect`` finds added as pieces (nothing found: nothing added); 501 without the
    ``detect`` extra. ``X-Faces-Found`` says how many, ``X-Detect-Seconds`` how long finding them took."""
    from .faces import request as faces

    t = time.perf_counter()
    try:
        found = faces.find(roi.detect, pixels, origin=origin, full=full, field="spec.roi.detect")
    except ImportError as exc:
        raise Refused(501, "not_installed", str(exc), "spec.roi.detect") from None
    headers["X-Faces-Found"] = str(len(found))
    headers["X-Detect-Seconds"] = f"{time.perf_counter() - t:.6f}"
    return faces.with_faces(roi, found, roi.detect, pixels.shape[:2], origin)


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
    """:func:`decode` then :func:`plan`: a request's bytes to its checked plan. A JPEG that stays a JPEG, with
    nothing that needs every pixel, is not decoded: its plan holds a frame (:mod:`.jpeg_frame`) that
    :func:`run_and_encode` decodes where the filter reads."""
    options = {"prefer_torch": prefer_torch, "deadline": deadline, "bands": bands}
    frame = jpeg_frame.open_frame(spec, image_bytes, mask_bytes, max_pixels, prefer_torch)
    if frame is not None:
        prepared = plan(spec, frame.pixels, None, max_pixels, fmt="jpeg", **options)
        prepared.quality, prepared.jpeg, prepared.frame = spec.quality, (image_bytes, frame.orientation), frame
        return prepared
    image, mask = decode(spec, image_bytes, mask_bytes, max_pixels, deadline)
    prepared = plan(spec, image.pixels, mask, max_pixels, fmt=image.format, **options)
    prepared.quality = spec.quality
    if image.format == prepared.format == "jpeg" and spec.outside == "keep" and spec.output_region == "image":
        orientation = metadata.orientation(image_bytes, "jpeg") if spec.exif == "upright" else 1
        prepared.jpeg = (image_bytes, orientation)  # the blocks outside the ROI are kept (:func:`_encode`)
    return prepared


def _check_encodable(spec: Spec, fmt: str, pixels: np.ndarray, out_channels: int, pieces: list[Piece]) -> None:
    depth = "float32" if spec.depth == "float32" or pixels.dtype == np.float32 else pixels.dtype.name
    channels = out_channels + (1 if pixels.shape[2] == 4 and out_channels == 3 else 0)
    rect = bounding_rect(pieces) if spec.output_region == "roi" else None
    w, h = (pixels.shape[1], pixels.shape[0]) if rect is None else (rect[2] - rect[0], rect[3] - rect[1])
    why = codec.check_encodable(fmt, depth, channels, w, h)
    if why is not None:
        raise _bad(why, "spec.format" if spec.format else "spec.depth")


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


def _check_filter(spec: Spec, op: FilterOp, pixels: np.ndarray, runs_on: str, color: int, pieces: list) -> int:
    """Check what depends on the image; returns the output's color channel count."""
    dtype = pixels.dtype
    whole = _whole(pieces, *pixels.shape[:2])
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
        top = MAX_VALUE.get(dtype)
        if top is not None and any(v < 0 or v > top or v != int(v) for v in values):
            raise _bad(
                f"color values must be integers in 0..{top:.0f} for a {dtype.name} image, got {values}",
                "spec.filter.color",
            )
    if op.kind == "mix":
        o, c = op.weight.shape[:2]
        if c != color:
            raise _bad(f"4-D weights have C={c} but the image has {color} color channel(s)", "spec.filter.weights")
        if o != color and spec.outside == "keep" and not whole:
            raise _bad(f"outside='keep' needs O = C ({color}), got O={o}; use outside='zero'", "spec.outside")
        color = o
    if runs_on == "torch" and op.kind != "model":
        from convcore import conv_geometry  # the torch engine's own rule for what fits

        h, w = pixels.shape[:2]
        try:
            conv_geometry((h, w), op.ksize, padding="same", padding_mode=op.padding_mode)
        except ValueError:
            raise _bad(
                f"the image ({w}x{h}) is too small for a {op.ksize[1]}x{op.ksize[0]} kernel "
                f"with border {spec.border!r}; border 'constant' or 'replicate' works at any size",
                "spec.filter.weights" if op.name == "kernel" else "spec.filter.ksize",
            ) from None
    return color


def _whole(pieces: list[Piece], h: int, w: int) -> bool:
    return len(pieces) == 1 and pieces[0].mask is None and pieces[0].area == h * w


# --- run ------------------------------------------------------------------------------------------------------------


def run_opencv(prepared: Prepared) -> np.ndarray:
    """The CPU engine's result (h, w, C) in the output depth, ready for :func:`output`.

    With ``outside: "keep"`` in the input's depth the decoded image itself is the output buffer and only the ROI's
    rectangles are read and written; ``outside: "zero"`` allocates the one zeroed output; ``depth: "float32"``
    converts the output region once.
    """
    from . import opencv_engine

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
    opencv_engine.apply(
        prepared.op, src, out, prepared.pieces, prepared.border, out_origin=(x0, y0), origin=prepared.origin
    )
    return out


def run_torch(prepared: Prepared, device: str = "cpu") -> np.ndarray:
    """The torch engine's float result (h, w, C_out) over ``prepared.window`` on ``device``, one request alone (the
    server batches requests on its device pool instead). Models are served by the server only."""
    if prepared.op.kind == "model":
        raise _bad("models are served by the server only (ROICONV_MODELS_DIR)", "spec.filter")
    import torch

    from .torch_engine import run_batch

    return run_batch(prepared.op, [prepared.work], torch.device(device))[0]


# --- encode ---------------------------------------------------------------------------------------------------------


def output(result: np.ndarray, prepared: Prepared) -> np.ndarray:
    """The response's pixels (h, w, C) from an engine's result: the OpenCV engine's as they are; the torch engine's
    rounded and saturated to the output depth (alpha put back), put back into the image when they cover only
    ``window``, and cut to the output region."""
    if prepared.engine == "opencv":
        return _finite(result, prepared.op)
    pixels = _finite(finish(result, prepared.work), prepared.op)  # [h, w, C'] over the window (or the whole upload)
    wx, wy = (0, 0) if prepared.window is None else prepared.window[:2]
    x0, y0, x1, y1 = prepared.region
    if prepared.window is not None and prepared.region == bounding_rect(prepared.pieces):
        pixels = pixels[y0 - wy : y1 - wy, x0 - wx : x1 - wx]  # output_region "roi": inside the window
    elif prepared.window is not None:
        pixels = _paste(pixels, prepared)[y0:y1, x0:x1]
    else:
        pixels = pixels[y0:y1, x0:x1]
    return np.ascontiguousarray(pixels)


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


def encode_result(result: np.ndarray, prepared: Prepared) -> bytes:
    """An engine's result encoded in the output format."""
    return _encode(output(result, prepared), prepared)


def _encode(pixels: np.ndarray, prepared: Prepared) -> bytes:
    """JPEG in, JPEG out: only the blocks under the ROI re-encoded (:mod:`.jpeg_roi`, header ``X-JPEG: blocks``);
    a file whose blocks cannot be kept is re-encoded whole and says why (``X-JPEG: re-encoded: <reason>``)."""
    if prepared.jpeg is not None and pixels.shape == prepared.source.shape and pixels.dtype == np.uint8:
        data, orientation = prepared.jpeg
        regions = [((p.x0, p.y0, p.x1, p.y1), p.mask) for p in prepared.pieces]
        try:
            body = jpeg_roi.write_pixels(data, pixels, regions, orientation)
            prepared.headers["X-JPEG"] = "blocks"
            return body
        except jpeg_roi.Unsupported as exc:
            prepared.headers["X-JPEG"] = "re-encoded: " + str(exc).encode("ascii", "replace").decode()
    return codec.encode(pixels, prepared.format, quality=prepared.quality)


def run_and_encode(prepared: Prepared) -> bytes:
    """The OpenCV engine's result encoded: :func:`run_opencv` then :func:`encode_result`, or for a plan with a frame
    both inside the block edit (``X-JPEG: blocks``); a file the edit cannot keep is decoded whole, filtered and
    encoded as any other (``X-JPEG: re-encoded: <reason>``)."""
    frame = prepared.frame
    if frame is not None:
        try:
            run = functools.partial(run_opencv, prepared)
            body = jpeg_frame.edit(frame, prepared.op, prepared.pieces, prepared.border, prepared.origin, run)
            prepared.headers["X-JPEG"] = "blocks"
            return body
        except jpeg_roi.Unsupported:
            try:
                jpeg_frame.decode_whole(frame)
            except codec.DecodeError as exc:
                raise _bad(str(exc), "image") from None
    return encode_result(run_opencv(prepared), prepared)


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


# --- the whole path in process --------------------------------------------------------------------------------------


def _run_here(prepared: Prepared) -> np.ndarray:
    return run_opencv(prepared) if prepared.engine == "opencv" else run_torch(prepared)


def process(
    spec: Spec, image_bytes: bytes, mask_bytes: bytes | None = None, *, max_pixels: int
) -> tuple[bytes, str, dict[str, str]]:
    """The whole request in process: decode, filter (OpenCV, or convcore on the CPU), encode.

    Returns (body, media type, extra headers). Models (``model:<name>``) are served by the server only (422).
    """
    prepared = prepare(spec, image_bytes, mask_bytes, max_pixels)
    body = run_and_encode(prepared) if prepared.engine == "opencv" else encode_result(_run_here(prepared), prepared)
    return body, codec.CONTENT_TYPES[prepared.format], dict(prepared.headers)


def process_pixels(
    spec: Spec, pixels: np.ndarray, mask: np.ndarray | None = None, *, max_pixels: int, inplace: bool = False
) -> np.ndarray:
    """``pixels`` (H, W) or (H, W, C) uint8, uint16 or float32 filtered in process: the pipeline without the codec.

    Returns the output pixels, (H, W) when the input was (H, W) and the output has one channel. With ``inplace``
    (and ``outside: "keep"`` in the input's depth, on the OpenCV engine) the result is written into ``pixels``
    itself, only inside the ROI's rectangles; otherwise ``pixels`` is left as it was.
    """
    if pixels.ndim not in (2, 3) or pixels.shape[0] * pixels.shape[1] > max_pixels:
        raise _bad(f"pixels must be (H, W[, C]) with at most {max_pixels} pixels, got shape {pixels.shape}", "image")
    try:
        array = codec.normalize(pixels if inplace else pixels.copy(), "array")  # [H, W, C]
        mask = None if mask is None else codec.normalize(mask, "mask array")
    except codec.DecodeError as exc:
        raise _bad(str(exc), "image") from None
    prepared = plan(spec, array, mask, max_pixels)
    result = output(_run_here(prepared), prepared)
    return result[:, :, 0] if pixels.ndim == 2 and result.shape[2] == 1 else result
