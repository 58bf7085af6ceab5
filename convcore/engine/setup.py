"""What every window op does before it hands work to an engine: geometry, checked mask, output tensor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..checks import check_out
from ..geometry import ConvGeometry, conv_geometry
from .policy import zeros
from .rects import RoiRects, check_roi, image_positions
from .windows import WindowJob

__all__ = ["OpSetup", "prepare_op", "window_jobs"]


class OpSetup(NamedTuple):
    geom: ConvGeometry
    mask: torch.Tensor | RoiRects | None  # the checked ROI (a RectRoi as RoiRects); None when it covers everything
    out: torch.Tensor | None
    done: bool  # the mask is empty: nothing to compute
    positions: int  # output positions to compute, over the batch


def prepare_op(
    input: torch.Tensor,
    kernel_hw: Sequence[int],
    mask: torch.Tensor | None,
    out: torch.Tensor | None,
    out_channels: int | Sequence[int],
    *,
    stride,
    padding,
    dilation,
    padding_mode: str,
    allocate: bool = True,
) -> OpSetup:
    """Geometry, checked mask and the output tensor of a window op; ``done`` when the mask is empty.

    A mask that covers everything is returned as None (the whole-image path); a :class:`convcore.RectRoi` as its
    :class:`RoiRects` (no dense mask built: the engines take it as it is). The output is ``out`` when given,
    else new (zeros where a mask leaves positions unwritten, uninitialized when every position gets written), or
    None with ``allocate=False``. ``out_channels`` is O, or the dims between N and (H_out, W_out) of the output
    (``(O, kh, kw)`` for a window op that keeps the window).
    """
    N, _, H, W = input.shape
    geom = conv_geometry(
        (H, W), kernel_hw, stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode
    )
    mask, covered = check_roi(mask, N, geom.out_hw, input.device)
    channels = (out_channels,) if isinstance(out_channels, int) else tuple(out_channels)
    out_shape = (N, *channels, *geom.out_hw)
    out = check_out(out, out_shape, input)
    done = covered == 0
    positions = N * geom.out_hw[0] * geom.out_hw[1] if covered < 0 else covered
    if out is not None or not allocate:
        return OpSetup(geom, mask, out, done, positions)
    result = zeros(out_shape, input) if mask is not None or done else input.new_empty(out_shape)
    return OpSetup(geom, mask, result, done, positions)


def window_jobs(
    input: torch.Tensor, out: torch.Tensor, mask: torch.Tensor | RoiRects | None, geom: ConvGeometry
) -> list[WindowJob]:
    """The windows engine's jobs for a batch: each image's in-ROI positions (all of them for None)."""
    return [
        WindowJob(input[n], out[n], *image_positions(mask, n, geom.out_hw, input.device), geom)
        for n in range(input.shape[0])
    ]
