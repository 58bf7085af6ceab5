"""The filter catalog → weights: OpenCV's kernels as convcore weights, and the key that batches share.

Classic filters become one (1, 1, kh, kw) float32 kernel applied to every color channel as its own 1-channel image
(so gray, BGR and BGRA images of any size go through one batched call); 4-D explicit kernels mix channels. The
kernels come from OpenCV itself (cv2.getGaussianKernel, cv2.getDerivKernels, cv2.getStructuringElement), so results
match cv2 within the rounding of its fixed-point paths (±1 on 8-bit).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np
import torch

from . import schemas

__all__ = ["BORDERS", "FilterOp", "build_filter", "catalog_schemas"]

# spec border name → (convcore padding_mode, OpenCV border flag)
BORDERS = {
    "reflect101": ("reflect", cv2.BORDER_REFLECT_101),
    "reflect": ("symmetric", cv2.BORDER_REFLECT),
    "replicate": ("replicate", cv2.BORDER_REPLICATE),
    "constant": ("zeros", cv2.BORDER_CONSTANT),
    "wrap": ("circular", cv2.BORDER_WRAP),
}
_SHAPES = {"rect": cv2.MORPH_RECT, "ellipse": cv2.MORPH_ELLIPSE, "cross": cv2.MORPH_CROSS}


@dataclass(frozen=True)
class FilterOp:
    """A resolved filter: what a worker needs to run it, and ``key`` (equal keys share weights → one batch).

    ``kind`` is "conv" (weight Tensor[1, 1, kh, kw], per channel), "mix" (weight Tensor[O, C, kh, kw]),
    "morph" (``structure`` Tensor[kh, kw] bool, ``mode`` dilation/erosion), "adaptive" (``sigma_range``) or
    "model" (``model`` name).
    """

    key: str
    kind: str
    name: str
    padding_mode: str
    ksize: tuple[int, int]
    weight: torch.Tensor | None = None
    bias: float = 0.0
    structure: torch.Tensor | None = None
    mode: str = ""
    sigma_range: tuple[float, float] = (0.0, 0.0)
    model: str = ""
    out_channels: int | None = None
    extra: dict = field(default_factory=dict)


def build_filter(spec: schemas.BaseModel, border: str) -> FilterOp:
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
    if name in ("dilate", "erode"):
        kx, ky = _pair(params["ksize"])
        se = cv2.getStructuringElement(_SHAPES[params["shape"]], (kx, ky))  # [ky, kx] uint8
        structure = torch.from_numpy(se != 0)
        return FilterOp(key, "morph", name, mode, (ky, kx), structure=structure, mode=_MORPH_MODE[name])
    if name == "adaptive_gaussian":
        lo, hi = params["sigma_min"], params["sigma_max"]
        k = params["ksize"] or min(schemas.MAX_KSIZE, 2 * math.ceil(3 * hi) + 1)
        return FilterOp(key, "adaptive", name, mode, (k, k), sigma_range=(lo, hi))
    if name == "kernel":
        w = np.asarray(params["weights"], dtype=np.float32)
        if w.ndim == 4:
            weight = torch.from_numpy(w)  # [O, C, kh, kw]
            return FilterOp(
                key, "mix", name, mode, w.shape[2:], weight=weight, bias=params["delta"], out_channels=w.shape[0]
            )
        return _conv(key, name, mode, w, params["delta"])
    kernel, bias = _KERNELS[name](params)
    return _conv(key, name, mode, kernel, bias)


def _conv(key: str, name: str, mode: str, kernel: np.ndarray, bias: float) -> FilterOp:
    weight = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32))[None, None]  # [1, 1, kh, kw]
    return FilterOp(key, "conv", name, mode, tuple(kernel.shape), weight=weight, bias=float(bias))


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


def catalog_schemas(models: list[str]) -> dict:
    """GET /filters: each filter's JSON schema and description, and the TorchScript models found."""
    out = {
        name: {"description": (model.__doc__ or "").strip(), "schema": model.model_json_schema()}
        for name, model in schemas.FILTER_MODELS.items()
    }
    model_schema = schemas.ModelFilter.model_json_schema()
    for m in models:
        out[f"model:{m}"] = {"description": (schemas.ModelFilter.__doc__ or "").strip(), "schema": model_schema}
    return out
