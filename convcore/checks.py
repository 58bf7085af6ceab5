"""Argument validation shared by every op (the geometry lives in :mod:`convcore.geometry`).

Every public op calls these on its first lines so that bad input fails early with a message that says what was
expected, what came, and how to fix it. Nothing here touches tensor data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .geometry import PADDING_MODES, pair
from .roi import RectRoi

__all__ = [
    "FLOAT_DTYPES",
    "PADDING_MODES",
    "check_bias",
    "check_groups",
    "check_mask",
    "check_out",
    "check_same",
    "check_tensor",
    "pair",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, t: object, dims: Sequence[str], *, floating: bool = True) -> torch.Tensor:
    """Check that ``t`` is a tensor with ``len(dims)`` dimensions (named in ``dims`` for the message)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape ({', '.join(dims)}), got {type(t).__name__}")
    if t.dim() != len(dims):
        raise ValueError(
            f"{name} must have {len(dims)} dimensions ({', '.join(dims)}), got {t.dim()} with shape {tuple(t.shape)}"
        )
    if floating and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    return t


def check_mask(
    mask: object, n: int, out_hw: tuple[int, int], device: torch.device | None = None
) -> torch.Tensor | None:
    """Check a ROI mask over output positions and return it as bool (N, H_out, W_out) (expanded if shared).

    A :class:`convcore.RectRoi` is checked and returned in its dense form: for the paths that need a full-size mask
    (the engines take it as boxes, through :func:`convcore.engine.check_roi`).
    """
    if mask is None:
        return None
    if isinstance(mask, RectRoi):
        mask.check(out_hw)
        return mask.to_mask(*out_hw, device=device).unsqueeze(0).expand(n, -1, -1)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            "mask must be a bool torch.Tensor of shape (N, H_out, W_out) or (H_out, W_out), or a convcore.RectRoi, "
            f"got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (the ROI over output positions), got {mask.dtype}; use mask != 0")
    expected = (n, *out_hw)
    if mask.dim() == 2 and tuple(mask.shape) == tuple(out_hw):
        mask = mask.unsqueeze(0).expand(n, -1, -1)
    elif tuple(mask.shape) != expected:
        raise ValueError(
            f"mask must have shape (N, H_out, W_out) = {expected} or (H_out, W_out) = {tuple(out_hw)}, "
            f"got {tuple(mask.shape)}; the mask is over output positions"
        )
    if device is not None and mask.device != device:
        mask = mask.to(device)
    return mask


def check_out(out: object, expected: Sequence[int], like: torch.Tensor) -> torch.Tensor | None:
    """Check an ``out=`` tensor: right shape, dtype and device."""
    if out is None:
        return None
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor of shape {tuple(expected)}, got {type(out).__name__}")
    if tuple(out.shape) != tuple(expected):
        raise ValueError(f"out must have shape {tuple(expected)} (the output shape), got {tuple(out.shape)}")
    if out.dtype != like.dtype or out.device != like.device:
        raise TypeError(
            f"out must have the input's dtype and device ({like.dtype}, {like.device}), got ({out.dtype}, {out.device})"
        )
    return out


def check_same(name: str, t: torch.Tensor, like: torch.Tensor) -> None:
    """Check that ``t`` has the dtype and device of the input."""
    if t.dtype != like.dtype or t.device != like.device:
        raise TypeError(
            f"{name} must have the input's dtype and device ({like.dtype}, {like.device}), got ({t.dtype}, {t.device})"
        )


def check_bias(bias: object, channels: int, like: torch.Tensor) -> None:
    """Check an optional bias: a tensor of shape (channels,) with the input's dtype and device."""
    if bias is None:
        return
    check_tensor("bias", bias, ["O"])
    check_same("bias", bias, like)
    if bias.shape[0] != channels:
        raise ValueError(f"bias must have shape (O,) = ({channels},), got {tuple(bias.shape)}")


def check_groups(C: int, O: int, Cg: int, groups: int) -> None:
    """Check ``groups`` against the input channels C, output channels O and the weight's C/groups = Cg."""
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if C % groups or O % groups:
        raise ValueError(f"in_channels ({C}) and out_channels ({O}) must both be divisible by groups ({groups})")
    if Cg * groups != C:
        raise ValueError(
            f"weight has {Cg} input channels per group, but input has {C} channels and groups={groups} "
            f"(expected weight.shape[1] == {C // groups})"
        )
