"""Image decoding and encoding (OpenCV), with the size limits checked from the file header before decoding.

Pixels travel as numpy arrays (H, W, C) in OpenCV's channel order: gray (C=1), BGR (C=3) or BGRA (C=4), with depth
uint8, uint16 or float32. ``npy`` is accepted and produced as well (``allow_pickle=False``: never code).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import cv2
import numpy as np

from . import structure
from .metadata import Orientation, jpeg_segments, read_orientation, suffix_of

__all__ = [
    "CONTENT_TYPES",
    "DecodeError",
    "Image",
    "TooLarge",
    "check",
    "decode",
    "encode",
    "header_size",
    "lossless",
    "normalize",
    "sniff_format",
]

CONTENT_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "tiff": "image/tiff",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "npy": "application/x-npy",
}
_DEPTHS = {"png": ("uint8", "uint16"), "jpeg": ("uint8",), "webp": ("uint8",), "bmp": ("uint8",)}
_DEPTHS["tiff"] = ("uint8", "uint16", "float32")
_DEPTHS["npy"] = ("uint8", "uint16", "float32")
_NO_ALPHA = ("jpeg",)
_QUALITY = {"jpeg": cv2.IMWRITE_JPEG_QUALITY, "webp": cv2.IMWRITE_WEBP_QUALITY}
# WebP written lossy when its input was lossy: at Pillow's default quality, which gave a re-encoded lossy WebP about
# its input's size (a 1024² photo from Pillow at 80: 56 KB in, 52 KB out; lossless would be 629 KB)
_WEBP_LOSSY_QUALITY = 80
_WEBP_LOSSLESS = 101  # OpenCV: a WebP quality above 100 is lossless


class DecodeError(ValueError):
    """The bytes are not an image this server can read; the message says why."""


class TooLarge(ValueError):
    """The image has more pixels than allowed (decided from its header)."""


@dataclass
class Image:
    """Decoded pixels (H, W, C) as the decoder gives them (a TIFF already upright, other formats as stored), the
    format they came in and the file's EXIF orientation (:func:`.metadata.read_orientation`)."""

    pixels: np.ndarray
    format: str
    orientation: Orientation = Orientation()

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]


def sniff_format(data: bytes) -> str:
    """The container format from the magic bytes, or DecodeError."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"BM"):
        return "bmp"
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    raise DecodeError("unsupported or corrupt image: expected PNG, JPEG, TIFF, BMP, WebP or npy data")


def header_size(data: bytes, fmt: str) -> tuple[int, int]:
    """(width, height) read from the header alone, without decoding pixels; DecodeError when unreadable."""
    try:
        size = _HEADER_READERS[fmt](data)
    except (struct.error, IndexError, KeyError) as exc:
        raise DecodeError(f"corrupt {fmt} header: {type(exc).__name__}") from None
    except ValueError as exc:
        raise DecodeError(f"corrupt {fmt} header: {exc}") from None
    if size is None or size[0] <= 0 or size[1] <= 0:
        raise DecodeError(f"corrupt {fmt} header: no valid image size found")
    return size


def _png_size(data: bytes) -> tuple[int, int]:
    if data[12:16] != b"IHDR":
        raise ValueError("IHDR chunk missing")
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    for marker, pos, _ in jpeg_segments(data):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
    return None


_TIFF_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
_TIFF_SIZE_TAGS = {256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 277: "SamplesPerPixel"}
_TIFF_SIZE_TAGS |= {322: "TileWidth", 323: "TileLength"}


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """The first page's size; every size tag must appear once with one value, samples ≤ 4 of ≤ 32 bits.

    libtiff reads the first of duplicated tags and this reader would see all of them: a file listing a tag twice
    with different values could pass this check with one size and be decoded at another, so it is refused.
    """
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    found: dict[int, int] = {}
    for i in range(count):
        entry = data[offset + 2 + 12 * i : offset + 14 + 12 * i]
        tag, typ, n = struct.unpack(order + "HHI", entry[:8])
        if tag not in _TIFF_SIZE_TAGS:
            continue
        if tag in found:
            raise ValueError(f"{_TIFF_SIZE_TAGS[tag]} is listed more than once")
        if typ not in (3, 4) or (n != 1 and tag != 258):
            raise ValueError(f"{_TIFF_SIZE_TAGS[tag]} must be one SHORT or LONG value")
        if tag == 258 and n > 1:  # one BitsPerSample per sample; inline when they fit in 4 bytes
            values = _tiff_values(data, order, typ, n, entry[8:12])
            if len(set(values)) != 1:
                raise ValueError("BitsPerSample differs between samples")
            found[tag] = values[0]
            continue
        fmt = _TIFF_TYPES[typ]
        found[tag] = struct.unpack(order + fmt, entry[8 : 8 + struct.calcsize(fmt)])[0]
    if found.get(277, 1) > 4 or found.get(258, 8) > 32:
        raise ValueError(f"{found.get(277, 1)} samples of {found.get(258, 8)} bits: at most 4 of 32 bits")
    if 256 not in found or 257 not in found:
        return None
    _check_tiles(found[256], found[257], found.get(322), found.get(323))
    return found[256], found[257]


def _check_tiles(width: int, height: int, tile_width: int | None, tile_length: int | None) -> None:
    """The decoder allocates whole tiles: none may be larger than the image rounded up to 16 pixels per side (or
    structure.MAX_TILE_SIDE, whichever is larger), so that a tile costs what the image's declared size does."""
    for tag, side, tile in ((322, width, tile_width), (323, height, tile_length)):
        if tile is not None and tile > max(-(-side // 16) * 16, structure.MAX_TILE_SIDE):
            raise ValueError(
                f"{_TIFF_SIZE_TAGS[tag]} is {tile} for a {width}x{height} image: tiles may be at most the image "
                f"rounded up to 16 pixels, or {structure.MAX_TILE_SIDE}"
            )


def _tiff_values(data: bytes, order: str, typ: int, n: int, field: bytes) -> list[int]:
    fmt = _TIFF_TYPES[typ]
    size = struct.calcsize(fmt) * n
    if n > 64:
        raise ValueError("too many BitsPerSample values")
    raw = field[:size] if size <= 4 else data[struct.unpack(order + "I", field)[0] :][:size]
    return list(struct.unpack(order + fmt * n, raw))


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    return None


def _bmp_size(data: bytes) -> tuple[int, int]:
    (dib,) = struct.unpack("<I", data[14:18])
    if dib == 12:
        return struct.unpack("<HH", data[18:22])
    w, h = struct.unpack("<ii", data[18:26])
    return w, abs(h)


def _npy_size(data: bytes) -> tuple[int, int]:
    shape, _, _ = _npy_header(io.BytesIO(data))
    return shape[1], shape[0]


_NPY_DTYPES = ("|u1", "<u2", "<f4", "<f8", "|b1")


def _npy_header(stream: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(stream)
    except Exception:  # numpy's messages repeat the header (or an object's repr): say what is expected instead
        raise ValueError("the npy header must be a dict with descr, fortran_order and a shape of integers") from None
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise ValueError(f"npy image must have shape (H, W) or (H, W, C) with C in 1, 3, 4, got {shape}")
    if dtype.str not in _NPY_DTYPES:
        if dtype.byteorder == ">":
            raise ValueError(f"npy data is big-endian ({dtype.str}); save it little-endian (e.g. with .astype('<u2'))")
        raise ValueError(f"npy dtype {dtype.str} is not supported: use uint8, uint16 or float32 (little-endian)")
    return shape, fortran, dtype


_HEADER_READERS = {
    "png": _png_size,
    "jpeg": _jpeg_size,
    "tiff": _tiff_size,
    "webp": _webp_size,
    "bmp": _bmp_size,
    "npy": _npy_size,
}


def check(data: bytes, max_pixels: int, *, field: str = "image") -> tuple[str, int, int, bytes]:
    """(format, width, height, the bytes to decode) of ``data`` once everything that can be checked before decoding
    passed: the format, the header's size against ``max_pixels`` (TooLarge), the file's structure (DecodeError;
    :func:`.structure.check_structure`, which hands a PNG's image data over inflated)."""
    if not data:
        raise DecodeError(f"{field} is empty")
    fmt = sniff_format(data)
    width, height = header_size(data, fmt)
    if width * height > max_pixels:
        raise TooLarge(f"{field} is {width}x{height} = {width * height} pixels, more than the limit {max_pixels}")
    try:
        decodable = structure.check_structure(data, fmt, width, height)
    except ValueError as exc:
        raise DecodeError(f"{field}: {exc}") from None
    return fmt, width, height, decodable


def decode(data: bytes, max_pixels: int, *, field: str = "image") -> Image:
    """Decode ``data`` into (H, W, C) pixels; TooLarge (from the header, before decoding) or DecodeError."""
    fmt, _, _, data = check(data, max_pixels, field=field)
    if fmt == "npy":
        pixels = _decode_npy(data)
    else:
        try:
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as exc:
            if "MAX_IMAGE" in str(exc):  # OpenCV's own limit (OPENCV_IO_MAX_IMAGE_PIXELS), from the decoder's header
                raise TooLarge(f"{field} is larger than the decoder allows ({max_pixels} pixels)") from None
            raise DecodeError(f"corrupt or unsupported {fmt} image: OpenCV could not decode it") from None
        if pixels is None:
            raise DecodeError(f"corrupt or unsupported {fmt} image: OpenCV could not decode it")
    if pixels.shape[0] * pixels.shape[1] > max_pixels:
        raise TooLarge(f"{field} has {pixels.shape[0] * pixels.shape[1]} pixels, more than the limit {max_pixels}")
    return Image(normalize(pixels, fmt), fmt, read_orientation(data, fmt))


def _decode_npy(data: bytes) -> np.ndarray:
    stream = io.BytesIO(data)
    shape, _, dtype = _npy_header(stream)
    if len(data) - stream.tell() != int(np.prod(shape)) * dtype.itemsize:
        raise DecodeError(f"corrupt npy image: the data is not the {shape} {dtype.str} array its header declares")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise DecodeError("corrupt npy image") from None


def normalize(pixels: np.ndarray, fmt: str) -> np.ndarray:
    """``pixels`` as (H, W, C) uint8, uint16 or float32 with C in 1, 3, 4 (float64 narrowed); DecodeError naming
    ``fmt`` otherwise."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise DecodeError(f"{fmt} image must have 1, 3 or 4 channels, got shape {pixels.shape}")
    if pixels.dtype == np.float64:
        pixels = pixels.astype(np.float32)
    if pixels.dtype.name not in ("uint8", "uint16", "float32"):
        raise DecodeError(f"unsupported pixel depth {pixels.dtype.name}: use 8- or 16-bit unsigned or float32")
    if pixels.dtype == np.float32 and not np.isfinite(pixels).all():
        raise DecodeError("float32 image contains NaN or infinity")
    return np.ascontiguousarray(pixels)


_MAX_SIDE = {"webp": 16383, "jpeg": 65500, "png": 2**31 - 1, "bmp": 2**31 - 1}


def check_encodable(fmt: str, depth: str, channels: int, width: int = 0, height: int = 0) -> str | None:
    """Why ``fmt`` cannot hold a ``width`` × ``height`` image of ``depth`` with ``channels`` channels, or None."""
    if max(width, height) > _MAX_SIDE.get(fmt, 2**31 - 1):
        return f"{fmt} holds at most {_MAX_SIDE[fmt]} pixels per side, the image is {width}x{height}; use png or tiff"
    if fmt not in CONTENT_TYPES:
        return f"unknown format {fmt!r}"
    if depth not in _DEPTHS[fmt]:
        allowed = sorted(f for f, d in _DEPTHS.items() if depth in d)
        return f"{fmt} cannot hold {depth} pixels; use one of {', '.join(allowed)}"
    if channels == 4 and fmt in _NO_ALPHA:
        return f"{fmt} cannot hold an alpha channel; use png, tiff, webp, bmp or npy"
    return None


def lossless(data: bytes, fmt: str) -> bool:
    """Whether the file ``data`` (of format ``fmt``) holds its pixels exactly: not a JPEG nor a lossy WebP."""
    if fmt == "jpeg":
        return False
    return fmt != "webp" or not _webp_lossy(data)


def _webp_lossy(data: bytes) -> bool:
    """A WebP whose image is a VP8 (lossy) bitstream, perhaps after VP8X, ICCP, ALPH and other chunks."""
    at = 12
    while at + 8 <= len(data):
        kind, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "little")
        if kind in (b"VP8 ", b"VP8L"):
            return kind == b"VP8 "
        at += 8 + size + (size & 1)
    return False


def encode(pixels: np.ndarray, fmt: str, *, quality: int | None = None, lossless: bool = True) -> bytes:
    """Encode (H, W, C) pixels as ``fmt``; the caller has checked :func:`check_encodable`. ``quality`` (1..100) for
    JPEG and WebP, None for OpenCV's default (95 for JPEG); WebP without a ``quality`` is lossless when ``lossless``
    (the input's kind: :func:`lossless`), else lossy at Pillow's default quality (80)."""
    if pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, pixels, allow_pickle=False)
        return buf.getvalue()
    if fmt == "webp" and quality is None:
        quality = _WEBP_LOSSLESS if lossless else _WEBP_LOSSY_QUALITY
    params = [] if quality is None or fmt not in _QUALITY else [_QUALITY[fmt], quality]
    ok, out = cv2.imencode(suffix_of(fmt), pixels, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {pixels.dtype} {pixels.shape} image as {fmt}")
    return out.tobytes()
