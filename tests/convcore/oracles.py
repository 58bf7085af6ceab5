"""Shared test helpers: mask kinds, geometry grids, and oracles written from the definitions.

Nothing here calls convcore: padding follows numpy's pad modes (index maps from ``np.pad`` of an ``arange``, so the
oracle stays differentiable), "same" padding follows F.conv2d's documented rule, and windows come from ``F.unfold``
of that padded input. Expected values built from these cannot share a bug with convcore's border or geometry code.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Every padding mode, and numpy's name for it.
NUMPY_MODES = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
    "symmetric": "symmetric",
}
MODES = list(NUMPY_MODES)

# (kernel, stride, padding, dilation) for the window-op families. "same" with an even kernel or an odd total
# dilation·(k − 1) pads one more pixel at the bottom/right ("uneven same").
GEOMETRIES = [
    (3, 1, 1, 1),
    ((2, 3), (2, 1), (1, 0), 1),
    (3, 2, "valid", (1, 2)),
    (2, 1, "same", 2),
    ((4, 2), 1, "same", 1),  # uneven same: pads (1, 2) rows and (0, 1) cols
    ((2, 3), 1, "same", (1, 3)),  # uneven same along both axes
]


def geometry_id(g) -> str:
    return f"k{g[0]}s{g[1]}p{g[2]}d{g[3]}"


def pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def masks(kind: str, n: int, hw, device, seed: int = 5) -> torch.Tensor | None:
    """Mask kinds the grids run over: none, random (30%), sparse (4%: the gathered-windows path), box (one touching
    the border in the last image), mixed (pixels and boxes), empty, full."""
    h, w = hw
    if kind == "none":
        return None
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return (torch.rand(n, h, w, generator=g) < 0.3).to(device)
    if kind == "sparse":
        return (torch.rand(n, h, w, generator=g) < 0.04).to(device)
    if kind == "mixed":  # random pixels + a box in image 0, a border-touching box in image 1
        m = torch.rand(n, h, w, generator=g) < 0.15
        m[0, h // 4 : h // 2 + 1, w // 3 : w - 1] = True
        if n > 1:
            m[1, : h // 3, w // 2 :] = True
        return m.to(device)
    m = torch.zeros(n, h, w, dtype=torch.bool)
    if kind == "box":
        m[:, h // 4 : h // 4 + max(1, h // 2), w // 3 : w - 1] = True
        m[-1, : h // 3, : w // 2] = True
    elif kind == "full":
        m[:] = True
    elif kind != "empty":
        raise ValueError(kind)
    return m.to(device)


def padding_of(kernel, padding, dilation=1) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) as F.conv2d documents it: "same" pads d·(k−1) in total, the odd pixel last."""
    kh, kw = pair(kernel)
    dh, dw = pair(dilation)
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    ph, pw = pair(padding)
    return (ph, ph, pw, pw)


def pad(x: torch.Tensor, pads, mode: str) -> torch.Tensor:
    """x (N, C, H, W) padded by (top, bottom, left, right) per numpy's pad mode (differentiable)."""
    top, bottom, left, right = pads
    H, W = x.shape[-2:]
    np_mode = NUMPY_MODES[mode]
    if np_mode == "constant":
        rows = np.pad(np.arange(H), (top, bottom), mode="constant", constant_values=-1)
        cols = np.pad(np.arange(W), (left, right), mode="constant", constant_values=-1)
    else:
        rows = np.pad(np.arange(H), (top, bottom), mode=np_mode)
        cols = np.pad(np.arange(W), (left, right), mode=np_mode)
    r = torch.as_tensor(rows, device=x.device)
    c = torch.as_tensor(cols, device=x.device)
    y = x.index_select(-2, r.clamp(min=0)).index_select(-1, c.clamp(min=0))
    if np_mode == "constant":
        keep = (r >= 0)[:, None] & (c >= 0)[None, :]
        y = y * keep.to(y.dtype)
    return y


def conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros") -> torch.Tensor:
    """F.conv2d over the numpy-padded input: the oracle for every padding mode and "same"."""
    return F.conv2d(pad(x, padding_of(w.shape[2:], padding, dilation), padding_mode), w, b, stride, 0, dilation, groups)


def windows(x, kernel, stride=1, padding=0, dilation=1, padding_mode="zeros"):
    """(N, 1, C, kh, kw, L) windows of the padded input (F.unfold) and the output size (H_out, W_out)."""
    kernel = pair(kernel)
    xp = pad(x, padding_of(kernel, padding, dilation), padding_mode)
    cols = F.unfold(xp, kernel, pair(dilation), 0, pair(stride))
    sh, sw = pair(stride)
    dh, dw = pair(dilation)
    out_hw = ((xp.shape[2] - dh * (kernel[0] - 1) - 1) // sh + 1, (xp.shape[3] - dw * (kernel[1] - 1) - 1) // sw + 1)
    return cols.view(x.shape[0], 1, x.shape[1], *kernel, -1), out_hw


def morph(x, w, mode="dilation", stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros") -> torch.Tensor:
    """Grayscale dilation / erosion from the definition: max(x + w) / min(x − w) over each window and group."""
    N, C = x.shape[:2]
    O, Cg, kh, kw = w.shape
    cols, out_hw = windows(x, (kh, kw), stride, padding, dilation, padding_mode)  # [N, 1, C, kh, kw, L]
    cols = cols.view(N, groups, 1, Cg * kh * kw, -1)  # [N, G, 1, Cg*K, L]
    wg = w.reshape(groups, O // groups, Cg * kh * kw, 1)  # [G, O/G, Cg*K, 1]
    y = (cols + wg).amax(3) if mode == "dilation" else (cols - wg).amin(3)  # [N, G, O/G, L]
    return y.reshape(N, O, *out_hw)


def masked(ref: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """ref with zeros outside the mask (N, H_out, W_out); ref itself for None."""
    return ref if mask is None else ref * mask[:, None].to(ref.dtype)
