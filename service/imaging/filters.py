"""The filter catalog → weights: OpenCV's kernels as convcore weights, the key that batches share, each filter's
halo and the engine that runs it.

On the CPU every filter with an OpenCV equivalent runs through OpenCV itself (:mod:`.opencv_engine`; ``op.extra`` holds
the spec's parameters for it). The torch engine (convcore: CUDA devices, 4-D kernels that mix channels, the
adaptive gaussian, models) takes classic filters as one (1, 1, kh, kw) float32 kernel applied to every color channel
as its own 1-channel image; the kernels come from OpenCV (cv2.getGaussianKernel, cv2.getDerivKernels,
cv2.getStructuringElement), so its results match cv2 within the rounding of OpenCV's fixed-point paths (±1 on 8-bit).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np
from pydantic import BaseModel

from .filter_specs import AUTO, FILTER_MODELS, MAX_BLUR_KSIZE, MAX_KSIZE, ModelFilter

__all__ = [
    "BORDERS",
    "CV_ONLY",
    "TORCH_ONLY",
    "AUTO_SIZES",
    "FilterOp",
    "auto_size",
    "build_filter",
    "catalog_schemas",
    "engine",
    "engine_of",
    "halo",
    "halo_rule",
    "piece_side",
    "sized",
    "sized_op",
]

# spec border name → (convcore padding_mode, OpenCV border flag)
BORDERS = {
    "reflect101": ("reflect", cv2.BORDER_REFLECT_101),
    "reflect": ("symmetric", cv2.BORDER_REFLECT),
    "replicate": ("replicate", cv2.BORDER_REPLICATE),
    "constant": ("zeros", cv2.BORDER_CONSTANT),
    "wrap": ("circular", cv2.BORDER_WRAP),
}
_SHAPES = {"rect": cv2.MORPH_RECT, "ellipse": cv2.MORPH_ELLIPSE, "cross": cv2.MORPH_CROSS}
CV_ONLY = frozenset({"median", "pixelate", "fill"})  # OpenCV / numpy on the CPU, whatever the devices
TORCH_ONLY = frozenset({"adaptive", "mix", "model"})  # op kinds convcore runs (batched on the pool's devices)


@dataclass(frozen=True)
class FilterOp:
    """A resolved filter: what a worker needs to run it, and ``key`` (equal keys share weights → one batch).

    ``kind`` is "conv" (``weight`` float32 ndarray[1, 1, kh, kw], per channel), "mix" (``weight`` ndarray[O, C, kh,
    kw]), "morph" (``structure`` bool ndarray[kh, kw], ``mode`` dilation/erosion), "adaptive" (``sigma_range``) or
    "model" (``model`` name), or "cv" (median, pixelate, fill: the OpenCV engine only). ``auto``: a size is
    "auto" (the OpenCV engine, which resolves it per ROI piece with :func:`sized_op`).
    """

    key: str
    kind: str
    name: str
    padding_mode: str
    ksize: tuple[int, int]
    weight: np.ndarray | None = None
    bias: float = 0.0
    structure: np.ndarray | None = None
    mode: str = ""
    sigma_range: tuple[float, float] = (0.0, 0.0)
    model: str = ""
    extra: dict = field(default_factory=dict)
    auto: bool = False


def build_filter(spec: BaseModel, border: str) -> FilterOp:
    """Resolve a validated filter spec with a border name into a :class:`FilterOp` (cached by its JSON)."""
    return _build(spec.model_dump_json(), border)


@lru_cache(maxsize=256)
def _build(spec_json: str, border: str) -> FilterOp:
    params = json.loads(spec_json)
    name = params["name"]
    mode = BORDERS[border][0]
    key = f"{spec_json}|{border}"
    if name.startswith("model:"):
        return FilterOp(key, "model", name, mode, (1, 1), model=name.split(":", 1)[1])
    if _is_auto(params):
        return FilterOp(key, "cv", name, mode, (1, 1), extra=params, auto=True)
    if name in CV_ONLY:
        k = params.get("ksize", 1)
        return FilterOp(key, "cv", name, mode, (k, k), extra=params)
    if name in ("dilate", "erode"):
        kx, ky = _pair(params["ksize"])
        se = cv2.getStructuringElement(_SHAPES[params["shape"]], (kx, ky))  # [ky, kx] uint8
        structure = se != 0  # [ky, kx] bool
        return FilterOp(key, "morph", name, mode, (ky, kx), structure=structure, mode=_MORPH_MODE[name], extra=params)
    if name == "adaptive_gaussian":
        lo, hi = params["sigma_min"], params["sigma_max"]
        k = _adaptive_ksize(params)
        return FilterOp(key, "adaptive", name, mode, (k, k), sigma_range=(lo, hi))
    if name == "kernel":
        w = np.asarray(params["weights"], dtype=np.float32)
        if w.ndim == 4:
            return FilterOp(key, "mix", name, mode, w.shape[2:], weight=w, bias=params["delta"])
        return _conv(key, name, mode, w, params["delta"], params)
    kernel, bias = _KERNELS[name](params)
    return _conv(key, name, mode, kernel, bias, params)


# "auto" sizes (docs/anonymization.md): each ROI piece gets its own size from its longer side L (in pixels, the
# piece clipped to the image): ``fraction`` × L, rounded to the nearest odd number when ``odd``, within
# [least, most]; gaussian's sigma (when not given) is ``sigma`` × L. Measured against a face detector (CenterFace):
# tests/service/imaging/test_strength.py.
AUTO_SIZES = {
    "gaussian": {"param": "ksize", "fraction": 0.75, "odd": True, "least": 3, "most": MAX_BLUR_KSIZE},
    "box": {"param": "ksize", "fraction": 0.5, "odd": True, "least": 3, "most": MAX_BLUR_KSIZE},
    "median": {"param": "ksize", "fraction": 0.5, "odd": True, "least": 3, "most": MAX_BLUR_KSIZE},
    "pixelate": {"param": "block", "fraction": 1 / 6, "odd": False, "least": 2, "most": 4096},
}
_AUTO_SIGMA = 1 / 8  # gaussian with ksize "auto" and no sigma: sigma = L / 8 (not capped with the kernel)


def auto_size(rule: dict, side: int) -> int:
    """The size an "auto" rule of :data:`AUTO_SIZES` gives a piece whose longer side is ``side`` pixels."""
    value = rule["fraction"] * side
    size = 2 * math.floor(value / 2) + 1 if rule["odd"] else round(value)  # odd: the odd number at most 1 away
    return min(max(size, rule["least"]), rule["most"])


def _is_auto(params: dict) -> bool:
    rule = AUTO_SIZES.get(params.get("name", ""))
    return rule is not None and params.get(rule["param"]) == AUTO


def piece_side(x0: int, y0: int, x1: int, y1: int) -> int:
    """L, the longer side of a ROI piece's rectangle (x1, y1 exclusive): what "auto" sizes follow."""
    return max(x1 - x0, y1 - y0)


def sized(params: dict, side: int) -> dict:
    """A filter's parameters with its "auto" size resolved for a piece of longer side ``side`` (unchanged when no
    size is "auto")."""
    if not _is_auto(params):
        return params
    rule = AUTO_SIZES[params["name"]]
    out = {**params, rule["param"]: auto_size(rule, side)}
    if params["name"] == "gaussian" and params.get("sigma") is None:
        out["sigma"] = _AUTO_SIGMA * side
    return out


def sized_op(op: FilterOp, side: int) -> FilterOp:
    """The concrete op of an "auto" op for a piece of longer side ``side`` (``op`` itself when not auto)."""
    if not op.auto:
        return op
    return _build(json.dumps(sized(op.extra, side)), op.key.rsplit("|", 1)[1])


def _adaptive_ksize(params: dict) -> int:
    """The adaptive gaussian's kernel size: ``ksize``, or the one that holds 3 σ_max on each side (at most 31)."""
    return params.get("ksize") or min(MAX_KSIZE, 2 * math.ceil(3 * params["sigma_max"]) + 1)


def _conv(key: str, name: str, mode: str, kernel: np.ndarray, bias: float, params: dict) -> FilterOp:
    weight = np.ascontiguousarray(kernel, dtype=np.float32)[None, None]  # [1, 1, kh, kw]
    return FilterOp(key, "conv", name, mode, tuple(kernel.shape), weight=weight, bias=float(bias), extra=params)


_MORPH_MODE = {"dilate": "dilation", "erode": "erosion"}


def _pair(ksize: int | list[int]) -> tuple[int, int]:
    return (ksize, ksize) if isinstance(ksize, int) else (ksize[0], ksize[1])


def _gaussian(p: dict) -> tuple[np.ndarray, float]:
    kx, ky = _pair(p["ksize"])
    sx = p["sigma"] or 0.0  # 0: OpenCV derives sigma from the kernel size
    sy = p["sigma_y"] or sx
    gx = cv2.getGaussianKernel(kx, sx, cv2.CV_64F)[:, 0]  # [kx]
    gy = cv2.getGaussianKernel(ky, sy, cv2.CV_64F)[:, 0]  # [ky]
    return np.outer(gy, gx), 0.0  # [ky, kx]


def _box(p: dict) -> tuple[np.ndarray, float]:
    kx, ky = _pair(p["ksize"])
    k = np.ones((ky, kx), np.float64)
    return (k / k.size if p["normalize"] else k), 0.0


def _deriv(dx: int, dy: int, ksize: int) -> np.ndarray:
    kx, ky = cv2.getDerivKernels(dx, dy, ksize, normalize=False, ktype=cv2.CV_64F)
    return np.outer(ky[:, 0], kx[:, 0])  # [len(ky), len(kx)]


def _sobel(p: dict) -> tuple[np.ndarray, float]:
    return _deriv(p["dx"], p["dy"], p["ksize"]) * p["scale"], p["delta"]


def _scharr(p: dict) -> tuple[np.ndarray, float]:
    return _deriv(p["dx"], p["dy"], cv2.FILTER_SCHARR) * p["scale"], p["delta"]


def _laplacian(p: dict) -> tuple[np.ndarray, float]:
    k = p["ksize"]
    if k == 1:
        kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
    elif k == 3:
        kernel = np.array([[2, 0, 2], [0, -8, 0], [2, 0, 2]], np.float64)
    else:
        kernel = _deriv(2, 0, k) + _deriv(0, 2, k)
    return kernel * p["scale"], p["delta"]


def _sharpen(p: dict) -> tuple[np.ndarray, float]:
    a = p["amount"]
    return np.array([[0, -a, 0], [-a, 1 + 4 * a, -a], [0, -a, 0]], np.float64), 0.0


def _emboss(p: dict) -> tuple[np.ndarray, float]:
    return np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float64), 0.0


_KERNELS = {
    "gaussian": _gaussian,
    "box": _box,
    "sobel": _sobel,
    "scharr": _scharr,
    "laplacian": _laplacian,
    "sharpen": _sharpen,
    "emboss": _emboss,
}


# How many context pixels a ROI needs on each side, from the filter's parameters (GET /filters "halo"):
# "ksize": max(ksize) // 2 (ksize an int or [kx, ky]), at least "min"; "weights": max(kh, kw) // 2 of the last two
# dimensions; "block": block - 1; "adaptive": (ksize or min(31, 2·ceil(3·sigma_max) + 1)) // 2; "fixed": "value";
# "unknown": a model sees the whole image (send all of it). "auto" (with an "auto" size): the size that rule of
# AUTO_SIZES gives the ROI's largest piece.
_HALO_RULES = {
    "gaussian": {"rule": "ksize", "min": 0},
    "box": {"rule": "ksize", "min": 0},
    "median": {"rule": "ksize", "min": 0},
    "dilate": {"rule": "ksize", "min": 0},
    "erode": {"rule": "ksize", "min": 0},
    "sobel": {"rule": "ksize", "min": 1},
    "laplacian": {"rule": "ksize", "min": 1},
    "scharr": {"rule": "fixed", "value": 1},
    "sharpen": {"rule": "fixed", "value": 1},
    "emboss": {"rule": "fixed", "value": 1},
    "kernel": {"rule": "weights"},
    "adaptive_gaussian": {"rule": "adaptive"},
    "pixelate": {"rule": "block"},
    "fill": {"rule": "fixed", "value": 0},
}


def halo_rule(name: str) -> dict:
    """The halo rule of a filter name (``model:*`` → {"rule": "unknown"}); filters with "auto" sizes carry their
    AUTO_SIZES rule as ``"auto"``."""
    rule = _HALO_RULES.get(name, {"rule": "unknown"})
    auto = AUTO_SIZES.get(name)
    return rule if auto is None else {**rule, "auto": {k: v for k, v in auto.items() if k != "param"}}


def halo(spec: BaseModel | dict, largest: int | None = None) -> int | None:
    """Context pixels a ROI needs on every side for ``spec`` (a filter model or its dict); None for models, and for
    an "auto" size when ``largest`` (the longer side of the ROI's largest piece, :func:`piece_side`) is not given.

    A crop that holds the ROI's bounding rectangle grown by this many pixels (clipped to the image) gives, inside
    the ROI, the result of the whole image.
    """
    params = spec if isinstance(spec, dict) else spec.model_dump()
    if _is_auto(params):
        if largest is None:
            return None
        params = sized(params, largest)
    rule = halo_rule(str(params.get("name", "")))
    kind = rule["rule"]
    if kind == "fixed":
        return rule["value"]
    if kind == "ksize":
        k = params.get("ksize", 1)
        return max(max(k) if isinstance(k, list) else k, 2 * rule["min"] + 1) // 2
    if kind == "weights":
        shape = np.asarray(params["weights"], dtype=np.float64).shape
        return max(shape[-2:]) // 2
    if kind == "block":
        return params["block"] - 1
    if kind == "adaptive":
        return _adaptive_ksize(params) // 2
    return None


def engine(kind: str, cuda: bool) -> str:
    """The engine that runs a filter of ``kind`` (a :class:`FilterOp` kind) on a server with CUDA devices (``cuda``)
    or on the CPU: "opencv" or "torch" (convcore)."""
    if kind in TORCH_ONLY:
        return "torch"
    if kind == "cv":
        return "opencv"
    return "torch" if cuda else "opencv"


_KINDS = {"adaptive_gaussian": "adaptive"}  # the kind of a catalog name, where it is not "conv" or "cv"


def engine_of(name: str) -> dict[str, str]:
    """Which engine runs a catalog filter on each device type (GET /filters "engine")."""
    kind = "model" if name.startswith("model:") else "cv" if name in CV_ONLY else _KINDS.get(name, "conv")
    return {"cpu": engine(kind, False), "cuda": engine(kind, True)}


def catalog_schemas(models: list[str]) -> dict:
    """GET /filters: each filter's description, JSON schema, halo rule and engines, and the loaded models.

    ``kernel`` runs on OpenCV with 2-D weights and on torch with 4-D ones ({"cpu": "opencv", "cuda": "torch",
    "4-D weights": "torch"}).
    """
    out = {}
    for name, model in FILTER_MODELS.items():
        engines = engine_of(name)
        if name == "kernel":
            engines["4-D weights"] = engine("mix", False)
        out[name] = {
            "description": (model.__doc__ or "").strip(),
            "schema": model.model_json_schema(),
            "halo": halo_rule(name),
            "engine": engines,
        }
    model_schema = ModelFilter.model_json_schema()
    for m in models:
        out[f"model:{m}"] = {
            "description": (ModelFilter.__doc__ or "").strip(),
            "schema": model_schema,
            "halo": halo_rule("model:"),
            "engine": engine_of(f"model:{m}"),
        }
    return out
