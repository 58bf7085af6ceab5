"""Argument validation and convolution-geometry helpers shared by every op.

Every public op calls these on its first lines so that bad input fails early with a message that says what was
expected, what came, and how to fix it. Nothing here touches tensor data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

PADDING_MODES = ("zeros", "reflect", "replicate", "circular", "symmetric")
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


def pair(name: str, value: int | Sequence[int], *, minimum: int) -> tuple[int, int]:
    """Turn an int or a pair of ints into a pair, checking each is an int ``>= minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum} in each dimension, got {tuple(value)}")
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class ConvGeometry:
    """Resolved geometry of a 2-D sliding-window op over an input of spatial size (H, W).

    ``pad`` is (top, bottom, left, right): "same" with an even kernel pads more at the bottom/right, exactly as
    ``F.conv2d(padding="same")`` does.
    """

    in_hw: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int, int, int]
    dilation: tuple[int, int]
    out_hw: tuple[int, int]
    padding_mode: str

    @property
    def window(self) -> int:
        return self.kernel[0] * self.kernel[1]


def conv_geometry(
    in_hw: Sequence[int],
    kernel: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    padding_mode: str = "zeros",
) -> ConvGeometry:
    """Validate stride/padding/dilation/padding_mode and compute the output size, as ``F.conv2d`` would."""
    stride = pair("stride", stride, minimum=1)
    dilation = pair("dilation", dilation, minimum=1)
    kh, kw = int(kernel[0]), int(kernel[1])
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel size must be >= 1 in each dimension, got {(kh, kw)}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    span_h, span_w = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
    if isinstance(padding, str):
        if padding == "valid":
            pad = (0, 0, 0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1 (as in F.conv2d), got stride {stride}")
            pad = (span_h // 2, span_h - span_h // 2, span_w // 2, span_w - span_w // 2)
        else:
            raise ValueError(f"padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    else:
        ph, pw = pair("padding", padding, minimum=0)
        pad = (ph, ph, pw, pw)
    H, W = int(in_hw[0]), int(in_hw[1])
    if padding_mode == "reflect" and (max(pad[:2]) >= H or max(pad[2:]) >= W):
        raise ValueError(f"padding_mode='reflect' needs padding < input size, got padding {pad} for input {(H, W)}")
    if padding_mode in ("circular", "symmetric") and (max(pad[:2]) > H or max(pad[2:]) > W):
        raise ValueError(
            f"padding_mode={padding_mode!r} needs padding <= input size, got padding {pad} for input {(H, W)}"
        )
    padded_h, padded_w = H + pad[0] + pad[1], W + pad[2] + pad[3]
    if padded_h < span_h + 1 or padded_w < span_w + 1:
        raise ValueError(
            f"kernel (with dilation) spans {(span_h + 1, span_w + 1)}, larger than the padded input "
            f"{(padded_h, padded_w)}; use a smaller kernel or more padding"
        )
    out_hw = ((padded_h - span_h - 1) // stride[0] + 1, (padded_w - span_w - 1) // stride[1] + 1)
    return ConvGeometry((H, W), (kh, kw), stride, pad, dilation, out_hw, padding_mode)


def check_mask(
    mask: object, n: int, out_hw: tuple[int, int], device: torch.device | None = None
) -> torch.Tensor | None:
    """Check a ROI mask over output positions and return it as bool (N, H_out, W_out) (expanded if shared)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"mask must be a bool torch.Tensor of shape (N, H_out, W_out) or (H_out, W_out), got {type(mask).__name__}"
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
