"""Run one batch of jobs that share a filter on one device: tensors in, convcore, pixels out.

Each job holds decoded pixels (H, W, C), its ROI and how to treat the outside. The ROI reaches convcore as the
regions module drew it — rectangles with local masks, a :class:`convcore.RectRoi` — so no full-size mask is built
for it (the served models, the adaptive blur and the channel-mixing kernels, whose results must not move by a rounding,
get one of the window). Color channels
are split off the alpha channel (kept unchanged); per-channel filters run depthwise (groups = C), and every job with
the same channel count goes into a single :func:`convcore.roi_conv2d_batch` call, whatever the image sizes (inside
it, each image's plan picks its strategy: typically tiles, one conv per ROI rectangle, equal-size rectangles of the
batch sharing a call; scattered ROIs share gathered-window matmuls). Results are rounded half-to-even and saturated
as OpenCV's ``saturate_cast`` does.
"""

from __future__ import annotations

import numpy as np
import torch

import convcore

from .filters import FilterOp
from .networks import ServedModel
from .work import MAX_VALUE, Work

__all__ = ["conv_in_bands", "run_batch"]


def run_batch(
    op: FilterOp, works: list[Work], device: torch.device | str, models: dict | None = None
) -> list[np.ndarray]:
    """Filter every work item with ``op`` on ``device``; returns each result (H, W, C_out) as float32.

    ``models`` maps a model name to its loaded module on this device (``op.kind == "model"``).
    """
    device = torch.device(device)
    with torch.inference_mode():
        xs = [_to_tensor(w.color, device) for w in works]  # each [C, H, W] float32
        ms = [_roi(w, device) for w in works]  # each a RectRoi, a bool Tensor[H, W] or None
        if op.kind == "conv":
            ys = _run_conv(op, works, xs, ms, device)
        elif op.kind == "mix":
            ys = _run_mix(op, works, xs, ms, device)
        elif op.kind == "morph":
            ys = [_run_morph(op, w, x, m, device) for w, x, m in zip(works, xs, ms)]
        elif op.kind == "adaptive":
            ys = [_run_adaptive(op, w, x, m) for w, x, m in zip(works, xs, ms)]
        elif op.kind == "model":
            module = (models or {}).get(op.model)
            if module is None:
                raise RuntimeError(f"model {op.model!r} is not loaded on {device}")
            ys = [_run_model(module, w, x, m) for w, x, m in zip(works, xs, ms)]
        else:
            raise ValueError(f"unknown filter kind {op.kind!r}")
        return [y.permute(1, 2, 0).contiguous().cpu().numpy() for y in ys]  # each [H, W, C_out]


def _roi(work: Work, device: torch.device) -> convcore.RectRoi | torch.Tensor | None:
    """The work's ROI as convcore takes it: its pieces as boxes with local masks, or its mask (bool Tensor[H, W])."""
    if work.pieces is not None:
        boxes = [(p.x0, p.y0, p.x1, p.y1) for p in work.pieces]
        masks = [None if p.mask is None else torch.from_numpy(p.mask).to(device) for p in work.pieces]  # [h, w] each
        return convcore.RectRoi(boxes, masks)
    return None if work.mask is None else torch.from_numpy(work.mask).to(device)


def _batched(m: convcore.RectRoi | torch.Tensor | None) -> convcore.RectRoi | torch.Tensor | None:
    """The ROI of one image for a batch of one: a mask gets its batch dimension, a RectRoi is shared as it is."""
    return m[None] if isinstance(m, torch.Tensor) else m  # [1, H, W]


def _dense(m: convcore.RectRoi | torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """The ROI as a bool Tensor[H, W] over the image x (Tensor[C, H, W]), for what takes only a mask."""
    return m.to_mask(*x.shape[1:], device=x.device) if isinstance(m, convcore.RectRoi) else m


def _to_tensor(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(pixels.astype(np.float32, copy=False)).to(device).permute(2, 0, 1).contiguous()


def _base(work: Work, x: torch.Tensor, channels: int) -> torch.Tensor:
    """The output buffer before the ROI is written: the original pixels (keep) or zeros."""
    if work.outside == "keep" and channels == x.shape[0]:
        return x.clone()
    return x.new_zeros((channels, *x.shape[1:]))


def _run_conv(op, works, xs, ms, device) -> list[torch.Tensor]:
    """Depthwise: the (1, 1, kh, kw) kernel repeated per channel with groups=C; one batched call per channel count."""
    bases = [_base(w, x, x.shape[0]) for w, x in zip(works, xs)]
    by_channels: dict[int, list[int]] = {}
    for i, x in enumerate(xs):
        if works[i].bands > 1:
            c = x.shape[0]
            weight = _depthwise(op, c, device)  # [C, 1, kh, kw]
            bias = None if op.bias == 0 else torch.full((x.shape[0],), op.bias, device=device)
            conv_in_bands(x, weight, bias, ms[i], bases[i], works[i].bands, padding_mode=op.padding_mode, groups=c)
            continue
        by_channels.setdefault(x.shape[0], []).append(i)
    for c, idx in by_channels.items():
        weight = _depthwise(op, c, device)  # [C, 1, kh, kw]
        bias = None if op.bias == 0 else torch.full((c,), op.bias, device=device)
        convcore.roi_conv2d_batch(
            [xs[i] for i in idx],  # each [C, H_i, W_i]
            weight,
            bias,
            [ms[i] for i in idx],
            padding="same",
            padding_mode=op.padding_mode,
            groups=c,
            outs=[bases[i] for i in idx],  # written in place inside each mask
        )  # the in-ROI windows of every image gathered into one matmul
    return bases


def _depthwise(op: FilterOp, channels: int, device: torch.device) -> torch.Tensor:
    """The (1, 1, kh, kw) kernel repeated per channel: (C, 1, kh, kw) for groups=C."""
    weight = torch.from_numpy(op.weight).to(device)  # [1, 1, kh, kw]
    return weight.expand(channels, 1, *weight.shape[2:]).contiguous()  # [C, 1, kh, kw]


def _run_mix(op, works, xs, ms, device) -> list[torch.Tensor]:
    weight = torch.from_numpy(op.weight).to(device)  # [O, C, kh, kw]
    bias = None if op.bias == 0 else torch.full((weight.shape[0],), op.bias, device=device)
    outs = [_base(w, x, weight.shape[0]) for w, x in zip(works, xs)]
    # masks, not the pieces: a conv that mixes channels rounds in the last bit by the rectangle it runs on (the
    # depthwise ones do not), so planning from the pieces would move a few pixels by one level; a mask keeps them
    ms = [_dense(m, x) for m, x in zip(ms, xs)]  # each [H, W] bool or None
    whole = [i for i, w in enumerate(works) if w.bands <= 1]
    for i, w in enumerate(works):
        if w.bands > 1:
            conv_in_bands(xs[i], weight, bias, ms[i], outs[i], w.bands, padding_mode=op.padding_mode)
    if whole:
        convcore.roi_conv2d_batch(
            [xs[i] for i in whole],
            weight,
            bias,
            [ms[i] for i in whole],
            padding="same",
            padding_mode=op.padding_mode,
            outs=[outs[i] for i in whole],
        )
    return outs


def _run_morph(op, work, x, m, device) -> torch.Tensor:
    se = torch.from_numpy(op.structure).to(device)  # [kh, kw] bool
    offsets = torch.where(se, 0.0, float("-inf")).to(x.dtype)  # [kh, kw]: only the structuring element counts
    C = x.shape[0]
    weight = offsets.expand(C, 1, *se.shape).contiguous()  # [C, 1, kh, kw], one per channel
    out = _base(work, x, C)[None]  # [1, C, H, W]
    # OpenCV's default morphology border (the border never wins) equals replicate for symmetric shapes
    mode = "replicate" if op.padding_mode == "zeros" else op.padding_mode
    convcore.morph_conv2d(
        x[None],
        weight,
        mode=op.mode,
        mask=_batched(m),
        padding="same",
        padding_mode=mode,
        groups=C,
        out=out,
        compile=False,  # a request never waits for a compile: "auto" would compile a hot or a large morph call
    )
    return out[0]


def _run_adaptive(op, work, x, m) -> torch.Tensor:
    # a mask, not the pieces: the blur's exp rounds in the last bit by where a position falls in a band (vector lanes
    # or the tail), so planning from the pieces would change a few results by 1e-4; a mask keeps them as they were
    lo, hi = op.sigma_range
    scale = MAX_VALUE.get(work.pixels.dtype, 1.0)
    intensity = (x.mean(0, keepdim=True) / scale).clamp(0, 1)  # [1, H, W]
    sigma = (lo + (hi - lo) * intensity)[None]  # [1, 1, H, W]
    out = _base(work, x, x.shape[0])[None]  # [1, C, H, W]
    convcore.adaptive_gaussian_blur2d(
        x[None], sigma, op.ksize[0], border_type=op.padding_mode, mask=_batched(_dense(m, x)), out=out
    )
    return out[0]


def _run_model(module, work, x, m) -> torch.Tensor:
    m = _dense(m, x)  # [H, W] bool or None
    scale = MAX_VALUE.get(work.pixels.dtype, 1.0)
    if isinstance(module, ServedModel):  # a torch.export program: computed inside the ROI (see networks.py)
        y = module(x, m, scale)  # [O, H, W]
        return y if m is None else torch.where(m[None], y, _base(work, x, y.shape[0]))
    y = module(x[None] / scale)  # [1, O, H, W], TorchScript: dense
    if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[0] != 1 or y.shape[2:] != x.shape[1:]:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise RuntimeError(f"the model must return (1, O, {x.shape[1]}, {x.shape[2]}) for this image, got {got}")
    y = y[0].to(x.dtype) * scale  # [O, H, W]
    if m is None:
        return y
    base = _base(work, x, y.shape[0])
    return torch.where(m[None], y, base)


def conv_in_bands(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask: convcore.RectRoi | torch.Tensor | None,
    out: torch.Tensor,
    bands: int,
    *,
    padding_mode: str,
    groups: int = 1,
) -> torch.Tensor:
    """Write the "same"-padded convolution of ``x`` into ``out`` inside ``mask``, ``bands`` row bands at a time.

    Args:
        x (Tensor[C, H, W]), weight (Tensor[O, C/groups, kh, kw]), bias (Tensor[O] or None).
        mask (a RectRoi, a bool Tensor[H, W] or None: everywhere), out (Tensor[O, H, W]): written only inside it.
    """
    height = x.shape[1]
    step = -(-height // max(1, bands))
    for y0 in range(0, height, step):
        band = _rows(mask, y0, min(y0 + step, height), x)
        if band is None:
            continue
        convcore.roi_conv2d(
            x[None],
            weight,
            bias,
            band,
            padding="same",
            padding_mode=padding_mode,
            groups=groups,
            out=out[None],
            strategy="tiles",
        )  # [1, O, H, W], written inside the band only
    return out


def _rows(mask, y0: int, y1: int, x: torch.Tensor) -> convcore.RectRoi | torch.Tensor | None:
    """The ROI inside rows [y0, y1) of the image x (Tensor[C, H, W]) for a batch of one: a RectRoi (its boxes cut
    to the rows; the rows themselves for None) or a band mask (Tensor[1, H, W]) for a mask; None when empty."""
    width = x.shape[2]
    if isinstance(mask, torch.Tensor):
        band = torch.zeros(x.shape[1:], dtype=torch.bool, device=x.device)  # [H, W]
        band[y0:y1] = mask[y0:y1]
        return band[None] if bool(band.any()) else None
    if mask is None:
        return convcore.RectRoi([(0, y0, width, y1)])
    boxes, masks = [], []
    for (bx0, by0, bx1, by1), local in zip(mask.boxes, mask.masks):
        a, b = max(by0, y0), min(by1, y1)
        if a < b:
            boxes.append((bx0, a, bx1, b))
            masks.append(None if local is None else local[a - by0 : b - by0])  # [b - a, w]
    return convcore.RectRoi(boxes, masks) if boxes else None
