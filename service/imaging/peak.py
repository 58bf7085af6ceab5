"""A request's peak memory, estimated before decoding (the server admits it against its memory budget,
:class:`service.server.admission.MemoryBudget`).

:func:`estimate_peak` says, from the image header alone, how many bytes a request will hold at its peak — the decoded
pixels, their float32 copy, the output, the dense convolution's working memory and the encoded result — and how many
row bands the convolution should run in so that its working memory stays bounded.

The dense factor was measured on this project's CI machine (x86-64, torch 2.13 CPU): ``F.conv2d`` depthwise on a
3000×3000×3 float32 image peaked at about 12 times the image's float32 size, for kernel sizes 3 to 31.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import codec
from .faces.sizes import detect_bytes
from .filters import build_filter
from .spec import Spec

__all__ = ["Peak", "estimate_peak", "request_peak"]

DENSE_FACTOR = 12  # peak extra bytes of a dense conv, in units of the float32 image
BAND_WORKSPACE = 256 * 2**20  # the most working memory one band of a banded conv may need
_BANDED_KINDS = ("conv", "mix")


@dataclass(frozen=True)
class Peak:
    """An estimate: ``bytes`` at the request's peak, and ``bands`` (1: one dense call; more: row bands)."""

    bytes: int
    bands: int = 1


def estimate_peak(width: int, height: int, channels: int, itemsize: int, kind: str, budget: int) -> Peak:
    """The peak bytes of a request on a ``width`` × ``height`` image (``channels`` of ``itemsize`` bytes).

    Decoded pixels count twice (the decoder's buffer and the normalized copy) and the encoded output once more; the
    float32 input and output once each; the convolution's working memory ``DENSE_FACTOR`` float32 images, or for
    "conv"/"mix" kinds, when that alone would pass ``BAND_WORKSPACE`` or the budget, a share of it per row band.
    """
    pixels = width * height
    decoded = pixels * max(channels, 1) * itemsize
    plane = pixels * 4 * max(min(channels, 3), 1)  # float32 color channels
    fixed = 3 * decoded + 2 * plane + pixels  # + the bool mask
    work = DENSE_FACTOR * plane
    bands = 1
    if kind in _BANDED_KINDS and (work > BAND_WORKSPACE or fixed + work > budget):
        bands = min(max(1, height // 8), -(-work // BAND_WORKSPACE))
        work = -(-work // bands)
    return Peak(fixed + work, bands)


def _depth(fmt: str, data: bytes) -> tuple[int, int]:
    """(channels, bytes per channel) at most, from the header where that is cheap, else the format's widest."""
    if fmt == "png" and len(data) > 25:
        return 4, 2 if data[24] == 16 else 1
    if fmt in ("jpeg", "webp", "bmp"):
        return (3 if fmt == "jpeg" else 4), 1
    return 4, 4  # tiff, npy: up to float32


def request_peak(spec: Spec, image: bytes, mask: bytes | None, budget: int, max_pixels: int) -> Peak:
    """The estimated peak of a request from its spec and the image header (no decoding).

    Unreadable headers and images over MAX_PIXELS get the smallest estimate: decoding refuses them right after.
    """
    try:
        fmt = codec.sniff_format(image)
        width, height = codec.header_size(image, fmt)
    except codec.DecodeError:
        return Peak(len(image))
    if width * height > max_pixels:
        return Peak(len(image))
    channels, itemsize = _depth(fmt, image)
    kind = build_filter(spec.filter, spec.border).kind
    peak = estimate_peak(width, height, channels, itemsize, kind, budget)
    extra = 0 if mask is None else _mask_peak(mask, width * height)
    if spec.roi.detect is not None:
        extra += detect_bytes(width, height, spec.roi.detect.max_side, within=spec.roi.detect.within is not None)
    return Peak(peak.bytes + extra + len(image), peak.bands)


def _mask_peak(mask: bytes, pixels: int) -> int:
    """The mask decoded and normalized: the image's ``pixels`` at the mask's depth (a mask whose header declares
    another size is refused before anything is decoded; one with an unreadable header, by its decoder)."""
    try:
        fmt = codec.sniff_format(mask)
    except codec.DecodeError:
        return len(mask)
    channels, itemsize = _depth(fmt, mask)
    return 2 * pixels * channels * itemsize
