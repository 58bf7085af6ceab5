"""The compiled form of the window ops: a user's elementwise ``fn`` and the reduction over the window traced into one
kernel (see :mod:`convcore.engine.compiled` for the cache and the fallback).

:func:`window_band` is the form that gets compiled: for one band's input patch (with halo) it sums (or maxes…)
``fn`` over the kh·kw shifted views of the patch, reducing over channels tap by tap; Inductor fuses the map and the
reductions, so the (positions, O, C, kh, kw) product never exists in memory, in forward or backward (AOTAutograd
saves the patch and the weight and recomputes ``fn`` in the backward kernel). The tiles engine hands it bands of
coherent masks, and gathered window rows for scattered ones (its planner picks, as for the eager ops); under an
outer ``torch.compile`` the op is this same form over the whole padded input (:func:`dense_window_op`), with the
mask applied by ``torch.where``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

from .engine import Rect, TileBatch, TilesCompute, run_tiles_op
from .engine.compiled import run_compiled
from .fused_band import fused_band, fused_supported, reaches_other_tensors
from .gather import border_index, pad_input
from .geometry import ConvGeometry

__all__ = [
    "CompileFallback",
    "compiled_or_fallback",
    "compiled_window_op",
    "dense_tiles_op",
    "dense_window_op",
    "masked_result",
    "traced_pad",
    "window_band",
]

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CompileFallback(Exception):
    """The compiled path is not available for this call (the reason was warned about): run the eager path."""


def window_band(
    patch: torch.Tensor,
    weight: torch.Tensor,
    fn: Fn,
    bias: torch.Tensor | None,
    reduce: str,
    keep_window: bool,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int = 1,
) -> torch.Tensor:
    """``reduce`` of ``fn(x, w)`` over every window of ``patch``, tap by tap (traceable; what gets compiled).

    ``fn`` is called once per tap (m, q) with ``x`` (Tensor[B, 1, C, h, w]), the tap's shifted view, and ``w``
    (Tensor[1, O, C, 1, 1]), the tap's weights (with ``groups`` > 1, per group: C/G and O/G channels), so it must
    be elementwise (broadcasting), as the eager contract says.

    Args:
        patch (Tensor[B, C, h_in, w_in]): the band's input with its halo, borders already resolved.
        weight (Tensor[O, C/groups, kh, kw]).
        bias (Tensor[O], optional).
        reduce: "sum" | "mean" | "max" | "min" | "logsumexp"; over (C, kh, kw), or C only with ``keep_window``.

    Returns:
        Tensor[B, O, h, w], or Tensor[B, O·kh·kw, h, w] with ``keep_window``.
    """
    B, C, h_in, w_in = patch.shape
    O, Cg, kh, kw = weight.shape
    (sh, sw), (dh, dw) = stride, dilation
    h, w = (h_in - dh * (kh - 1) - 1) // sh + 1, (w_in - dw * (kw - 1) - 1) // sw + 1
    if groups > 1:  # one group at a time (a 6-D grouped layout tripped Inductor's range analysis, torch 2.13)

        def one_group(p: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return window_band(p, w, fn, None, reduce, keep_window, stride, dilation)

        return _plus_bias(_by_group(patch, weight, groups, one_group), bias, keep_window, kh * kw)
    x = patch.unsqueeze(1)  # [B, 1, C, h_in, w_in]
    wt = weight[None, :, :, :, :, None, None]  # [1, O, C, kh, kw, 1, 1]

    def tap(m: int, q: int) -> torch.Tensor:  # fn at tap (m, q): [B, (G,) O', Cg, h, w]
        xs = x[..., m * dh : m * dh + (h - 1) * sh + 1 : sh, q * dw : q * dw + (w - 1) * sw + 1 : sw]
        return fn(xs, wt[..., m, q, :, :])

    taps = [(m, q) for m in range(kh) for q in range(kw)]
    if keep_window:
        parts = [_reduce_channels(tap(m, q), reduce).reshape(B, O, h, w) for m, q in taps]  # each [B, O, h, w]
        if bias is not None:
            parts = [p + bias[:, None, None] for p in parts]
        return torch.stack(parts, dim=2).view(B, O * kh * kw, h, w)  # [B, O*kh*kw, h, w], (O, kh, kw) order
    if reduce == "logsumexp":  # two passes: the running max, then Σ exp(v − max) — fn is recomputed, not stored
        top = _accumulate([tap(m, q).amax(-3) for m, q in taps], torch.maximum).detach()
        top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
        y = _accumulate([torch.exp(tap(m, q) - top.unsqueeze(-3)).sum(-3) for m, q in taps], torch.add)
        y = torch.log(y) + top
    elif reduce in ("max", "min"):
        pick = torch.maximum if reduce == "max" else torch.minimum
        y = _accumulate([_reduce_channels(tap(m, q), reduce) for m, q in taps], pick)
    else:
        y = _accumulate([tap(m, q).sum(-3) for m, q in taps], torch.add)
        if reduce == "mean":
            y = y / (Cg * kh * kw)
    return y if bias is None else y + bias[:, None, None]  # [B, O, h, w]


def _reduce_channels(v: torch.Tensor, reduce: str) -> torch.Tensor:
    if reduce == "sum":
        return v.sum(-3)
    if reduce == "mean":
        return v.mean(-3)
    if reduce == "logsumexp":
        return torch.logsumexp(v, -3)
    return v.amax(-3) if reduce == "max" else v.amin(-3)


def _accumulate(parts: list[torch.Tensor], op: Callable) -> torch.Tensor:
    acc = parts[0]
    for p in parts[1:]:
        acc = op(acc, p)
    return acc


def compiled_window_op(
    name: str,
    input: torch.Tensor,
    weight: torch.Tensor,
    fn: Fn,
    key: Hashable,
    result: torch.Tensor,
    mask: torch.Tensor | None,
    geom: ConvGeometry,
    *,
    bias: torch.Tensor | None = None,
    reduce: str = "sum",
    keep_window: bool = False,
    groups: int = 1,
) -> None:
    """Run :func:`window_band`, compiled, over the tiles engine's bands (or window rows) of the mask.

    ``result`` (Tensor[N, O_flat, H_out, W_out]) is written inside the mask. Raises :class:`CompileFallback` when
    the compiled path is not available (nothing is left half-done that the eager path does not overwrite).
    """
    O, _, kh, kw = weight.shape
    O_flat = O * kh * kw if keep_window else O
    statics = (key, reduce, keep_window, groups, bias is not None)

    # an fn with parameters of its own (a closure's, a module's) needs the tap form: only its backward reaches them
    reaching = torch.is_grad_enabled() and reaches_other_tensors(fn, input)

    def fused(stride: tuple[int, int], needs_grad: bool) -> bool:
        return not reaching and fused_supported(reduce, keep_window, stride, needs_grad)

    def compute(patch: torch.Tensor, band) -> torch.Tensor:  # patch [B, C, h_in, w_in] -> [B, O_flat, h, w]
        g = band.geom
        if fused(g.stride, torch.is_grad_enabled() and (patch.requires_grad or weight.requires_grad)):
            return _fused(name, patch, weight, fn, statics, bias, reduce, keep_window, g, groups)
        args = (patch, weight, fn, bias, reduce, keep_window, g.stride, g.dilation, groups)
        return compiled_or_fallback(name, window_band, (statics, g.stride, g.dilation), args, [(0, (0, 2, 3))])

    # the fused band needs no per-tap temporaries: the patch and the result per position
    needs_grad = torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad)
    per_tap = 1 if fused(geom.stride, needs_grad) else 4
    position_bytes = (input.shape[1] + per_tap * O_flat) * input.element_size()
    run_tiles_op(input, geom, mask, result, compute, position_bytes=position_bytes)


def _fused(name, patch, weight, fn, statics, bias, reduce, keep_window, g, groups) -> torch.Tensor:
    """:func:`convcore.fused_band.fused_band` over the groups, plus the bias: Tensor[B, O_flat, h, w]."""

    def run(p: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = fused_band(name, p, w, fn, statics, reduce, keep_window, g.stride, g.dilation)
        if y is None:
            raise CompileFallback(name)
        return y

    return _plus_bias(_by_group(patch, weight, groups, run), bias, keep_window, weight.shape[2] * weight.shape[3])


def _by_group(patch: torch.Tensor, weight: torch.Tensor, groups: int, run: Callable) -> torch.Tensor:
    """``run(patch_g, weight_g)`` per group, concatenated over channels: Tensor[B, O(·kh·kw), h, w]."""
    if groups == 1:
        return run(patch, weight)
    O, Cg = weight.shape[:2]
    Og = O // groups
    parts = [run(patch[:, k * Cg : (k + 1) * Cg], weight[k * Og : (k + 1) * Og]) for k in range(groups)]
    return torch.cat(parts, dim=1)  # each part [B, O/G(·kh·kw), h, w]


def _plus_bias(y: torch.Tensor, bias: torch.Tensor | None, keep_window: bool, taps: int) -> torch.Tensor:
    """y (Tensor[B, O, h, w], or Tensor[B, O·taps, h, w] with ``keep_window``) plus the bias per output channel."""
    if bias is None:
        return y
    return y + (bias if not keep_window else bias.repeat_interleave(taps))[:, None, None]


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
) -> torch.Tensor:
    """The op as one traceable expression over the whole padded input, for an outer ``torch.compile``: the mask
    selects by ``torch.where`` (cost does not follow the ROI here; the outer graph owns the whole computation)."""
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


def compiled_or_fallback(name: str, core: Callable, key: Hashable, args: Sequence, dynamic=()) -> torch.Tensor:
    """:func:`convcore.engine.compiled.run_compiled`, raising :class:`CompileFallback` where it returns None."""
    y = run_compiled(name, core, key, args, dynamic=dynamic)
    if y is None:
        raise CompileFallback(name)
    return y
