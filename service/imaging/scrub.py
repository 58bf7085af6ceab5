"""What an output file carries besides its pixels: the metadata policy, applied to every encoded output.

``strip`` (the default) keeps only what the pixels need to display as they should: the input's ICC profile and,
when the pixels are kept as stored (a JPEG whose blocks are kept), an EXIF block holding the Orientation tag alone.
Everything else goes: EXIF (thumbnails in IFD1, GPS, names, serial numbers, MakerNote and its previews), XMP,
IPTC/Photoshop APP13, MPF and any picture after the end of the image, comments (JPEG COM), PNG text chunks (tEXt,
zTXt, iTXt), eXIf and tIME, JFIF thumbnails. ``keep`` (unsafe for anonymization) copies the input's metadata
segments and chunks byte for byte into an output of the same format, the EXIF orientation set to what the written
pixels need; TIFF outputs carry the ICC profile and the orientation only, whatever the policy.

:func:`write` takes the encoded body (OpenCV's encode, or the block path's copy of the input, which holds the input's
segments) and returns the file to send. :func:`exif_orientation` is the minimal EXIF block every viewer reads alike.
"""

from __future__ import annotations

import struct
import zlib

from .metadata import (
    Orientation,
    icc_profile,
    jpeg_end,
    jpeg_segments,
    png_chunks,
    riff_chunks,
)

__all__ = ["POLICIES", "exif_orientation", "rewrap", "set_orientation", "write"]

POLICIES = ("strip", "keep")
_JPEG_KEPT_APPS = {0xE0: b"JFIF\x00", 0xEE: b"Adobe"}  # colour model markers: what the decoder needs
_PNG_DISPLAY = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"sRGB", b"gAMA", b"cHRM", b"sBIT", b"cICP"}
_PNG_PIXEL_FORMAT = {b"tRNS", b"bKGD", b"sBIT", b"hIST", b"sPLT", b"acTL", b"fcTL", b"fdAT"}
_WEBP_IMAGE = (b"ALPH", b"VP8 ", b"VP8L")
_ICC_CHUNK = 65519  # profile bytes per JPEG APP2 segment


def write(body: bytes, fmt: str, source: bytes | None, source_fmt: str | None, policy: str, orientation: int) -> bytes:
    """``body`` (an encoded ``fmt`` file) with the metadata ``policy`` keeps from ``source`` (the uploaded file, of
    ``source_fmt``; None when the pixels came as an array). ``orientation`` (1..8) is the EXIF orientation the
    written pixels need to display as the input did (1 when they are upright)."""
    if policy not in POLICIES:
        raise ValueError(f"metadata policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    icc = icc_profile(source, source_fmt) if source is not None and source_fmt is not None else None
    keep = policy == "keep" and source is not None and source_fmt == fmt
    if fmt == "jpeg":
        return _jpeg(body, icc, orientation, _jpeg_kept(source, orientation) if keep else [])
    if fmt == "png":
        return _png(body, icc, orientation, _png_kept(source, orientation) if keep else [])
    if fmt == "webp":
        return _webp(body, icc, orientation, _webp_kept(source, orientation) if keep else [])
    if fmt == "tiff":
        return _tiff(body, icc, orientation)
    return body  # bmp, npy: nothing but pixels


def rewrap(data: bytes, fmt: str, found: Orientation, policy: str) -> bytes | None:
    """``data`` with its coded pixels as they are and its metadata by ``policy``, or None when that needs a decode
    (TIFF; an animated WebP; an orientation viewers could read differently, which fails closed: written upright)."""
    if policy == "keep" or fmt in ("bmp", "npy"):
        return data
    animated = fmt == "webp" and any(name == b"ANIM" for name, _, _ in riff_chunks(data))
    if fmt not in ("jpeg", "png", "webp") or animated or not (found.clean or found.value == 1):
        return None
    try:
        return write(data, fmt, data, fmt, policy, found.value if found.clean else 1)
    except (ValueError, IndexError, struct.error):  # a container its decoder tolerates but this walk does not
        return None


def exif_orientation(value: int) -> bytes:
    """A TIFF structure (little-endian) whose IFD0 holds one entry: Orientation = ``value`` as a single SHORT."""
    return b"II*\x00" + struct.pack("<IHHHIHHI", 8, 1, 0x0112, 3, 1, value, 0, 0)


def set_orientation(tiff: bytes, value: int) -> bytes:
    """``tiff`` (an EXIF block from its byte-order mark on) with every IFD0 Orientation entry's value set to
    ``value`` (SHORT or LONG entries); unchanged when it cannot be read."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    out = bytearray(tiff)
    try:
        (offset,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[offset : offset + 2])
        for i in range(min(count, 4096)):
            entry = offset + 2 + 12 * i
            tag, typ = struct.unpack(order + "HH", tiff[entry : entry + 4])
            if tag == 0x0112 and typ == 3:
                out[entry + 8 : entry + 12] = struct.pack(order + "HH", value, 0)
            elif tag == 0x0112 and typ == 4:
                out[entry + 8 : entry + 12] = struct.pack(order + "I", value)
    except (struct.error, TypeError):
        return tiff
    return bytes(out)


# --- JPEG -----------------------------------------------------------------------------------------------------------


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def _jpeg(body: bytes, icc: bytes | None, orientation: int, kept: list[bytes]) -> bytes:
    """SOI, JFIF (its thumbnail dropped), the EXIF orientation, the ICC profile (or the kept segments), then the
    body's tables and scans up to its end of image."""
    head, rest, colour = [], len(body), []
    for marker, pos, length in jpeg_segments(body):
        if marker == 0xDA:
            rest = pos
            break
        segment = body[pos : pos + 2 + length]
        if marker in _JPEG_KEPT_APPS and segment[4:].startswith(_JPEG_KEPT_APPS[marker]):
            colour.append(_segment(0xE0, segment[4:16] + b"\x00\x00") if marker == 0xE0 else segment)
        elif not (0xE0 <= marker <= 0xEF or marker == 0xFE):
            head.append(segment)
    extra = kept
    if not kept:
        extra = [] if orientation == 1 else [_segment(0xE1, b"Exif\x00\x00" + exif_orientation(orientation))]
        if icc:
            parts = [icc[i : i + _ICC_CHUNK] for i in range(0, len(icc), _ICC_CHUNK)]
            extra += [_segment(0xE2, b"ICC_PROFILE\x00" + bytes([n + 1, len(parts)]) + p) for n, p in enumerate(parts)]
    return b"\xff\xd8" + b"".join(colour[:1] + extra + colour[1:] + head) + body[rest : jpeg_end(body)]


def _jpeg_kept(source: bytes, orientation: int) -> list[bytes]:
    """Every APPn and COM segment of ``source`` but its colour markers, EXIF orientation set to ``orientation``."""
    kept = []
    try:
        for marker, pos, length in jpeg_segments(source):
            if marker == 0xDA:
                break
            segment = source[pos : pos + 2 + length]
            if marker in _JPEG_KEPT_APPS and segment[4:].startswith(_JPEG_KEPT_APPS[marker]):
                continue
            if marker == 0xE1 and segment[4:9] == b"Exif\x00":
                segment = segment[:10] + set_orientation(segment[10:], orientation)
            if 0xE0 <= marker <= 0xEF or marker == 0xFE:
                kept.append(segment)
    except ValueError:  # a byte where a marker should be: what came before it
        pass
    return kept


# --- PNG ------------------------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(body: bytes, icc: bytes | None, orientation: int, kept: list[bytes]) -> bytes:
    """The body's display chunks (image, palette, transparency, colour), after IHDR the ICC profile (iCCP, in place
    of sRGB) and the EXIF orientation (eXIf), or the kept chunks."""
    if not kept and not icc and orientation == 1 and _display_only(body):
        return body  # what the walk below would join again, byte for byte (a 4K PNG: 24 ms of CRCs and copies)
    chunks = [(kind, c) for kind, c in png_chunks(body) if kind in _PNG_DISPLAY]
    if not chunks or chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
        raise ValueError("the PNG's chunks cannot be walked to IEND")
    extra = kept
    if not kept:
        extra = [_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc))] if icc else []
        extra += [_chunk(b"eXIf", exif_orientation(orientation))] if orientation != 1 else []
    if any(c[4:8] == b"iCCP" for c in extra):  # a profile and sRGB may not both be given
        chunks = [(kind, c) for kind, c in chunks if kind != b"sRGB"]
    return body[:8] + chunks[0][1] + b"".join(extra) + b"".join(c for _, c in chunks[1:])


def _display_only(body: bytes) -> bool:
    """Whether the encoder's PNG ``body`` is only display chunks from IHDR to IEND, IEND its last bytes (read from
    the chunk headers: the encoder wrote their CRCs)."""
    pos, kinds = 8, []
    while pos + 12 <= len(body):
        length, kind = struct.unpack(">I4s", body[pos : pos + 8])
        kinds.append(kind)
        pos += 12 + length
        if kind == b"IEND" or kind not in _PNG_DISPLAY:
            break
    return pos == len(body) and kinds[:1] == [b"IHDR"] and kinds[-1:] == [b"IEND"] and len(kinds) > 1


def _png_kept(source: bytes, orientation: int) -> list[bytes]:
    """Every ancillary chunk of ``source`` but those tied to its pixel format, eXIf orientation set."""
    kept = []
    for kind, c in png_chunks(source):
        if kind[0:1].islower() and kind not in _PNG_PIXEL_FORMAT:
            kept.append(_chunk(b"eXIf", set_orientation(c[8:-4], orientation)) if kind == b"eXIf" else c)
    return kept


# --- WebP -----------------------------------------------------------------------------------------------------------


def _webp(body: bytes, icc: bytes | None, orientation: int, kept: list[tuple[bytes, bytes]]) -> bytes:
    """The body's image chunks in a RIFF with a VP8X header when it carries an ICC profile, an EXIF block (the
    orientation alone, or the kept one) or alpha."""
    chunks = {name: body[pos + 8 : pos + 8 + size] for name, pos, size in riff_chunks(body)}
    image = [(n, chunks[n]) for n in _WEBP_IMAGE if n in chunks]
    if not any(n in chunks for n in (b"VP8 ", b"VP8L")):
        raise ValueError("the WebP's chunks hold no image")
    meta = dict(kept)
    if not kept:
        meta = {b"ICCP": icc} if icc else {}
        if orientation != 1:
            meta[b"EXIF"] = exif_orientation(orientation)
    alpha = b"ALPH" in chunks or (b"VP8L" in chunks and chunks[b"VP8L"][4] & 0x10 != 0)
    alpha |= b"VP8X" in chunks and chunks[b"VP8X"][0] & 0x10 != 0
    if not meta and not alpha:
        return _riff(image)
    from .codec import header_size  # the canvas: the image's size

    width, height = header_size(body, "webp")
    flags = 0x20 * (b"ICCP" in meta) | 0x10 * alpha | 0x08 * (b"EXIF" in meta) | 0x04 * (b"XMP " in meta)
    vp8x = struct.pack("<I", flags) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    order = [(b"VP8X", vp8x)] + ([(b"ICCP", meta[b"ICCP"])] if b"ICCP" in meta else []) + image
    return _riff(order + [(n, meta[n]) for n in (b"EXIF", b"XMP ") if n in meta])


def _webp_kept(source: bytes, orientation: int) -> list[tuple[bytes, bytes]]:
    kept = []
    for name, pos, size in riff_chunks(source):
        data = source[pos + 8 : pos + 8 + size]
        if name in (b"ICCP", b"XMP "):
            kept.append((name, data))
        elif name == b"EXIF":
            head = 6 if data.startswith(b"Exif\x00") else 0
            kept.append((name, data[:head] + set_orientation(data[head:], orientation)))
    return kept


def _riff(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(n + struct.pack("<I", len(d)) + d + b"\x00" * (len(d) & 1) for n, d in chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


# --- TIFF -----------------------------------------------------------------------------------------------------------


def _tiff(body: bytes, icc: bytes | None, orientation: int) -> bytes:
    """The body (OpenCV's TIFF: image tags only) with IFD0 rewritten at its end to add the orientation (tag 274)
    and the ICC profile (tag 34675) when they are needed."""
    if orientation == 1 and not icc:
        return body
    order = {b"II": "<", b"MM": ">"}[body[:2]]
    (offset,) = struct.unpack(order + "I", body[4:8])
    (count,) = struct.unpack(order + "H", body[offset : offset + 2])
    end = offset + 2 + 12 * count
    entries = {struct.unpack(order + "H", body[e : e + 2])[0]: body[e : e + 12] for e in range(offset + 2, end, 12)}
    out = bytearray(body + b"\x00" * (len(body) & 1))
    if orientation != 1:
        entries[274] = struct.pack(order + "HHIHH", 274, 3, 1, orientation, 0)
    if icc:
        entries[34675] = struct.pack(order + "HHII", 34675, 7, len(icc), len(out))
        out += icc + b"\x00" * (len(icc) & 1)
    ifd = struct.pack(order + "H", len(entries)) + b"".join(entries[t] for t in sorted(entries))
    out[4:8] = struct.pack(order + "I", len(out))
    return bytes(out + ifd + body[end : end + 4])  # the next IFD's offset, as it was
