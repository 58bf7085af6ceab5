"""Indexed unfold, tile gather and scatter: the data movement under every ROI op.

Borders are handled by index arithmetic (``border_index``) instead of a padded copy of the input, so gathering the
windows of P output positions reads only those windows. Every function here works on one image at a time
(``image`` is (C, H, W)); the engines in :mod:`convcore.engine` loop over images and chunks.
"""

from __future__ import annotations

import torch

from .geometry import ConvGeometry


def border_index(idx: torch.Tensor, size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Map coordinates of the padded input to coordinates of the input along one axis of length ``size``.

    Returns ``(index, valid)``: ``valid`` is a bool tensor for ``"zeros"`` (False where the coordinate falls in the
    zero padding; the index there is clamped to stay readable) and None for the other modes. The modes follow
    ``F.pad``: reflect (without repeating the edge), replicate, circular; ``symmetric`` repeats the edge
    (OpenCV's BORDER_REFLECT). Callers have checked that the padding is small enough for one reflection.
    """
    if mode == "zeros":
        valid = (idx >= 0) & (idx < size)
        return idx.clamp(0, size - 1), valid
    if mode == "replicate":
        return idx.clamp(0, size - 1), None
    if mode == "reflect":
        idx = idx.abs()
        return torch.where(idx >= size, 2 * (size - 1) - idx, idx).clamp(0, size - 1), None
    if mode == "symmetric":
        idx = torch.where(idx < 0, -idx - 1, idx)
        return torch.where(idx >= size, 2 * size - 1 - idx, idx).clamp(0, size - 1), None
    if mode == "circular":
        return idx.remainder(size), None
    raise ValueError(f"unknown padding_mode {mode!r}")


def window_index(oy: torch.Tensor, ox: torch.Tensor, geom: ConvGeometry) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flat input indices of the receptive windows of output positions (oy, ox).

    Returns ``idx`` (Tensor[K, P], K = kh*kw, row-major over the kernel) into the flattened (H*W) plane, and for
    zero padding a bool ``valid`` (Tensor[K, P]) or None when every window lies inside the input.
    """
    (H, W), (kh, kw) = geom.in_hw, geom.kernel
    (sh, sw), (dh, dw) = geom.stride, geom.dilation
    top, left = geom.pad[0], geom.pad[2]
    rows = oy[None, :] * sh - top + (torch.arange(kh, device=oy.device) * dh)[:, None]  # [kh, P]
    cols = ox[None, :] * sw - left + (torch.arange(kw, device=ox.device) * dw)[:, None]  # [kw, P]
    rows, valid_r = border_index(rows, H, geom.padding_mode)
    cols, valid_c = border_index(cols, W, geom.padding_mode)
    idx = (rows[:, None, :] * W + cols[None, :, :]).reshape(kh * kw, -1)  # [K, P]
    valid = None
    if valid_r is not None:
        valid = (valid_r[:, None, :] & valid_c[None, :, :]).reshape(kh * kw, -1)  # [K, P]
        if bool(valid.all()):
            valid = None
    return idx, valid


def gather_windows(
    plane: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor | None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Gather windows from one image viewed as ``plane`` (Tensor[C, H*W]) → Tensor[C, K, P] (into ``out`` if given).

    ``out`` (Tensor[C, K, P], contiguous) is written in place: a reused buffer, never one autograd needs.
    """
    C = plane.shape[0]
    K, P = idx.shape
    if out is None:
        cols = plane.index_select(1, idx.reshape(-1)).view(C, K, P)  # [C, K, P]
        return cols if valid is None else cols * valid.to(cols.dtype)
    torch.index_select(plane, 1, idx.reshape(-1), out=out.view(C, K * P))  # [C, K*P]
    return out if valid is None else out.mul_(valid.to(out.dtype))


def as_plane(image: torch.Tensor) -> torch.Tensor:
    """View one image (C, H, W) as (C, H*W), copying only if its layout does not allow a view."""
    return image.reshape(image.shape[0], -1)


def scatter_windows(out_image: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, values: torch.Tensor) -> None:
    """Write ``values`` (Tensor[O, P]) at output positions (oy, ox) of ``out_image`` (Tensor[O, H_out, W_out])."""
    W_out = out_image.shape[2]
    try:
        plane = out_image.view(out_image.shape[0], -1)  # [O, H_out*W_out], shares memory
    except RuntimeError:  # a layout that cannot be flattened in place (channels_last, slices): index_put
        out_image[:, oy, ox] = values
        return
    plane.index_copy_(1, oy * W_out + ox, values)


def gather_tile(image: torch.Tensor, geom: ConvGeometry, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """The input patch (Tensor[C, h_in, w_in]) with halo for output rectangle [y0, y1) × [x0, x1).

    Inside the input this is a view (no copy); across a border the rows/cols are remapped per padding mode.
    """
    H, W = geom.in_hw
    iy0, iy1, ix0, ix1 = geom.input_span(y0, y1, x0, x1)
    if iy0 >= 0 and ix0 >= 0 and iy1 <= H and ix1 <= W:
        return image[:, iy0:iy1, ix0:ix1]
    if geom.padding_mode == "zeros" and iy0 < H and ix0 < W and iy1 > 0 and ix1 > 0:  # one copy, no index gather
        inner = image[:, max(iy0, 0) : min(iy1, H), max(ix0, 0) : min(ix1, W)]
        return torch.nn.functional.pad(inner, (max(-ix0, 0), max(ix1 - W, 0), max(-iy0, 0), max(iy1 - H, 0)))
    rows, valid_r = border_index(torch.arange(iy0, iy1, device=image.device), H, geom.padding_mode)
    cols, valid_c = border_index(torch.arange(ix0, ix1, device=image.device), W, geom.padding_mode)
    patch = image.index_select(1, rows).index_select(2, cols)  # [C, h_in, w_in]
    if valid_r is not None:
        patch = patch * (valid_r[:, None] & valid_c[None, :]).to(patch.dtype)
    return patch


def pad_input(input: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    """The whole padded input (Tensor[N, C, H+pt+pb, W+pl+pr]) per padding mode: the dense reference path only."""
    top, bottom, left, right = geom.pad
    if geom.padding_mode == "zeros" or not any(geom.pad):
        return torch.nn.functional.pad(input, (left, right, top, bottom))
    if geom.padding_mode != "symmetric":
        return torch.nn.functional.pad(input, (left, right, top, bottom), mode=geom.padding_mode)
    H, W = geom.in_hw
    rows, _ = border_index(torch.arange(-top, H + bottom, device=input.device), H, "symmetric")
    cols, _ = border_index(torch.arange(-left, W + right, device=input.device), W, "symmetric")
    return input.index_select(2, rows).index_select(3, cols)
