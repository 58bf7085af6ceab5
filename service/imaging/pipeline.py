"""One request, in the order it runs: decode → regions → plan → run → encode.

- decode: :func:`decode` turns the uploaded bytes into pixels, refusing images over MAX_PIXELS from the header and
  files whose structure would cost more than their size (:mod:`.structure`) before decoding, and turns them as
  viewers show them by the file's EXIF orientation, read once (:func:`.metadata.read_orientation`; unless
  ``exif: "ignore"``).
- regions and plan: :func:`plan` places the pixels in the full image (``crop``), turns the ROI into rectangles
  (:mod:`.regions`), resolves the filter (:mod:`.filters`), picks the engine (:func:`.filters.engine`) and checks
  that the result can be encoded. :func:`prepare` is decode + plan.
- run: :func:`run_opencv` (the CPU engine, per request) or, for the torch engine, :func:`run_torch` here or the
  server's device pool (which batches requests; it calls :func:`.torch_engine.run_batch` itself).
- encode: :func:`output` turns an engine's result into the response's pixels, :func:`encode_result` into its bytes
  (a JPEG in and out keeps every block outside the ROI: :func:`.jpeg_roi.write_pixels`) with the metadata policy
  (:mod:`.scrub`: by default only the ICC profile and a correct orientation are kept).
- a JPEG that stays a JPEG with nothing that needs every pixel is never decoded whole: :func:`prepare` plans on a
  frame (:mod:`.jpeg_frame`) and :func:`run_and_encode` decodes only what the filter reads, filters and writes
  the blocks under the ROI in one pass of libjpeg-turbo's transform (docs/jpeg.md).

:func:`process` is the whole per-file path in process (bytes in, bytes out): the server runs the same steps, and
``roiconv apply`` runs :func:`process` itself (or sends the file to a server). :func:`unfiltered` writes a file with
nothing to filter (its pixels kept, its metadata by the policy); :func:`process_pixels` is the path without the codec
(pixels in, pixels out). torch is imported only when the torch engine runs.

Every problem with the input is a :class:`Refused` naming the field: 413 for images over MAX_PIXELS, 504 past the
deadline, 422 for the rest.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from . import codec, jpeg_frame, jpeg_roi, metadata, scrub
from .checks import Refused, bad, check_encodable, check_filter, place, whole
from .filters import FilterOp, build_filter, engine
from .regions import Piece, RegionError, bounding_rect, build_pieces, check_inside
from .spec import Roi, Spec
from .work import Work, finish

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
    "unfiltered",
]

log = logging.getLogger(__name__)


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
    upload: codec.Image | None = None  # the uploaded file's format and orientation (its bytes: ``upload_bytes``)
    upload_bytes: bytes | None = None
    metadata: str = "strip"  # the output's metadata policy (:mod:`.scrub`)
    stored: bool = False  # the pixels are in the file's stored frame (``exif: "ignore"``), not upright
    lossless: bool = True  # the input's kind (a JPEG, a lossy WebP: False): a WebP output keeps it
    frame: jpeg_frame.Frame | None = None  # JPEG in and out, not decoded whole: ``work`` holds the frame


def _check_deadline(deadline: float | None, step: str) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        raise Refused(504, "timeout", f"the deadline passed while {step} (timeout_ms / ROICONV_REQUEST_TIMEOUT_S)")


# --- decode ---------------------------------------------------------------------------------------------------------


def _decode_one(data: bytes, max_pixels: int, field: str, orient: bool) -> codec.Image:
    """The file decoded (structure checks first) and turned upright by its orientation (:func:`.metadata.displayed`
    applies what the decoder has not); with ``orient`` False, left (or put back) in the stored frame."""
    try:
        image = codec.decode(data, max_pixels, field=field)
    except codec.TooLarge as exc:
        raise Refused(413, "image_too_large", str(exc), field) from None
    except codec.DecodeError as exc:
        raise bad(str(exc), field) from None
    found = image.orientation
    if orient:
        image.pixels = metadata.upright(image.pixels, found.pending)
    elif found.decoded:  # the decoder turned it upright: back to the stored frame
        image.pixels = metadata.upright(image.pixels, metadata.inverse(found.value))
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
        raise bad(f"mask is {mw}x{mh} but the image is {iw}x{ih}; they must have the same width and height", "mask")


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
    origin = place(spec, w, h, max_pixels)
    headers: dict[str, str] = {}
    try:
        full = (spec.crop.width, spec.crop.height) if spec.crop else (w, h)
        check_inside(spec.roi, *full)
        roi = spec.roi if spec.roi.detect is None else _detect(spec.roi, pixels, origin, full, headers)
        _check_deadline(deadline, "finding faces")
        empty = roi is not spec.roi and not roi.given and not roi.invert and mask is None  # nothing found, nothing else
        pieces = [] if empty else build_pieces(roi, h, w, mask, origin, full, deadline=deadline)
    except RegionError as exc:
        raise bad(str(exc), exc.field) from None
    except TimeoutError:
        raise Refused(504, "timeout", "the deadline passed while drawing the ROI") from None
    op = build_filter(spec.filter, spec.border)
    runs_on = engine(op.kind, prefer_torch)
    color = 1 if channels == 1 else 3
    covers_all = whole(pieces, h, w)
    out_channels = check_filter(spec, op, pixels, runs_on, color, pieces)
    out_format = spec.format or fmt
    if out_format is not None:
        check_encodable(spec, out_format, pixels, out_channels, pieces)
    headers["X-Engine"] = runs_on
    region = (0, 0, w, h)
    if spec.output_region == "roi":
        region = bounding_rect(pieces)
        if region is None:
            raise bad("output_region 'roi' needs a non-empty ROI inside the image", "spec.output_region")
        x0, y0, x1, y1 = region
        headers["X-ROI-Rect"] = f"{x0 + origin[0]},{y0 + origin[1]},{x1 + origin[0]},{y1 + origin[1]}"
    coverage = min(1.0, sum(p.positions for p in pieces) / (h * w))  # overlaps count twice (a metric)
    work, window = Work(pixels, None, spec.outside, spec.depth, bands=bands), None
    if runs_on == "torch" and not covers_all:
        window = _torch_window(op, pieces, spec.border, w, h)
        x0, y0, x1, y1 = window or (0, 0, w, h)
        sub = pixels if window is None else np.ascontiguousarray(pixels[y0:y1, x0:x1])
        local = [Piece(p.x0 - x0, p.y0 - y0, p.x1 - x0, p.y1 - y0, p.mask) for p in pieces]  # in the window
        work = Work(sub, None, spec.outside, spec.depth, bands=bands, pieces=local)
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
        image, mask = codec.Image(frame.pixels, "jpeg", frame.found), None
    else:
        image, mask = decode(spec, image_bytes, mask_bytes, max_pixels, deadline)
    prepared = plan(spec, image.pixels, mask, max_pixels, fmt=image.format, **options)
    prepared.quality, prepared.metadata, prepared.stored = spec.quality, spec.metadata, spec.exif == "ignore"
    prepared.upload, prepared.upload_bytes, prepared.frame = image, image_bytes, frame
    prepared.lossless = codec.lossless(image_bytes, image.format)
    if image.format == prepared.format == "jpeg" and spec.outside == "keep" and spec.output_region == "image":
        found = image.orientation
        if prepared.stored or found.clean or found.value == 1:
            prepared.jpeg = (image_bytes, 1 if prepared.stored else found.value)  # the blocks outside are kept
        else:  # fail closed: viewers could turn the kept blocks differently, so the pixels are written upright
            prepared.headers["X-JPEG"] = (
                "re-encoded: its EXIF orientation is not a single SHORT that every viewer reads"
            )
    return prepared


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
    entire = (x0, y0, x1, y1) == (0, 0, src.shape[1], src.shape[0])
    if work.outside == "zero":
        out = np.zeros((y1 - y0, x1 - x0, src.shape[2]), dtype)  # [h, w, C]
        if src.shape[2] == 4:
            out[:, :, 3] = src[y0:y1, x0:x1, 3]  # alpha unchanged
    elif entire and dtype == src.dtype:
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
        raise bad("models are served by the server only (ROICONV_MODELS_DIR)", "spec.filter")
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
        count = int(pixels.size - np.isfinite(pixels).sum())
        raise bad(
            f"the {op.name} filter's float32 result is infinite or NaN at {count} value(s): the input's values times "
            "the filter's weights pass 3.4e38; scale the image or the filter's parameters down",
            "spec.filter",
        )
    return pixels


def encode_result(result: np.ndarray, prepared: Prepared) -> bytes:
    """An engine's result encoded in the output format."""
    return _encode(output(result, prepared), prepared)


def _encode(pixels: np.ndarray, prepared: Prepared) -> bytes:
    """The output file: its pixels encoded, then its metadata by the policy (:func:`.scrub.write`).

    JPEG in, JPEG out: only the blocks under the ROI re-encoded (:mod:`.jpeg_roi`, header ``X-JPEG: blocks``), the
    pixels kept in their stored frame with the orientation tag alone; a file whose blocks cannot be kept is
    re-encoded whole and says why (``X-JPEG: re-encoded: <reason>``)."""
    upload, body = prepared.upload, None
    found = upload.orientation if upload is not None else metadata.Orientation()
    if upload is not None and upload.format == prepared.format and _untouched(pixels, prepared):
        kept = scrub.rewrap(prepared.upload_bytes, upload.format, found, prepared.metadata)
        if kept is not None:  # nothing was filtered: the coded pixels are kept as they are
            if upload.format == "jpeg":
                prepared.headers["X-JPEG"] = "blocks"
            return kept
    keeps_frame = prepared.stored  # the pixels as stored: the file's orientation still applies to them
    if prepared.jpeg is not None and pixels.shape == prepared.source.shape and pixels.dtype == np.uint8:
        data, orientation = prepared.jpeg
        regions = [((p.x0, p.y0, p.x1, p.y1), p.mask) for p in prepared.pieces]
        try:
            body = jpeg_roi.write_pixels(data, pixels, regions, orientation)
            prepared.headers["X-JPEG"], keeps_frame = "blocks", True
        except jpeg_roi.Unsupported as exc:
            prepared.headers["X-JPEG"] = "re-encoded: " + str(exc).encode("ascii", "replace").decode()
    if body is None:
        body = codec.encode(pixels, prepared.format, quality=prepared.quality, lossless=prepared.lossless)
    return _with_metadata(body, prepared, keeps_frame)


def _with_metadata(body: bytes, prepared: Prepared, keeps_frame: bool) -> bytes:
    """``body`` with the metadata the policy keeps (:func:`.scrub.write`) and the orientation its pixels need:
    the file's when they are in its stored frame (``keeps_frame``), else none."""
    upload = prepared.upload
    found = upload.orientation if upload is not None else metadata.Orientation()
    written = found.value if keeps_frame and found.clean else 1
    source = (prepared.upload_bytes, upload.format) if upload is not None else (None, None)
    return scrub.write(body, prepared.format, *source, prepared.metadata, written)


def _untouched(pixels: np.ndarray, prepared: Prepared) -> bool:
    """Nothing was filtered and the whole image goes out as it came (no ROI piece: a detector found nothing)."""
    source = prepared.source
    entire = prepared.region == (0, 0, source.shape[1], source.shape[0])
    same = pixels.shape == source.shape and pixels.dtype == source.dtype
    return not prepared.pieces and prepared.work.outside == "keep" and entire and same


def unfiltered(data: bytes, policy: str, *, max_pixels: int) -> bytes:
    """A file written with nothing filtered (``roiconv apply``'s copies): its coded pixels as they are and its
    metadata by ``policy`` (:func:`.scrub.write`); decoded (structure checks first), upright, and encoded where the
    container cannot be rewritten around them (:func:`.scrub.rewrap`)."""
    image = _decode_one(data, max_pixels, "image", True) if policy != "keep" else None
    if image is None:
        return data
    kept = scrub.rewrap(data, image.format, image.orientation, policy)
    if kept is not None:
        return kept
    body = codec.encode(image.pixels, image.format, lossless=codec.lossless(data, image.format))
    return scrub.write(body, image.format, data, image.format, policy, 1)


def run_and_encode(prepared: Prepared) -> bytes:
    """The OpenCV engine's result encoded: :func:`run_opencv` then :func:`encode_result`, or for a plan with a frame
    both inside the block edit (``X-JPEG: blocks``); a file the edit cannot keep is decoded whole, filtered and
    encoded as any other (``X-JPEG: re-encoded: <reason>``)."""
    frame = prepared.frame
    if frame is not None and prepared.pieces:  # none: written as any untouched file
        try:
            run = functools.partial(run_opencv, prepared)
            body = jpeg_frame.edit(frame, prepared.op, prepared.pieces, prepared.border, prepared.origin, run)
            prepared.headers["X-JPEG"] = "blocks"
            return _with_metadata(body, prepared, True)
        except jpeg_roi.Unsupported as exc:
            log.warning("JPEG block edit refused, the image is decoded whole: %s", exc)
    if frame is not None:  # never encode a frame that was not decoded
        try:
            jpeg_frame.decode_whole(frame)
        except codec.DecodeError as exc:
            raise bad(str(exc), "image") from None
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
        raise bad(f"pixels must be (H, W[, C]) with at most {max_pixels} pixels, got shape {pixels.shape}", "image")
    try:
        array = codec.normalize(pixels if inplace else pixels.copy(), "array")  # [H, W, C]
        mask = None if mask is None else codec.normalize(mask, "mask array")
    except codec.DecodeError as exc:
        raise bad(str(exc), "image") from None
    prepared = plan(spec, array, mask, max_pixels)
    result = output(_run_here(prepared), prepared)
    return result[:, :, 0] if pixels.ndim == 2 and result.shape[2] == 1 else result
