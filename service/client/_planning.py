"""Request planning without the network: the ROI's rectangle, the filter's halo (from the server's catalog), the
region to upload for a spec (``crop``, ``output_region: "roi"``) and pasting the answer back into the caller's array.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["crop_rect", "crop_request", "filter_halo", "paste_region", "roi_rect"]


def roi_rect(roi: dict, height: int, width: int) -> tuple[int, int, int, int] | None:
    """The bounding rectangle (x0, y0, x1, y1), x1/y1 exclusive, of a ROI object's shapes, clipped to the image.

    None when the ROI is inverted, asks for detection or gives no shapes (the whole image). May be empty (x0 >= x1)
    when the shapes lie outside the image. Ellipses are bounded by their larger axis, whatever the angle.
    """
    rects = _shape_rects(roi, height, width)
    if rects is None:
        return None
    x0, y0 = min(r[0] for r in rects), min(r[1] for r in rects)
    return x0, y0, max(r[2] for r in rects), max(r[3] for r in rects)


def _shape_rects(roi: dict, height: int, width: int) -> list[tuple[int, int, int, int]] | None:
    """Each shape's bounding rectangle clipped to the image (possibly empty); None when inverted, asking for
    detection (the faces are found on the server, anywhere in the image) or without shapes."""
    if roi.get("invert") or roi.get("detect"):
        return None
    spans: list[tuple[float, float, float, float]] = [tuple(b) for b in roi.get("boxes", [])]
    for poly in roi.get("polygons", []):
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
        spans.append((min(xs), min(ys), max(xs) + 1, max(ys) + 1))
    for cx, cy, r in roi.get("circles", []):
        spans.append((cx - r, cy - r, cx + r + 1, cy + r + 1))
    for cx, cy, ax, ay, *_ in roi.get("ellipses", []):
        r = max(abs(ax), abs(ay)) + 1
        spans.append((cx - r, cy - r, cx + r + 1, cy + r + 1))
    if not spans:
        return None
    return [
        (max(0, math.floor(x0)), max(0, math.floor(y0)), min(width, math.ceil(x1)), min(height, math.ceil(y1)))
        for x0, y0, x1, y1 in spans
    ]


def filter_halo(filt: dict | str, catalog: dict | None = None, largest: int | None = None) -> tuple[int, int] | None:
    """(hx, hy): the context pixels a filter reads around each output pixel; None when unknown (send it all).

    The server's word comes first: the catalog's ``halo`` for the filter (GET /filters, as ``{name: {...}}`` or
    ``{"filters": {name: {...}}}``), a number or a rule ``{"rule": "ksize" | "weights" | "block" | "adaptive" |
    "fixed" | "unknown", ...}`` applied to the filter's parameters (defaults from the catalog's schema). The rules
    are the server's alone: without a catalog entry the halo is unknown (None). A size "auto" follows the rule's
    ``auto`` part for ``largest``, the longer side of the ROI's largest shape (None: unknown, send it all).
    """
    filt = {"name": filt} if isinstance(filt, str) else filt
    name = filt.get("name", "")
    entry = _catalog_entry(catalog, name)
    defaults = {k: v.get("default") for k, v in entry.get("schema", {}).get("properties", {}).items()}
    params = {**{k: v for k, v in defaults.items() if v is not None}, **filt}
    halo = entry.get("halo")
    if isinstance(halo, int) and not isinstance(halo, bool):
        return halo, halo
    if isinstance(halo, dict) and "rule" in halo:
        return _rule_halo(halo, params, largest)
    return None


def _rule_halo(rule: dict, params: dict, largest: int | None = None) -> tuple[int, int] | None:
    """A halo rule applied to a filter's parameters; None when the rule or a parameter it needs is missing."""
    kind = rule.get("rule")
    try:
        size_key = "block" if kind == "block" else "ksize"
        if params.get(size_key) == "auto":
            if largest is None or not isinstance(rule.get("auto"), dict):
                return None
            params = {**params, size_key: _auto_size(rule["auto"], largest)}
        if kind == "fixed":
            return int(rule["value"]), int(rule["value"])
        if kind == "ksize":
            k = params.get("ksize", rule.get("default"))
            kx, ky = (k, k) if isinstance(k, int) else (k[0], k[1])
            least = 2 * int(rule.get("min", 0)) + 1
            return max(kx, least) // 2, max(ky, least) // 2
        if kind == "weights":
            shape = np.asarray(params["weights"]).shape
            return shape[-1] // 2, shape[-2] // 2
        if kind == "block":
            return int(params["block"]) - 1, int(params["block"]) - 1
        if kind == "adaptive":
            k = params.get("ksize") or min(31, 2 * math.ceil(3 * float(params.get("sigma_max", 3.0))) + 1)
            return k // 2, k // 2
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return None


def _auto_size(rule: dict, side: int) -> int:
    """The server's "auto" size for a shape whose longer side is ``side`` (GET /filters: halo.auto)."""
    value = float(rule["fraction"]) * side
    size = 2 * math.floor(value / 2) + 1 if rule.get("odd") else round(value)
    return min(max(size, int(rule["least"])), int(rule["most"]))


def _catalog_entry(catalog: dict | None, name: str) -> dict:
    if not catalog:
        return {}
    table = catalog.get("filters", catalog)
    entry = table.get(name) if isinstance(table, dict) else None
    return entry if isinstance(entry, dict) else {}


def crop_rect(spec: dict, height: int, width: int, catalog: dict | None = None) -> tuple[int, int, int, int] | None:
    """The smallest region to upload for ``spec``: the ROI's rectangle grown by the halo (pixelate: out to whole
    cells of the grid anchored at (0, 0)), clipped to the image; None when the whole image must be sent."""
    roi = spec.get("roi") or {}
    rect, rects = roi_rect(roi, height, width), _shape_rects(roi, height, width) or []
    largest = max((max(r[2] - r[0], r[3] - r[1]) for r in rects), default=None)
    filt = spec.get("filter") or {}
    filt = {"name": filt} if isinstance(filt, str) else filt
    halo = filter_halo(filt, catalog, largest)
    if rect is None or halo is None or rect[0] >= rect[2] or rect[1] >= rect[3]:
        return None
    x0, y0, x1, y1 = rect
    hx, hy = halo
    if filt.get("name") == "pixelate":  # whole cells of the grid anchored at (0, 0); halo = block - 1
        b = hx + 1
        x0, y0, x1, y1 = x0 // b * b, y0 // b * b, -(-x1 // b) * b, -(-y1 // b) * b
        return x0, y0, min(width, x1), min(height, y1)
    return max(0, x0 - hx), max(0, y0 - hy), min(width, x1 + hx), min(height, y1 + hy)


def crop_request(pixels: np.ndarray, spec: dict, catalog: dict | None = None) -> tuple[np.ndarray, dict] | None:
    """The region of ``pixels`` (H, W[, C]) to send and the spec with ``crop`` and ``output_region: "roi"``; None
    when the whole image should be sent (no bounded ROI, unknown halo, or a region over half the image)."""
    h, w = pixels.shape[:2]
    rect = crop_rect(spec, h, w, catalog)
    if rect is None or (rect[2] - rect[0]) * (rect[3] - rect[1]) > 0.5 * h * w:
        return None
    x0, y0, x1, y1 = rect
    crop = {"x": x0, "y": y0, "width": w, "height": h}  # the full image's size; the upload is the region
    return pixels[y0:y1, x0:x1], {**spec, "crop": crop, "output_region": "roi"}


def paste_region(
    base: np.ndarray, result: np.ndarray, rect: str, outside: str = "keep", *, inplace: bool = False
) -> np.ndarray:
    """A copy of ``base`` (H, W[, C]) with ``result`` written at ``rect`` ("x0,y0,x1,y1", the X-ROI-Rect header);
    zeros around it when ``outside`` is "zero" or the result has other channels than ``base``. ``inplace=True``
    writes into ``base`` itself when it can hold the result (same dtype and channels, outside "keep")."""
    x0, y0, x1, y1 = (int(v) for v in rect.split(","))
    zero = outside == "zero" or result.ndim != base.ndim or result.shape[2:] != base.shape[2:]
    shape = base.shape[:2] + result.shape[2:]
    if zero:
        out = np.zeros(shape, result.dtype)
    else:
        out = base if inplace and base.dtype == result.dtype else base.astype(result.dtype, copy=True)
    out[y0:y1, x0:x1] = result.reshape((y1 - y0, x1 - x0) + result.shape[2:])
    return out
