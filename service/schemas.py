"""Request models: the ``spec`` JSON of POST /convolve, validated field by field.

Every filter of the catalog is a model whose ``name`` selects it; ``model:<name>`` selects a TorchScript model.
Numbers are checked to be finite and within the limits that keep a request bounded; a failure becomes a 422 that
names the field (``spec.filter.ksize``) and the reason.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

__all__ = [
    "AdaptiveGaussianFilter",
    "BoxFilter",
    "DilateFilter",
    "EmbossFilter",
    "ErodeFilter",
    "FILTER_MODELS",
    "GaussianFilter",
    "KernelFilter",
    "LaplacianFilter",
    "ModelFilter",
    "Roi",
    "ScharrFilter",
    "SharpenFilter",
    "SobelFilter",
    "Spec",
]

MAX_KSIZE = 31
_COORD = 1 << 20
Coord = Annotated[int, Field(ge=-_COORD, le=_COORD)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
OddSize = Annotated[int, Field(ge=1, le=MAX_KSIZE, description="odd, 1..31")]


def _odd(name: str, value: int | list[int]) -> int | list[int]:
    for v in value if isinstance(value, list) else [value]:
        if v % 2 == 0:
            raise ValueError(f"{name} must be odd (the anchor is the kernel centre, as in OpenCV), got {v}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GaussianFilter(_Strict):
    """cv2.GaussianBlur(src, (kx, ky), sigma, sigma_y): kernels from cv2.getGaussianKernel."""

    name: Literal["gaussian"]
    ksize: OddSize | Annotated[list[OddSize], Field(min_length=2, max_length=2)] = 5
    sigma: Finite | None = Field(None, gt=0, le=100, description="None: derived from ksize as OpenCV does")
    sigma_y: Finite | None = Field(None, gt=0, le=100, description="None: equal to sigma")

    _odd_ksize = field_validator("ksize")(lambda v: _odd("ksize", v))


class BoxFilter(_Strict):
    """cv2.boxFilter(src, -1, (k, k), normalize=normalize); cv2.blur when normalized."""

    name: Literal["box"]
    ksize: OddSize | Annotated[list[OddSize], Field(min_length=2, max_length=2)] = 3
    normalize: bool = True

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


class ModelFilter(_Strict):
    """A TorchScript CNN from MODELS_DIR: float input in [0, 1] (N, C, H, W) → same-size output, scaled back."""

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
}


def _filter_tag(value: Any) -> str | None:
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    if isinstance(name, str) and name.startswith("model:"):
        return "model"
    return name if name in FILTER_MODELS else None


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
        if not math.isfinite(value):
            raise ValueError(f"weights must be finite, got {value}")
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


class Roi(_Strict):
    """The region of interest: the union of boxes, polygons, circles and the mask file; ``invert`` flips it."""

    boxes: list[Box] = Field(default_factory=list, max_length=1024)
    polygons: list[Annotated[list[Point], Field(max_length=4096)]] = Field(default_factory=list, max_length=256)
    circles: list[Circle] = Field(default_factory=list, max_length=256)
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

    @property
    def given(self) -> bool:
        return bool(self.boxes or self.polygons or self.circles)


class Crop(_Strict):
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class Spec(_Strict):
    """The ``spec`` form field of POST /convolve."""

    crop: Crop | None = None
    output_region: Literal["full", "roi"] = "full"

    filter: FilterSpec
    roi: Roi = Field(default_factory=Roi)
    outside: Literal["keep", "zero"] = "keep"
    border: Literal["reflect101", "reflect", "replicate", "constant", "wrap"] = "reflect101"
    format: Literal["png", "jpeg", "tiff", "webp", "npy"] | None = Field(None, description="None: the input's")
    depth: Literal["same", "float32"] = "same"
    timeout_ms: int | None = Field(None, gt=0, le=3_600_000, description="capped by ROICONV_REQUEST_TIMEOUT_S")
