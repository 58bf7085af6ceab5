"""Crafted inputs for the abuse tests, built by the tests themselves: TIFFs with chosen tags, npy files with chosen
headers, header-declared bombs per format, and the corpus of (name, image bytes, spec extra, expected statuses)."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
from service_support import encode, rand_image

from service.bench.bombs import crop_bypass_spec, float_tiff, png_trailing_bomb, scan_bomb, tiled_tiff  # noqa: F401

_SHORT, _LONG = 3, 4


def tiff(
    width: int,
    height: int,
    *,
    extra: list[tuple[int, int]] = (),
    pages: int = 1,
    bps: int = 8,
    spp: int = 1,
    data: bytes | None = None,
) -> bytes:
    """An uncompressed little-endian TIFF (gray when ``spp`` = 1) of ``width`` x ``height``; ``extra`` entries
    (tag, value) are added next to the standard ones (e.g. a second ImageWidth), ``pages`` IFDs chain the same image.
    """
    pixels = data
    if pixels is None:
        values = np.arange(width * height * spp, dtype=np.uint32) % 251
        pixels = values.astype(np.uint8 if bps == 8 else "<u2").tobytes()
    entries = [
        (256, _LONG, width),
        (257, _LONG, height),
        (258, _SHORT, bps),
        (259, _SHORT, 1),
        (262, _SHORT, 2 if spp >= 3 else 1),
        (273, _LONG, 0),  # strip offset, patched below
        (277, _SHORT, spp),
        (278, _LONG, height),
        (279, _LONG, len(pixels)),
    ] + [(tag, _LONG, value) for tag, value in extra]
    entries.sort(key=lambda e: e[0])
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + pages * ifd_size
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for page in range(pages):
        out += struct.pack("<H", len(entries))
        for tag, typ, value in entries:
            value = data_offset if tag == 273 else value
            packed = struct.pack("<HI", value, 0)[:4] if typ == _SHORT else struct.pack("<I", value)
            out += struct.pack("<HHI", tag, typ, 1) + packed
        out += struct.pack("<I", 8 + (page + 1) * ifd_size if page + 1 < pages else 0)
    return bytes(out) + pixels


def npy(array: np.ndarray | None = None, *, header: str | None = None, body: bytes = b"") -> bytes:
    """An npy file of ``array``, or one with a hand-written ``header`` dict literal and raw ``body``."""
    if header is None:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        return buf.getvalue()
    text = header.encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + body


def png_bomb(width: int, height: int) -> bytes:
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))


def palette_png(width: int, height: int) -> bytes:
    """An 8-bit palette PNG (color type 3) with a 4-color palette."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + bytes((x + y) % 4 for x in range(width)) for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    plte = bytes([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    body = chunk(b"IHDR", ihdr) + chunk(b"PLTE", plte) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def jpeg_bomb(width: int, height: int) -> bytes:
    data = bytearray(encode(rand_image(8, 8), ".jpg"))
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC2):
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_bomb(width: int, height: int) -> bytes:
    data = bytearray(encode(rand_image(4, 4), ".bmp"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def webp_bomb(width: int, height: int) -> bytes:
    data = bytearray(cv2.imencode(".webp", rand_image(8, 8), [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes())
    assert data[12:16] == b"VP8L"
    bits = (width - 1) | ((height - 1) << 14)
    data[21:25] = struct.pack("<I", bits | (struct.unpack("<I", bytes(data[21:25]))[0] & ~0xFFFFFFF))
    return bytes(data)


def exif_rotated_jpeg() -> bytes:
    """A JPEG with an APP1 Exif segment saying Orientation = 6 (rotate 90°)."""
    jpg = encode(rand_image(16, 24), ".jpg")
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack("<I", 0)
    tiff_hdr = b"II*\x00" + struct.pack("<I", 8) + ifd
    app1 = b"Exif\x00\x00" + tiff_hdr
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:]


def corpus() -> list[tuple[str, bytes, dict, set[int]]]:
    """(name, image bytes, spec additions, allowed statuses) for every crafted input."""
    img = rand_image(24, 32, seed=3)
    png = encode(img)
    cmyk = tiff(8, 6, spp=4)
    progressive = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    obj = np.array([{"a": 1}], dtype=object)
    pickled = io.BytesIO()
    np.save(pickled, obj, allow_pickle=True)
    nan = np.full((6, 6), np.nan, np.float32)
    cases = [
        ("zero-length", b"", {}, {422}),
        ("random bytes", np.random.default_rng(0).bytes(4096), {}, {422}),
        ("truncated png", png[: len(png) // 2], {}, {422}),
        ("truncated jpeg", encode(img, ".jpg")[:200], {}, {200, 422}),
        ("png bomb", png_bomb(100_000, 100_000), {}, {413}),
        ("jpeg bomb", jpeg_bomb(60_000, 60_000), {}, {413}),
        ("bmp bomb", bmp_bomb(100_000, 100_000), {}, {413}),
        ("webp bomb", webp_bomb(16384, 16384), {}, {413}),
        ("tiff bomb", tiff(100_000, 100_000, data=b"\x00" * 64), {}, {413}),
        ("tiff duplicate width", tiff(20, 20, extra=[(256, 20000)]), {}, {422}),
        ("tiff 5 samples", tiff(4, 4, spp=5), {}, {422}),
        ("npy bomb", npy(header="{'descr': '|u1', 'fortran_order': False, 'shape': (100000, 100000), }"), {}, {413}),
        (
            "npy channels bomb",
            npy(header="{'descr': '|u1', 'fortran_order': False, 'shape': (4, 4, 1000000000000), }"),
            {},
            {422},
        ),
        ("npy pickled", pickled.getvalue(), {}, {422}),
        ("npy big-endian", npy(rand_image(6, 6, c=1, dtype=np.uint16).astype(">u2")), {}, {422}),
        ("npy NaN", npy(nan), {}, {422}),
        ("npy bad header", npy(header="{'descr': '|u1', 'shape': (lambda: 1)}"), {}, {422}),
        ("exif rotated jpeg", exif_rotated_jpeg(), {}, {200}),
        ("cmyk-like 4-sample tiff", cmyk, {}, {200}),
        ("progressive jpeg", progressive, {}, {200}),
        ("16-bit png", encode(rand_image(12, 10, dtype=np.uint16)), {}, {200}),
        ("float32 tiff", encode(rand_image(12, 10, dtype=np.float32), ".tiff"), {}, {200}),
        ("multi-page tiff", tiff(9, 7, pages=2), {}, {200}),
        ("palette png", palette_png(12, 10), {}, {200}),
        ("1x1", encode(rand_image(1, 1)), {"filter": {"name": "box", "ksize": 1}}, {200}),
        ("1x1 with 3x3", encode(rand_image(1, 1)), {}, {200, 422}),
        ("webp too wide", encode(rand_image(4, 17000, c=1)), {"format": "webp"}, {422}),
    ]
    return cases


# --- container metadata ------------------------------------------------------------------------------------------


def exif_tiff(orientation: int, order: str = ">") -> bytes:
    """A TIFF structure whose IFD0 holds only the Orientation tag (SHORT), big- (">") or little-endian ("<")."""
    tiff = (b"MM\x00*" if order == ">" else b"II*\x00") + struct.pack(order + "I", 8) + struct.pack(order + "H", 1)
    return tiff + struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(order + "I", 0)


def exif_app1(orientation: int, order: str = ">") -> bytes:
    """A JPEG APP1 Exif segment (marker included) holding only the Orientation tag."""
    body = b"Exif\x00\x00" + exif_tiff(orientation, order)
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def icc_app2() -> bytes:
    """A JPEG APP2 ICC_PROFILE segment (marker included) with a dummy profile."""
    body = b"ICC_PROFILE\x00\x01\x01" + bytes(range(64))
    return b"\xff\xe2" + struct.pack(">H", len(body) + 2) + body


def jpeg_with_orientation(jpeg: bytes, orientation: int, order: str = ">") -> bytes:
    """``jpeg`` with an APP1 Exif segment holding only IFD0's Orientation tag, right after SOI."""
    return jpeg[:2] + exif_app1(orientation, order) + jpeg[2:]


def png_with_orientation(png: bytes, orientation: int) -> bytes:
    """``png`` with an eXIf chunk (after IHDR) holding only IFD0's Orientation tag."""
    tiff = exif_tiff(orientation)
    chunk = struct.pack(">I", len(tiff)) + b"eXIf" + tiff + struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
    return png[:33] + chunk + png[33:]


# --- camera-like files: everything that gives a person away ------------------------------------------------------

SECRETS = (b"Jane Doe", b"SN-0042-XYZ", b"MAKERNOTE", b"Rue de Rivoli")
"""Identifying text planted in every camera-like file: name (Artist, XMP, IPTC, comments), body serial number,
maker note, a place name; none may reach a default output."""


def dummy_icc() -> bytes:
    """A colour profile that libpng accepts (a 128-byte header with its size, 'acsp' and the D50 illuminant, no
    tags): distinctive bytes to find in the output, not a profile to render with."""
    head = struct.pack(">I4sI4s4s4s12s4s", 132, b"roic", 0x02100000, b"mntr", b"RGB ", b"XYZ ", bytes(12), b"acsp")
    head += bytes(24) + struct.pack(">I3i", 0, 0xF6D6, 0x10000, 0xD32D) + b"roic" + bytes(44)
    return head + struct.pack(">I", 0)


XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><mwg-rs:Name>Jane Doe</mwg-rs:Name></x:xmpmeta>'


def _entry(tag: int, typ: int, count: int, payload: bytes) -> tuple[int, int, int, bytes]:
    return tag, typ, count, payload


def _ascii(tag: int, text: bytes) -> tuple[int, int, int, bytes]:
    return _entry(tag, 2, len(text) + 1, text + b"\x00")


def _ifd_size(entries: list) -> int:
    return 2 + 12 * len(entries) + 4 + sum(len(p) + (len(p) & 1) for *_, p in entries if len(p) > 4)


def _ifd(order: str, entries: list, start: int, next_ifd: int) -> bytes:
    data_at = start + 2 + 12 * len(entries) + 4
    head, data = struct.pack(order + "H", len(entries)), b""
    for tag, typ, count, payload in sorted(entries, key=lambda e: e[0]):
        if len(payload) <= 4:
            head += struct.pack(order + "HHI", tag, typ, count) + payload.ljust(4, b"\x00")
        else:
            head += struct.pack(order + "HHII", tag, typ, count, data_at + len(data))
            data += payload + b"\x00" * (len(payload) & 1)
    return head + struct.pack(order + "I", next_ifd) + data


def camera_exif(thumbnail: bytes, orientation: int = 6, order: str = ">", typ: int = _SHORT, twice: bool = False):
    """A camera's EXIF block (TIFF structure): IFD0 with Make, Model, Artist and the Orientation (``typ`` SHORT or
    LONG, listed ``twice`` with another value when asked), an Exif IFD with the body serial number and a maker note,
    a GPS IFD, and IFD1 holding ``thumbnail`` (a JPEG of the unfiltered photo)."""
    o = order
    value = struct.pack(o + ("H" if typ == _SHORT else "I"), orientation)
    ifd0 = [_ascii(0x010F, b"Camera Maker"), _ascii(0x0110, b"Model 7"), _ascii(0x013B, b"Jane Doe")]
    ifd0 += [_entry(0x0112, typ, 1, value)] + ([_entry(0x0112, _SHORT, 1, struct.pack(o + "H", 3))] if twice else [])
    ifd0 += [_entry(0x8769, _LONG, 1, b"\x00" * 4), _entry(0x8825, _LONG, 1, b"\x00" * 4)]
    exif = [_ascii(0xA431, b"SN-0042-XYZ"), _entry(0x927C, 7, 40, b"MAKERNOTE preview of Jane Doe, 40 bytes..")]
    gps = [_ascii(0x0001, b"N"), _entry(0x0002, 5, 3, struct.pack(o + "6I", 48, 1, 51, 1, 29, 1))]
    gps += [_entry(0x001B, 7, 21, b"ASCII\x00\x00\x00Rue de Rivoli")]
    ifd1 = [_entry(0x0201, _LONG, 1, b"\x00" * 4), _entry(0x0202, _LONG, 1, struct.pack(o + "I", len(thumbnail)))]
    at_exif = 8 + _ifd_size(ifd0)
    at_gps = at_exif + _ifd_size(exif)
    at_ifd1 = at_gps + _ifd_size(gps)
    at_thumb = at_ifd1 + _ifd_size(ifd1)
    pointers = {0x8769: struct.pack(o + "I", at_exif), 0x8825: struct.pack(o + "I", at_gps)}
    ifd0 = [e[:3] + (pointers[e[0]],) if e[0] in pointers else e for e in ifd0]
    ifd1[0] = ifd1[0][:3] + (struct.pack(o + "I", at_thumb),)
    head = (b"MM\x00*" if o == ">" else b"II*\x00") + struct.pack(o + "I", 8)
    return (
        head + _ifd(o, ifd0, 8, at_ifd1) + _ifd(o, exif, at_exif, 0) + _ifd(o, gps, at_gps, 0)
        + _ifd(o, ifd1, at_ifd1, 0) + thumbnail
    )  # fmt: skip


def _app(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def camera_jpeg(pixels: np.ndarray, *, exif_header: bytes = b"Exif\x00\x00", **exif) -> tuple[bytes, dict]:
    """A JPEG of ``pixels`` as a phone writes it: EXIF (:func:`camera_exif`), XMP, ICC, an MPF index with a second
    picture (the unfiltered photo) after the end of image, Photoshop IPTC and a comment. Returns (file, parts) where
    parts names the planted pieces (``thumbnail``, ``second``, ``icc``, and each segment) for the checks."""
    jpeg = encode(pixels, ".jpg")
    thumbnail = encode(cv2.resize(pixels, (40, 30), interpolation=cv2.INTER_AREA), ".jpg")
    second = encode(pixels, ".jpg")
    iptc = b"\x1c\x02\x50" + struct.pack(">H", 8) + b"Jane Doe"
    parts = {
        "exif": _app(0xE1, exif_header + camera_exif(thumbnail, **exif)),
        "xmp": _app(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + XMP),
        "icc": icc_app2(),
        "mpf": _app(0xE2, b"MPF\x00MM\x00*\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00"),
        "iptc": _app(0xED, b"Photoshop 3.0\x008BIM\x04\x04\x00\x00" + struct.pack(">I", len(iptc)) + iptc),
        "comment": _app(0xFE, b"shot by Jane Doe"),
    }
    data = jpeg[:2] + b"".join(parts.values()) + jpeg[2:] + second
    return data, {**parts, "thumbnail": thumbnail, "second": second}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def camera_png(pixels: np.ndarray, *, exif_after_data: bool = False, **exif) -> tuple[bytes, dict]:
    """A PNG with an eXIf chunk (:func:`camera_exif`; after the image data when asked), an ICC profile, text chunks
    (tEXt, zTXt, iTXt XMP), tIME."""
    png = encode(pixels, ".png")
    thumbnail = encode(cv2.resize(pixels, (40, 30), interpolation=cv2.INTER_AREA), ".jpg")
    icc = dummy_icc()
    before = [
        _png_chunk(b"iCCP", b"camera\x00\x00" + zlib.compress(icc)),
        _png_chunk(b"eXIf", camera_exif(thumbnail, **exif)),
        _png_chunk(b"tEXt", b"Author\x00Jane Doe"),
        _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"Rue de Rivoli")),
        _png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + XMP),
        _png_chunk(b"tIME", struct.pack(">HBBBBB", 2024, 5, 1, 12, 0, 0)),
    ]
    after = [_png_chunk(b"tEXt", b"Copyright\x00Jane Doe")]
    if exif_after_data:
        after.append(before.pop(1))
    data = png[:33] + b"".join(before) + png[33:-12] + b"".join(after) + png[-12:]
    return data, {"thumbnail": thumbnail, "icc": icc}


def _riff(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(n + struct.pack("<I", len(d)) + d + b"\x00" * (len(d) & 1) for n, d in chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def camera_webp(pixels: np.ndarray, *, exif_prefix: bytes = b"", **exif) -> tuple[bytes, dict]:
    """A lossless WebP (VP8X) with an ICC profile, an EXIF chunk (:func:`camera_exif`, after ``exif_prefix``) and an
    XMP chunk."""
    vp8l = cv2.imencode(".webp", pixels, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    image = vp8l[20 : 20 + struct.unpack("<I", vp8l[16:20])[0]]
    thumbnail = encode(cv2.resize(pixels, (40, 30), interpolation=cv2.INTER_AREA), ".jpg")
    icc = dummy_icc()
    h, w = pixels.shape[:2]
    vp8x = struct.pack("<I", 0x20 | 0x08 | 0x04) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    chunks = [(b"VP8X", vp8x), (b"ICCP", icc), (b"VP8L", image)]
    chunks += [(b"EXIF", exif_prefix + camera_exif(thumbnail, **exif)), (b"XMP ", XMP)]
    return _riff(chunks), {"thumbnail": thumbnail, "icc": icc}


def camera_tiff(pixels: np.ndarray, orientation: int = 6) -> tuple[bytes, dict]:
    """A TIFF (Pillow's writer) with the orientation, an ICC profile, Artist, a description, XMP and a copyright."""
    from PIL import Image

    icc = dummy_icc()
    info = {274: orientation, 315: "Jane Doe", 270: "at Rue de Rivoli", 700: XMP, 33432: "Jane Doe"}
    buf = io.BytesIO()
    Image.fromarray(pixels[:, :, ::-1]).save(buf, "TIFF", tiffinfo=info, icc_profile=icc)
    return buf.getvalue(), {"icc": icc}
