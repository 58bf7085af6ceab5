"""A convolution in row bands: bounded working memory for images whose dense convolution would need too much.

Each band is one :func:`convcore.roi_conv2d` call with the "tiles" strategy and a mask covering only the band's
rows (and the ROI): the dense conv then runs over the band plus its halo, read from the whole image, so the borders
are the image's own and the result equals one call over the whole image.
"""

from __future__ import annotations

import torch

import convcore

__all__ = ["conv_in_bands"]


def conv_in_bands(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    out: torch.Tensor,
    bands: int,
    *,
    padding_mode: str,
    groups: int = 1,
) -> torch.Tensor:
    """Write the "same"-padded convolution of ``x`` into ``out`` inside ``mask``, ``bands`` row bands at a time.

    Args:
        x (Tensor[C, H, W]), weight (Tensor[O, C/groups, kh, kw]), bias (Tensor[O] or None).
        mask (bool Tensor[H, W] or None: everywhere), out (Tensor[O, H, W]): written only inside the mask.
    """
    height = x.shape[1]
    step = -(-height // max(1, bands))
    for y0 in range(0, height, step):
        band = torch.zeros(x.shape[1:], dtype=torch.bool, device=x.device)  # [H, W]
        band[y0 : y0 + step] = True if mask is None else mask[y0 : y0 + step]
        if not bool(band.any()):
            continue
        convcore.roi_conv2d(
            x[None],
            weight,
            bias,
            band[None],
            padding="same",
            padding_mode=padding_mode,
            groups=groups,
            out=out[None],
            strategy="tiles",
        )  # [1, O, H, W], written inside the band only
    return out
