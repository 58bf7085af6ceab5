"""Served models: torch.export programs (``name.pt2``) run through :func:`convcore.roi_network` over the ROI.

MODELS_DIR holds ``name.pt2`` files (``torch.export.save``) with an optional sidecar ``name.json`` saying how pixels
go in and what comes out (:class:`Sidecar`). ``model:<name>`` runs the program in the sidecar's ROI mode: "exact"
(inside the ROI the result equals the dense model; the cost follows the ROI), "masked" (SBNet's semantics) or
"dense". TorchScript ``name.pt`` files are still served, dense (a TorchScript module cannot be captured as a graph
of ATen ops), with a deprecation warning in the log.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import convcore

__all__ = ["ServedModel", "Sidecar", "find_models", "load_models"]

log = logging.getLogger("roiconv.models")


class Sidecar(BaseModel):
    """``name.json`` next to ``name.pt2``; every field optional.

    Input: the decoded pixels (BGR or gray, as OpenCV decodes them) are put in ``color`` order, multiplied by
    ``scale`` (default 1 / the format's maximum: 1/255 for 8-bit, 1/65535 for 16-bit, 1 for float images) and
    normalized with ``mean`` / ``std`` (one value per channel). Output: ``output`` says what the model returns.
    """

    model_config = ConfigDict(extra="forbid")

    color: Literal["rgb", "bgr", "gray"] = Field("rgb", description="channel order the model takes")
    scale: float | None = Field(None, gt=0, description="pixel multiplier before mean/std (default 1/format max)")
    mean: list[float] | None = Field(None, description="per-channel mean subtracted after scaling")
    std: list[float] | None = Field(None, description="per-channel std the result is divided by")
    output: Literal["image", "map", "features"] = Field(
        "image",
        description="image: same size and color order as the input, de-normalized back to pixels; map: a per-pixel "
        "map of the input's size, returned as is; features: a lower-resolution map, returned as is and resized "
        "(nearest) to the input's size",
    )
    output_key: str | int | None = Field(None, description="which entry of a dict/tuple output (default: the first)")
    roi_mode: Literal["exact", "masked", "dense"] = Field("exact", description="how the ROI is applied")

    @model_validator(mode="after")
    def _check_norm(self) -> Sidecar:
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) != (1 if self.color == "gray" else 3):
                raise ValueError(f"{name} must have one value per {self.color} channel, got {len(v)}")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("std values must be > 0")
        return self


class ServedModel:
    """A ``.pt2`` program with its sidecar on one device; called with pixels, returns pixels (or a map)."""

    def __init__(self, name: str, module: torch.nn.Module, sidecar: Sidecar) -> None:
        self.name, self.module, self.sidecar = name, module, sidecar  # an exported module runs as exported (eval)
        self.net = None if sidecar.roi_mode == "dense" else convcore.roi_network(module, mode=sidecar.roi_mode)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None, pixel_max: float) -> torch.Tensor:
        """x (Tensor[C, H, W], BGR or gray pixels), mask (bool Tensor[H, W] or None) → Tensor[O, H, W]."""
        s = self.sidecar
        scale = s.scale if s.scale is not None else 1.0 / pixel_max
        inp = _to_color(x, s.color) * scale  # [C', H, W]
        if s.mean is not None:
            inp = inp - torch.tensor(s.mean, dtype=inp.dtype, device=inp.device).view(-1, 1, 1)
        if s.std is not None:
            inp = inp / torch.tensor(s.std, dtype=inp.dtype, device=inp.device).view(-1, 1, 1)
        if mask is None or self.net is None:
            y = self.module(inp[None])
        else:
            y = self.net(inp[None], mask[None])
        y = _select(y, s.output_key, self.name)
        H, W = x.shape[1:]
        if s.output == "features":
            return F.interpolate(y, size=(H, W), mode="nearest")[0] if y.shape[2:] != (H, W) else y[0]
        if y.shape[2:] != (H, W):
            raise RuntimeError(f"model {self.name!r} must return (1, O, {H}, {W}) for this image, got {tuple(y.shape)}")
        y = y[0]
        if s.output == "map":
            return y
        if s.std is not None:
            y = y * torch.tensor(s.std, dtype=y.dtype, device=y.device).view(-1, 1, 1)
        if s.mean is not None:
            y = y + torch.tensor(s.mean, dtype=y.dtype, device=y.device).view(-1, 1, 1)
        y = y / scale
        return y.flip(0) if s.color == "rgb" and y.shape[0] == 3 else y  # back to BGR


def _to_color(x: torch.Tensor, color: str) -> torch.Tensor:
    """BGR (3, H, W) or gray (1, H, W) pixels in the model's channel order."""
    if color == "gray":
        if x.shape[0] == 1:
            return x
        return (0.114 * x[0] + 0.587 * x[1] + 0.299 * x[2])[None]  # OpenCV's BGR2GRAY weights
    if x.shape[0] == 1:
        x = x.expand(3, *x.shape[1:])
    return x.flip(0) if color == "rgb" else x


def _select(y, key, name: str) -> torch.Tensor:
    if isinstance(y, dict):
        y = y[key] if key is not None else next(iter(y.values()))
    elif isinstance(y, (tuple, list)):
        y = y[key if key is not None else 0]
    if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[0] != 1:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise RuntimeError(f"model {name!r} must return a (1, O, H, W) map (or a dict/tuple of them), got {got}")
    return y


def find_models(models_dir: Path | None) -> dict[str, Path]:
    """name → file: ``*.pt2`` programs and ``*.pt`` TorchScript files (a ``.pt2`` wins over a same-name ``.pt``)."""
    if models_dir is None:
        return {}
    out = {p.stem: p for p in sorted(models_dir.glob("*.pt")) if p.is_file()}
    out.update({p.stem: p for p in sorted(models_dir.glob("*.pt2")) if p.is_file()})
    return dict(sorted(out.items()))


def load_models(paths: dict[str, Path], devices: list[str]) -> dict[str, dict]:
    """{device: {name: ServedModel or TorchScript module}}. A file that does not load stops start-up."""
    out: dict[str, dict] = {d: {} for d in devices}
    for name, path in paths.items():
        sidecar = _sidecar(path) if path.suffix == ".pt2" else None
        if path.suffix == ".pt":
            log.warning(
                "%s is TorchScript: served dense over the whole image (deprecated); export it with torch.export "
                "to %s.pt2 so that it runs only inside the ROI",
                path.name,
                name,
            )
        for d in devices:
            out[d][name] = _load(path, d, name, sidecar)
    return out


def _load(path: Path, device: str, name: str, sidecar: Sidecar | None):
    if sidecar is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what users ship
                return torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:
            raise RuntimeError(f"ROICONV_MODELS_DIR: {path.name} is not a loadable TorchScript model: {exc}") from exc
    try:
        module = torch.export.load(str(path)).module().to(device)
    except Exception as exc:
        raise RuntimeError(f"ROICONV_MODELS_DIR: {path.name} is not a loadable torch.export program: {exc}") from exc
    return ServedModel(name, module, sidecar)


def _sidecar(path: Path) -> Sidecar:
    side = path.with_suffix(".json")
    if not side.is_file():
        return Sidecar()
    try:
        return Sidecar.model_validate(json.loads(side.read_text()))
    except ValidationError as exc:
        why = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'sidecar'}: {e['msg']}" for e in exc.errors())
        raise RuntimeError(f"ROICONV_MODELS_DIR: {side.name} is not a valid model sidecar: {why}") from None
    except ValueError as exc:
        raise RuntimeError(f"ROICONV_MODELS_DIR: {side.name} is not valid JSON: {exc}") from None
