"""libjpeg-turbo's lossless transform (``tjTransform`` of the TurboJPEG API) with coefficient callbacks, through
ctypes: the system's ``libturbojpeg`` (Debian: ``libturbojpeg0``), any version from 1.4 (the callback API); optimal
Huffman tables from 3.0. :mod:`.jpeg_blocks` is its one user."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable, Sequence
from functools import lru_cache

__all__ = ["Unsupported", "available", "optimizes_huffman", "transform"]

log = logging.getLogger(__name__)


class Unsupported(ValueError):
    """This JPEG cannot be edited block by block (the message says why); the caller re-encodes it whole."""


# --- the binding --------------------------------------------------------------------------------------------


class _Region(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]


_FILTER = ctypes.CFUNCTYPE(  # the coefficients' address comes as an int (a typed pointer cost a cast per call)
    ctypes.c_int, ctypes.c_void_p, _Region, _Region, ctypes.c_int, ctypes.c_int, ctypes.c_void_p
)


class _Transform(ctypes.Structure):
    _fields_ = [
        ("r", _Region),
        ("op", ctypes.c_int),
        ("options", ctypes.c_int),
        ("data", ctypes.c_void_p),
        ("customFilter", _FILTER),
    ]


_CROP, _NOOUTPUT, _PROGRESSIVE, _COPYNONE, _OPTIMIZE = 4, 16, 32, 64, 256  # TJXOPT_*; OPTIMIZE from 3.0
_LIMITSCANS = 32768  # TJFLAG_LIMITSCANS: refuse progressive files with more than 500 scans (a decoding bomb)


@lru_cache(maxsize=1)
def _turbo() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("turbojpeg") or "libturbojpeg.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        log.warning("libturbojpeg not found (Debian: apt-get install libturbojpeg0): JPEGs are re-encoded whole")
        return None
    lib.tjInitTransform.restype = ctypes.c_void_p
    ubyte_pp = ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte))
    lib.tjTransform.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_int, ubyte_pp]
    lib.tjTransform.argtypes += [ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(_Transform), ctypes.c_int]
    lib.tjGetErrorStr2.restype = ctypes.c_char_p
    lib.tjGetErrorStr2.argtypes = [ctypes.c_void_p]
    lib.tjFree.argtypes = [ctypes.c_void_p]
    lib.tjDestroy.argtypes = [ctypes.c_void_p]
    return lib


def available() -> bool:
    """Whether libturbojpeg could be loaded (without it every JPEG is re-encoded whole)."""
    return _turbo() is not None


def optimizes_huffman() -> bool:
    """Whether the output gets optimal Huffman tables (libjpeg-turbo ≥ 3.0); with 2.x a baseline file is written
    with the standard tables, which makes a file whose tables were optimized about 7% larger (measured: 447,719 →
    478,055 bytes for a 1080p photo saved by Pillow with ``optimize=True``)."""
    lib = _turbo()
    return lib is not None and hasattr(lib, "tj3Init")


def transform(
    data: bytes,
    read: Callable | None,
    write: Callable,
    progressive: bool,
    crops: Sequence[tuple[int, int, int, int]] = (),
    cropped: Callable[[list[bytes]], None] | None = None,
) -> bytes:
    """One lossless transform of ``data`` with coefficient callbacks: ``read`` (a first transform without output,
    skipped when None), then ``write``. ``crops`` (x, y, w, h; x and y multiples of the MCU) are written as small
    JPEGs of the input's own blocks (no metadata) by the same call, from the coefficients as read, and handed to
    ``cropped`` before ``write`` sees its first block row."""
    lib = _turbo()
    if lib is None:
        raise Unsupported("libturbojpeg is not installed (Debian: apt-get install libturbojpeg0)")
    errors: list[BaseException] = []
    first = 0 if read is None else 1  # index of the first crop

    def guard(fn, deliver: bool = False):
        def call(coeffs, region, plane, component, index, transform):
            try:
                if deliver and not delivered:
                    delivered.append(True)  # the crops' transforms ran to the end before this one started
                    cropped([ctypes.string_at(bufs[first + i], sizes[first + i]) for i in range(len(crops))])
                fn(coeffs, region.x, region.y, region.w, region.h, component)
                return 0
            except BaseException as exc:  # an exception must not cross the C frames: record it and stop libjpeg
                errors.append(exc)
                return -1

        return _FILTER(call)

    delivered: list[bool] = []
    callbacks = [guard(fn) for fn in (read,) if fn is not None]  # referenced until tjTransform returns
    callbacks.append(guard(write, deliver=bool(crops) and cropped is not None))
    n = len(callbacks) + len(crops)
    transforms = (_Transform * n)()
    if read is not None:
        transforms[0].options, transforms[0].customFilter = _NOOUTPUT, callbacks[0]
    for i, (x, y, w, h) in enumerate(crops):
        t = transforms[first + i]
        t.r.x, t.r.y, t.r.w, t.r.h, t.options = x, y, w, h, _CROP | _COPYNONE
    options = (_PROGRESSIVE if progressive else 0) | (_OPTIMIZE if optimizes_huffman() else 0)
    transforms[n - 1].options, transforms[n - 1].customFilter = options, callbacks[-1]
    bufs, sizes = (ctypes.POINTER(ctypes.c_ubyte) * n)(), (ctypes.c_ulong * n)()
    handle = lib.tjInitTransform()
    if not handle:
        raise MemoryError("tjInitTransform failed")
    try:
        rc = lib.tjTransform(handle, data, len(data), n, bufs, sizes, transforms, _LIMITSCANS)
        if errors:
            raise errors[0]
        if rc != 0:
            reason = lib.tjGetErrorStr2(handle).decode("ascii", "replace")
            raise Unsupported(f"libjpeg-turbo could not transcode the JPEG: {reason}")
        return ctypes.string_at(bufs[n - 1], sizes[n - 1])
    finally:
        for i in range(n):
            if bufs[i]:
                lib.tjFree(bufs[i])
        lib.tjDestroy(handle)
