"""The filter models of a request's ``spec.filter``: one pydantic model a catalog filter, ``name`` selecting it.

``model:<name>`` selects a model from MODELS_DIR. Sizes are odd (the anchor is the kernel centre, as in OpenCV) and
bounded; ``"auto"`` sizes a blur to each ROI piece. :data:`FilterSpec` is the union that
:class:`~service.imaging.spec.Spec` validates; an unknown name fails with the ``unknown_filter`` error type.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

__all__ = [
    "AUTO",
    "FILTER_MODELS",
    "MAX_BLUR_KSIZE",
    "MAX_KSIZE",
    "AdaptiveGaussianFilter",
    "BoxFilter",
    "DilateFilter",
    "EmbossFilter",
    "ErodeFilter",
    "FillFilter",
    "FilterSpec",
    "Finite",
    "GaussianFilter",
    "KernelFilter",
    "LaplacianFilter",
    "MedianFilter",
    "ModelFilter",
    "PixelateFilter",
    "ScharrFilter",
    "SharpenFilter",
    "SobelFilter",
    "StrictModel",
]

MAX_KSIZE = 31
Finite = Annotated[float, Field(allow_inf_nan=False)]
OddSize = Annotated[int, Field(ge=1, le=MAX_KSIZE, description="odd, 1..31")]
MAX_BLUR_KSIZE = 255
BlurSize = Annotated[int, Field(ge=1, le=MAX_BLUR_KSIZE, description="odd, 1..255")]
AUTO = "auto"
Auto = Literal["auto"]
_AUTO_DOC = '"auto" (the default): sized to each ROI piece (docs/anonymization.md)'
MAX_WEIGHT = 1e6  # |weight| bound: any sum of kernel × 16-bit pixels stays far inside float32


class StrictModel(BaseModel):
    """The base of every spec model: unknown keys and non-JSON types (booleans or strings for numbers) rejected."""

    model_config = ConfigDict(extra="forbid", strict=True)


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


class GaussianFilter(StrictModel):
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


class BoxFilter(StrictModel):
    """cv2.boxFilter(src, -1, (k, k), normalize=normalize); cv2.blur when normalized."""

    name: Literal["box"]
    ksize: BlurSize | Annotated[list[BlurSize], Field(min_length=2, max_length=2)] | Auto = Field(
        AUTO, description=f"odd, 1..255, or [kx, ky], or {_AUTO_DOC}"
    )
    normalize: bool = True

    _auto_ksize = field_validator("ksize", mode="before")(_size_or_auto("ksize"))
    _odd_ksize = field_validator("ksize")(lambda v: _odd("ksize", v))


class _Derivative(StrictModel):
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


class SharpenFilter(StrictModel):
    """cv2.filter2D with [[0, -a, 0], [-a, 1 + 4a, -a], [0, -a, 0]] (a = amount)."""

    name: Literal["sharpen"]
    amount: Finite = Field(1.0, ge=0, le=100)


class EmbossFilter(StrictModel):
    """cv2.filter2D with [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]."""

    name: Literal["emboss"]


class KernelFilter(StrictModel):
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


class AdaptiveGaussianFilter(StrictModel):
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


class _Morph(StrictModel):
    ksize: OddSize | Annotated[list[OddSize], Field(min_length=2, max_length=2)] = 3
    shape: Literal["rect", "ellipse", "cross"] = "rect"

    _odd_ksize = field_validator("ksize")(lambda v: _odd("ksize", v))


class DilateFilter(_Morph):
    """cv2.dilate(src, cv2.getStructuringElement(shape, ksize))."""

    name: Literal["dilate"]


class ErodeFilter(_Morph):
    """cv2.erode(src, cv2.getStructuringElement(shape, ksize))."""

    name: Literal["erode"]


class MedianFilter(StrictModel):
    """cv2.medianBlur(src, ksize): ksize 3..255 on 8-bit images, 3 or 5 on 16-bit and float32 (replicate border)."""

    name: Literal["median"]
    ksize: Annotated[int, Field(ge=3, le=MAX_BLUR_KSIZE)] | Auto = Field(
        AUTO, description=f"odd, 3..255 (8-bit), 3 or 5 (16-bit, float32), or {_AUTO_DOC}"
    )

    _auto_ksize = field_validator("ksize", mode="before")(_size_or_auto("ksize"))
    _odd_ksize = field_validator("ksize")(lambda v: _odd("ksize", v))


class PixelateFilter(StrictModel):
    """block×block cells anchored at the image's (0, 0); each ROI pixel takes the mean of its whole cell (every
    pixel of the cell, inside the ROI or not), rounded half to even on 8/16-bit images."""

    name: Literal["pixelate"]
    block: Annotated[int, Field(ge=1, le=4096)] | Auto = Field(
        AUTO, description=f"cell size in pixels, 1..4096, or {_AUTO_DOC}"
    )

    _auto_block = field_validator("block", mode="before")(_size_or_auto("block"))


class FillFilter(StrictModel):
    """Every ROI pixel set to ``color``: one value per color channel (BGR order) or one for all."""

    name: Literal["fill"]
    color: list[Finite] = Field(
        default_factory=lambda: [0.0], min_length=1, max_length=3, description="1 or C values within the depth's range"
    )


class ModelFilter(StrictModel):
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
