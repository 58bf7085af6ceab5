"""What a file carries besides its pixels, read back by the tests with their own parsers (not the product's): JPEG
marker segments and what follows the end of image, PNG chunks, RIFF chunks, TIFF tags, each EXIF block's IFDs; and
the picture viewers show (Pillow with its EXIF transpose, cv2.imdecode with IMREAD_COLOR)."""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np

ALLOWED_JPEG = {0xC0, 0xC1, 0xC2, 0xC4, 0xDB, 0xDD, 0xDA, 0xE0, 0xE1, 0xE2, 0xEE}  # frame, tables, JFIF, EXIF, ICC
ALLOWED_PNG = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"sBIT", b"eXIf"}
ALLOWED_WEBP = {b"VP8X", b"ICCP", b"VP8 ", b"VP8L", b"ALPH", b"EXIF"}
ALLOWED_TIFF = {256, 257, 258, 259, 262, 273, 274, 277, 278, 279, 284, 317, 339, 34675}  # image tags, orientation, ICC


def jpeg_parts(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """(marker, segment body) for each segment before the first scan, and the bytes after the end of image."""
    out, pos = [], 2
    while data[pos] == 0xFF and data[pos + 1] != 0xDA:
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        out.append((marker, data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    out.append((0xDA, b""))
    end = data.find(b"\xff\xd9", pos)  # entropy-coded data has no 0xFF 0xD9: the first one ends the image
    return out, data[end + 2 :] if end >= 0 else b""


def png_parts(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def riff_parts(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 12
    while pos + 8 <= len(data):
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        out.append((data[pos : pos + 4], data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return out


def ifds(tiff: bytes) -> list[dict[int, tuple[int, int, bytes]]]:
    """The chain of IFDs of a TIFF structure (IFD0, IFD1, …): tag → (type, count, the 4-byte value field)."""
    order = "<" if tiff[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", tiff[4:8])
    chain = []
    while offset and len(chain) < 8:
        (count,) = struct.unpack(order + "H", tiff[offset : offset + 2])
        entries = {}
        for i in range(count):
            e = offset + 2 + 12 * i
            tag, typ, n = struct.unpack(order + "HHI", tiff[e : e + 8])
            entries[tag] = (typ, n, tiff[e + 8 : e + 12])
        chain.append(entries)
        (offset,) = struct.unpack(order + "I", tiff[offset + 2 + 12 * count : offset + 6 + 12 * count])
    return chain


def exif_blocks(data: bytes, fmt: str) -> list[bytes]:
    if fmt == "jpeg":
        return [body[6:] for marker, body in jpeg_parts(data)[0] if marker == 0xE1 and body.startswith(b"Exif")]
    if fmt == "png":
        return [body for kind, body in png_parts(data) if kind == b"eXIf"]
    if fmt == "webp":
        return [body for name, body in riff_parts(data) if name == b"EXIF"]
    return []


def leftovers(data: bytes, fmt: str) -> list[str]:
    """Everything in ``data`` that the default policy must not leave: segments, chunks and tags beyond display's,
    EXIF beyond one Orientation SHORT, bytes after a JPEG's end of image, a JFIF thumbnail."""
    found = []
    if fmt == "jpeg":
        parts, after = jpeg_parts(data)
        found += [f"marker {m:#x}" for m, body in parts if m not in ALLOWED_JPEG]
        found += ["APP1 not EXIF" for m, body in parts if m == 0xE1 and not body.startswith(b"Exif\x00\x00")]
        found += ["APP2 not ICC" for m, body in parts if m == 0xE2 and not body.startswith(b"ICC_PROFILE\x00")]
        found += ["JFIF thumbnail" for m, body in parts if m == 0xE0 and (len(body) > 14 or body[12:14] != b"\0\0")]
        found += [f"{len(after)} bytes after the end of image"] if after.strip(b"\x00") else []
    elif fmt == "png":
        found += [kind.decode() for kind, _ in png_parts(data) if kind not in ALLOWED_PNG]
    elif fmt == "webp":
        found += [name.decode() for name, _ in riff_parts(data) if name not in ALLOWED_WEBP]
    elif fmt == "tiff":
        found += [f"tag {t}" for t in ifds(data)[0] if t not in ALLOWED_TIFF]
    blocks = exif_blocks(data, fmt)
    found += [f"{len(blocks)} EXIF blocks"] if len(blocks) > 1 else []
    for block in blocks:
        chain = ifds(block)
        if len(chain) != 1 or set(chain[0]) != {0x0112} or chain[0][0x0112][:2] != (3, 1):
            found.append(f"EXIF beyond one Orientation SHORT: {[sorted(i) for i in chain]}")
    return found


def orientation_tag(data: bytes, fmt: str) -> int:
    """The Orientation the file's EXIF says (1 when none)."""
    order_of = {b"II": "<", b"MM": ">"}
    for block in exif_blocks(data, fmt) if fmt != "tiff" else [data]:
        entry = ifds(block)[0].get(0x0112)
        if entry is not None:
            fmt_ = "H" if entry[0] == 3 else "I"
            return struct.unpack(order_of[block[:2]] + fmt_, entry[2][: struct.calcsize(fmt_)])[0]
    return 1


def pillow_view(data: bytes) -> np.ndarray:
    """BGR pixels as Pillow shows the file (EXIF orientation applied)."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))[:, :, ::-1]


def cv2_view(data: bytes) -> np.ndarray:
    """BGR pixels as cv2.imdecode shows the file (IMREAD_COLOR applies the EXIF orientation)."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


_DRAW = """
const [url, done] = arguments;
const img = new Image();
img.onload = () => {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;  // as displayed: EXIF orientation applied
  c.getContext('2d').drawImage(img, 0, 0);
  done(c.toDataURL('image/png'));
};
img.onerror = () => done(null);
img.src = url;
"""


def chromium_view(driver, data: bytes, media: str) -> np.ndarray:
    """BGR pixels as Chromium shows the file (drawn on a canvas at its natural, EXIF-oriented size)."""
    import base64

    url = driver.execute_async_script(_DRAW, f"data:{media};base64," + base64.b64encode(data).decode())
    assert url is not None, "Chromium could not decode the file"
    return cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
