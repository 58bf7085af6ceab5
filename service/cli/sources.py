"""What ``roiconv apply`` reads around the filter: input files and ROI sources.

ROI sources: a mapping file (one JSON object: file name → ROI object), ``NAME.json`` sidecars next to the images, or
a COCO annotation file (boxes, or segmentation polygons where given).
(The metadata written back into outputs is :func:`service.imaging.metadata.copy_metadata`'s.)
"""

from __future__ import annotations

import glob
import json
import math
from pathlib import Path

from ..imaging.metadata import format_of

__all__ = [
    "RoiSource",
    "expand_inputs",
    "grow_roi",
    "has_shapes",
    "load_coco",
    "load_mapping",
]

_SHAPES = ("boxes", "polygons", "circles", "ellipses")


def expand_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(file, output path relative to --out) for every image named by files, folders (recursive) and globs.

    A folder's images keep their path below the folder; files and glob matches keep their name. Raises ValueError
    for an input that matches nothing and for two inputs that would write the same output.
    """
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and format_of(p))
            found += [(p, p.relative_to(path)) for p in files]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            found += [(p, Path(p.name)) for p in matches if p.is_file() and format_of(p)]
        else:
            raise ValueError(f"input {item!r} is not a file, a folder or a glob that matches anything")
    seen: dict[Path, Path] = {}
    for src, rel in found:
        if rel in seen and seen[rel].resolve() != src.resolve():
            raise ValueError(f"{seen[rel]} and {src} would both be written to {rel}; give their folder instead")
        seen[rel] = src
    return list({rel: (src, rel) for src, rel in found}.values())


def _check_roi(roi: object, where: str) -> dict:
    if not isinstance(roi, dict):
        raise ValueError(f'{where}: a ROI must be a JSON object like {{"boxes": [[x0, y0, x1, y1]]}}, got {roi!r}')
    return roi


def load_mapping(path: Path) -> dict[str, dict]:
    """A JSON object mapping file names (or paths relative to the input folder) to ROI objects."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected one JSON object mapping file names to ROI objects")
    return {str(k): _check_roi(v, f"{path}: {k}") for k, v in data.items()}


def load_coco(path: Path, categories: list[str] | None = None) -> dict[str, dict]:
    """file_name → ROI object from a COCO annotation file: segmentation polygons where given, else the bbox.

    ``categories``: names or ids to keep (all when None). RLE segmentations fall back to their bbox.
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
    for ann in data["annotations"]:
        if keep is not None and ann.get("category_id") not in keep:
            continue
        roi = out.setdefault(files[ann["image_id"]], {"boxes": [], "polygons": []})
        seg = ann.get("segmentation")
        if isinstance(seg, list) and seg and all(isinstance(p, list) and len(p) >= 6 for p in seg):
            roi["polygons"] += [[[round(p[i]), round(p[i + 1])] for i in range(0, len(p) - 1, 2)] for p in seg]
        elif "bbox" in ann:
            x, y, w, h = ann["bbox"]
            roi["boxes"].append([math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h)])
    return out


class RoiSource:
    """Finds the ROI object of an image: in the mapping (by path relative to its input, then name, then stem),
    else in a sidecar ``NAME.json`` or ``NAME.ext.json`` next to it; None when there is none."""

    def __init__(self, mapping: dict[str, dict] | None = None) -> None:
        self.mapping = mapping

    def find(self, src: Path, rel: Path) -> dict | None:
        if self.mapping is not None:
            for key in (rel.as_posix(), src.name, src.stem):
                if key in self.mapping:
                    return self.mapping[key]
            return None
        for sidecar in (src.with_suffix(".json"), src.with_name(src.name + ".json")):
            if sidecar.is_file():
                return _check_roi(json.loads(sidecar.read_text()), str(sidecar))
        return None


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
