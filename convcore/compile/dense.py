"""The dense form of the ops, for an outer ``torch.compile``: one traceable expression over the whole padded input,
the mask applied by ``torch.where`` (cost does not follow the ROI there; the outer graph owns the computation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..engine import Rect, TileBatch, TilesCompute
from ..gather import border_index, pad_input
from ..geometry import ConvGeometry
from .grad import Grad, traced_grad_fn
from .taps import Fn, window_band

__all__ = ["dense_tiles_op", "dense_window_op", "masked_result", "traced_pad"]


def dense_window_op(
    input: torch.Tensor,
    weight: torch.Tensor,
    fn: Fn,
    geom: ConvGeometry,
    mask: torch.Tensor | None,
    out: torch.Tensor | None,
    out_shape: Sequence[int],
    *,
    bias: torch.Tensor | None = None,
    reduce: str = "sum",
    keep_window: bool = False,
    groups: int = 1,
    grad: Grad | None = None,
) -> torch.Tensor:
    """The op as one traceable expression over the whole padded input, for an outer ``torch.compile``: the mask
    selects by ``torch.where`` (cost does not follow the ROI here; the outer graph owns the whole computation)."""
    fn = fn if grad is None else traced_grad_fn(fn, grad)
    y = window_band(traced_pad(input, geom), weight, fn, bias, reduce, keep_window, geom.stride, geom.dilation, groups)
    return masked_result(y.view(out_shape), mask, out)  # [N, O, H_out, W_out] or [N, O, kh, kw, H_out, W_out]


def masked_result(y: torch.Tensor, mask: torch.Tensor | None, out: torch.Tensor | None) -> torch.Tensor:
    """A dense result (Tensor[N, ..., H_out, W_out]) with the masked semantics: outside ``mask`` (bool
    Tensor[N, H_out, W_out]) zero, or with ``out`` what ``out`` held (``out`` is written and returned)."""
    if mask is not None:
        m = mask.view(mask.shape[0], *([1] * (y.dim() - 3)), *mask.shape[1:])  # broadcast over channels
        y = torch.where(m, y, out if out is not None else torch.zeros((), dtype=y.dtype, device=y.device))
    if out is None:
        return y
    out.copy_(y)
    return out


def dense_tiles_op(
    input: torch.Tensor, geom: ConvGeometry, mask: torch.Tensor | None, out: torch.Tensor | None, compute: TilesCompute
) -> torch.Tensor:
    """A tiles compute run once over the whole padded input as a single band (traceable: for an outer
    ``torch.compile``), with the masked semantics of :func:`masked_result`."""
    N = input.shape[0]
    Ho, Wo = geom.out_hw
    band = TileBatch((Ho, Wo), geom, tuple(Rect(n, 0, Ho, 0, Wo, True) for n in range(N)), whole=True)
    return masked_result(compute(traced_pad(input, geom), band), mask, out)


def traced_pad(input: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    """:func:`convcore.gather.pad_input` by index (every mode but zeros): under an outer ``torch.compile`` the
    backward of ``F.pad``'s replicate mode failed Inductor's stride check (torch 2.13); index_select's does not."""
    if geom.padding_mode == "zeros" or not any(geom.pad):
        return pad_input(input, geom)
    (H, W), (top, bottom, left, right) = geom.in_hw, geom.pad
    rows, _ = border_index(torch.arange(-top, H + bottom, device=input.device), H, geom.padding_mode)
    cols, _ = border_index(torch.arange(-left, W + right, device=input.device), W, geom.padding_mode)
    return input.index_select(2, rows).index_select(3, cols)  # [N, C, H_pad, W_pad]
