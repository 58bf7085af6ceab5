"""nn.Module wrappers of the ROI ops."""

from __future__ import annotations

import torch
from torch import nn

from .functional import roi_conv2d
from .plan import RoIPlan, plan_roi
from .roi import RectRoi

__all__ = ["RoIConv2d"]


class RoIConv2d(nn.Conv2d):
    """A ``nn.Conv2d`` whose forward computes only inside a region of interest.

    See :func:`roi_conv2d`. Parameters, initialization (``reset_parameters``) and arguments are those of
    ``nn.Conv2d``; ``forward(input, mask=None, out=None)`` takes the ROI over output positions. The plan built for a
    mask is cached, so calling the module again with the same mask tensor (unchanged) skips index building.

    Example:
        >>> conv = torch.nn.Conv2d(2, 3, 3, padding=1)
        >>> roi = RoIConv2d.from_conv(conv)
        >>> x, mask = torch.randn(1, 2, 8, 8), torch.zeros(8, 8, dtype=torch.bool)
        >>> mask[2:6, 1:4] = True
        >>> torch.allclose(roi(x, mask), conv(x) * mask, atol=1e-5)
        True
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._plan_key: tuple | None = None
        self._plan: RoIPlan | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> RoIConv2d:
        """A RoIConv2d that shares ``conv``'s weight and bias Parameters (no copy)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_conv takes an nn.Conv2d, got {type(conv).__name__}")
        module = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        module.weight = conv.weight
        module.bias = conv.bias
        return module

    def forward(self, input: torch.Tensor, mask: torch.Tensor | RectRoi | None = None, out: torch.Tensor | None = None):
        return roi_conv2d(
            input,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
            out=out,
            plan=self._cached_plan(input, mask, out),
        )

    def _cached_plan(self, input: torch.Tensor, mask: torch.Tensor | None, out) -> RoIPlan:
        key = (mask, None if mask is None else mask._version, tuple(input.shape), input.device, out is None)
        if self._plan is not None and self._plan_key is not None and _same_key(key, self._plan_key):
            return self._plan
        plan = plan_roi(
            mask,
            input.shape,
            self.weight.shape,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            device=input.device,
            padding_mode=self.padding_mode,
            fresh_output=out is None,
        )
        self._plan_key, self._plan = key, plan
        return plan


def _same_key(a: tuple, b: tuple) -> bool:
    # The mask is compared by identity (the cache holds it, so its id cannot be reused) and version counter.
    return a[0] is b[0] and a[1:] == b[1:]
