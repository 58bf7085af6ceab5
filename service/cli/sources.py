"""What ``roiconv apply`` reads and writes around the filter: input files, ROI sources, metadata.

ROI sources: a mapping file (one JSON object: file name → ROI object), ``NAME.json`` sidecars next to the images, or
a COCO annotation file (boxes, or segmentation polygons where given). Metadata: EXIF (orientation reset to 1, since
the pixels come out upright) and the ICC profile are copied from a JPEG or PNG input into the output of the same
format; other formats are written as OpenCV encodes them.
"""

from __future__ import annotations

import difflib
import glob
import json
import math
import os
import struct
import zlib
from pathlib import Path

__all__ = [
    "IMAGE_SUFFIXES",
    "RoiSource",
    "check_entry",
    "copy_metadata",
    "expand_inputs",
    "grow_roi",
    "has_shapes",
    "load_coco",
    "load_mapping",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")
_SHAPES = ("boxes", "polygons", "circles", "ellipses")


def expand_inputs(
    inputs: list[str], *, exclude: Path | None = None, follow_symlinks: bool = False
) -> list[tuple[Path, Path]]:
    """(file, output path relative to --out) for every image named by files, folders (recursive) and globs.

    A folder's images keep their path below the folder; files and glob matches keep their name. Nothing under
    ``exclude`` (the output folder) is read. In a folder, a link (file or folder) that leads outside the folder is
    refused (ValueError) unless ``follow_symlinks``. Raises ValueError for an input that matches nothing and for two
    inputs that would write the same output.
    """
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [(p, p.relative_to(path)) for p in _walk(path, exclude, follow_symlinks)]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            found += [
                (p, Path(p.name))
                for p in matches
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not _under(p, exclude)
            ]
        else:
            raise ValueError(f"input {item!r} is not a file, a folder or a glob that matches anything")
    seen: dict[Path, Path] = {}
    for src, rel in found:
        if rel in seen and seen[rel].resolve() != src.resolve():
            raise ValueError(f"{seen[rel]} and {src} would both be written to {rel}; give their folder instead")
        seen[rel] = src
    return list({rel: (src, rel) for src, rel in found}.values())


def _under(path: Path, folder: Path | None) -> bool:
    """True when ``path`` (resolved) is ``folder`` or lies below it."""
    return folder is not None and path.resolve().is_relative_to(folder.resolve())


def _walk(folder: Path, exclude: Path | None, follow_symlinks: bool) -> list[Path]:
    """The images below ``folder``, sorted, without entering ``exclude``; links leading outside ``folder`` raise
    ValueError unless ``follow_symlinks`` (then each real folder is read once, so link loops end)."""
    root = folder.resolve()
    files: list[Path] = []
    seen: set[Path] = set()
    for here, dirs, names in os.walk(folder, followlinks=follow_symlinks):
        real = Path(here).resolve()
        if real in seen or _under(real, exclude):
            dirs[:] = []
            continue
        seen.add(real)
        for name in list(dirs) + names:
            entry = Path(here) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(root) and not follow_symlinks:
                raise ValueError(
                    f"{entry} is a link to {entry.resolve()}, outside the input folder {folder}; "
                    "pass --follow-symlinks to read what it leads to"
                )
        dirs[:] = sorted(d for d in dirs if not _under(Path(here) / d, exclude))
        files += [Path(here) / n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(p for p in files if p.is_file())


def _check_roi(roi: object, where: str) -> dict:
    if not isinstance(roi, dict):
        shown = repr(roi)[:100]
        raise ValueError(f'{where}: a ROI must be a JSON object like {{"boxes": [[x0, y0, x1, y1]]}}, got {shown}')
    return roi


def check_entry(where: str, roi: dict, filt: dict, outside: str, border: str) -> str | None:
    """None when the request this ROI entry makes is valid for the server's own spec model; else a message naming
    ``where`` (the file and entry), the key at fault and the reason, with the closest valid key for an unknown one."""
    from pydantic import ValidationError

    from ..imaging.spec import Spec
    from ..server.errors import from_validation

    try:
        Spec.model_validate({"filter": filt, "roi": roi, "outside": outside, "border": border})
    except ValidationError as exc:
        err = from_validation(exc, "spec")
        return f"{where}: {err.field}: {err.reason}"
    return None


def load_mapping(path: Path) -> dict[str, dict]:
    """A JSON object mapping file names (or paths relative to the input folder) to ROI objects."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected one JSON object mapping file names to ROI objects")
    return {str(k): _check_roi(v, f"{path}: entry {k!r}") for k, v in data.items()}


def load_coco(path: Path, categories: list[str] | None = None) -> dict[str, dict]:
    """file_name → ROI object from a COCO annotation file: segmentation polygons where given, else the bbox.

    ``categories``: names or ids to keep (all when None). RLE segmentations fall back to their bbox. Every image of
    the file gets an entry (no shapes when none of its annotations is kept); an annotation whose image is not in
    ``images`` or whose bbox is not [x, y, w, h] raises ValueError naming it.
    """
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{path}: not a COCO annotation file (needs 'images' and 'annotations')")
    names = {c["id"]: str(c.get("name", c["id"])) for c in data.get("categories", [])}
    keep = None
    if categories is not None:
        wanted = set(categories)
        keep = {cid for cid, name in names.items() if name in wanted or str(cid) in wanted}
        unknown = wanted - {names[c] for c in keep} - {str(c) for c in keep}
        if unknown:
            raise ValueError(f"{path}: unknown categories {sorted(unknown)}; the file has {sorted(names.values())}")
    files = {img["id"]: str(img["file_name"]) for img in data["images"]}
    out: dict[str, dict] = {name: {"boxes": [], "polygons": []} for name in files.values()}
    for i, ann in enumerate(data["annotations"]):
        if keep is not None and ann.get("category_id") not in keep:
            continue
        if ann.get("image_id") not in files:
            raise ValueError(f"{path}: annotations[{i}]: image_id {ann.get('image_id')!r} is not in 'images'")
        roi = out[files[ann["image_id"]]]
        seg = ann.get("segmentation")
        if isinstance(seg, list) and seg and all(isinstance(p, list) and len(p) >= 6 for p in seg):
            roi["polygons"] += [[[round(p[i]), round(p[i + 1])] for i in range(0, len(p) - 1, 2)] for p in seg]
        elif _is_bbox(ann.get("bbox")):
            x, y, w, h = ann["bbox"]
            roi["boxes"].append([math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h)])
        else:
            raise ValueError(f"{path}: annotations[{i}]: no polygon segmentation and no bbox [x, y, width, height]")
    return out


def _is_bbox(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


class RoiSource:
    """Finds the ROI object of an image.

    With a mapping (``--roi`` or ``--coco``) the keys are tried in this order, exactly (case and extension count):
    the image's path relative to its input folder (``sub/a.png``, with ``/``), its file name (``a.png``), its name
    without the extension (``a``). Without one, a sidecar ``NAME.json`` or ``NAME.ext.json`` next to the image.
    :meth:`find` returns (where the ROI came from, the ROI object) or None; :meth:`unused` lists the mapping's keys
    that no image took; :meth:`near_miss` suggests a key for an image that found none.
    """

    def __init__(self, mapping: dict[str, dict] | None = None, origin: str = "") -> None:
        self.mapping, self.origin = mapping, origin
        self.used: set[str] = set()

    def find(self, src: Path, rel: Path) -> tuple[str, dict] | None:
        if self.mapping is not None:
            for key in (rel.as_posix(), src.name, src.stem):
                if key in self.mapping:
                    self.used.add(key)
                    return f"{self.origin}: entry {key!r}", self.mapping[key]
            return None
        for sidecar in (src.with_suffix(".json"), src.with_name(src.name + ".json")):
            if sidecar.is_file():
                try:
                    data = json.loads(sidecar.read_text())
                except ValueError as exc:
                    raise ValueError(f"{sidecar}: not valid JSON: {exc}") from None
                return str(sidecar), _check_roi(data, str(sidecar))
        return None

    def unused(self) -> list[str]:
        return [] if self.mapping is None else sorted(set(self.mapping) - self.used)

    def near_miss(self, src: Path, rel: Path) -> str | None:
        """The mapping key that this image nearly matches (other case, other extension, other folder, a typo)."""
        if not self.mapping:
            return None
        wanted = {rel.as_posix().casefold(), src.name.casefold(), src.stem.casefold()}
        for key in self.mapping:
            folded = key.casefold()
            if folded in wanted or Path(folded).stem in wanted or Path(folded).name in wanted:
                return key
        close = difflib.get_close_matches(src.name, list(self.mapping), n=1, cutoff=0.85)
        return close[0] if close else None


def grow_roi(roi: dict, scale: float) -> dict:
    """Each shape scaled by ``scale`` about its own centre (boxes, polygons, circles' radii, ellipses' axes)."""
    if scale == 1.0:
        return roi
    out = dict(roi)
    boxes = []
    for x0, y0, x1, y1 in roi.get("boxes", []):
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * scale / 2, (y1 - y0) * scale / 2
        boxes.append([math.floor(cx - hw), math.floor(cy - hh), math.ceil(cx + hw), math.ceil(cy + hh)])
    polys = []
    for poly in roi.get("polygons", []):
        cx = (min(p[0] for p in poly) + max(p[0] for p in poly)) / 2
        cy = (min(p[1] for p in poly) + max(p[1] for p in poly)) / 2
        polys.append([[round(cx + (x - cx) * scale), round(cy + (y - cy) * scale)] for x, y in poly])
    out.update(
        boxes=boxes,
        polygons=polys,
        circles=[[cx, cy, round(r * scale)] for cx, cy, r in roi.get("circles", [])],
        ellipses=[
            [cx, cy, round(ax * scale), round(ay * scale), *rest] for cx, cy, ax, ay, *rest in roi.get("ellipses", [])
        ],
    )
    return {k: v for k, v in out.items() if v or k not in _SHAPES}


def has_shapes(roi: dict) -> bool:
    """True when the ROI selects something: a shape, or ``invert``."""
    return bool(roi.get("invert")) or any(roi.get(k) for k in _SHAPES)


# --- metadata ------------------------------------------------------------------------------------------------------


def copy_metadata(source: bytes, encoded: bytes, fmt: str) -> bytes:
    """``encoded`` with the EXIF and ICC profile of ``source`` put back (JPEG and PNG; others unchanged)."""
    if fmt == "jpeg" and source.startswith(b"\xff\xd8") and encoded.startswith(b"\xff\xd8"):
        segments = [_reset_orientation(s) if s[4:10] == b"Exif\x00\x00" else s for s in _jpeg_app_segments(source)]
        return encoded[:2] + b"".join(segments) + encoded[2:] if segments else encoded
    if fmt == "png" and source.startswith(b"\x89PNG") and encoded.startswith(b"\x89PNG"):
        chunks = [c for kind, c in _png_chunks(source) if kind in (b"iCCP", b"eXIf", b"sRGB", b"gAMA", b"cHRM")]
        if not chunks:
            return encoded
        ihdr_end = 8 + 12 + struct.unpack(">I", encoded[8:12])[0]
        return encoded[:ihdr_end] + b"".join(chunks) + encoded[ihdr_end:]
    return encoded


def _jpeg_app_segments(data: bytes) -> list[bytes]:
    """The APP1 Exif and APP2 ICC_PROFILE segments (marker included) before the image data."""
    out, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xDA, 0xD9):  # start of scan, end of image
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segment = data[pos : pos + 2 + length]
        if (marker == 0xE1 and segment[4:10] == b"Exif\x00\x00") or (
            marker == 0xE2 and segment[4:16] == b"ICC_PROFILE\x00"
        ):
            out.append(segment)
        pos += 2 + length
    return out


def _reset_orientation(segment: bytes) -> bytes:
    """The APP1 Exif segment with its Orientation tag (0x0112) set to 1 (upright), when it has one."""
    tiff = 10  # offset of the TIFF header inside the segment
    order = {b"II": "<", b"MM": ">"}.get(segment[tiff : tiff + 2])
    if order is None or len(segment) < tiff + 8:
        return segment
    try:
        (ifd,) = struct.unpack(order + "I", segment[tiff + 4 : tiff + 8])
        (count,) = struct.unpack(order + "H", segment[tiff + ifd : tiff + ifd + 2])
        for i in range(count):
            entry = tiff + ifd + 2 + 12 * i
            tag, typ = struct.unpack(order + "HH", segment[entry : entry + 4])
            if tag == 0x0112 and typ == 3:
                return segment[: entry + 8] + struct.pack(order + "H", 1) + segment[entry + 10 :]
    except struct.error:
        return segment
    return segment


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos : pos + 12 + length]
        if len(chunk) < 12 + length or zlib.crc32(chunk[4:-4]) != struct.unpack(">I", chunk[-4:])[0]:
            break
        out.append((kind, chunk))
        if kind == b"IEND":
            break
        pos += 12 + length
    return out
