"""The compiled form of the window ops over the tiles engine: a user's elementwise ``fn`` and the reduction over the
window traced into one kernel per band (:mod:`convcore.compile.cache` holds the cache and the fallback).

Per band the fused form (:mod:`convcore.compile.fused`) runs where it serves; elsewhere the tap-by-tap form
(:func:`convcore.compile.taps.window_band`). Inductor fuses the map and the reductions, so the
(positions, O, C, kh, kw) product never exists in memory, in forward or backward. The tiles engine hands the compute
bands of coherent masks, and gathered window rows for scattered ones (its planner picks, as for the eager ops).
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from ..engine import run_tiles_op
from ..geometry import ConvGeometry
from .cache import run_compiled
from .fused import fused_band, fused_supported
from .grad import Grad, reaches_other_tensors, traced_grad_fn
from .taps import Fn, plus_bias, window_band

__all__ = ["compiled_window_op"]


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
    grad: Grad | None = None,
) -> None:
    """Run the window reduction of ``fn``, compiled, over the tiles engine's bands (or window rows) of the mask.

    ``result`` (Tensor[N, O_flat, H_out, W_out]) is written inside the mask. Raises
    :class:`convcore.compile.cache.CannotCompile` where the compiled path is not available (nothing is left
    half-done that the eager path does not overwrite). ``key`` identifies ``fn`` (and ``grad``) for the cache.
    """
    O, _, kh, kw = weight.shape
    O_flat = O * kh * kw if keep_window else O
    statics = (key, reduce, keep_window, groups, bias is not None)
    tap_fn = fn if grad is None else traced_grad_fn(fn, grad)

    # an fn with parameters of its own (a closure's, a module's) needs the tap form: only its backward reaches them
    reaching = torch.is_grad_enabled() and reaches_other_tensors(fn, input)

    def fused(stride: tuple[int, int], needs_grad: bool) -> bool:
        return not reaching and fused_supported(reduce, keep_window, stride, needs_grad)

    def compute(patch: torch.Tensor, band) -> torch.Tensor:  # patch [B, C, h_in, w_in] -> [B, O_flat, h, w]
        g = band.geom
        if fused(g.stride, torch.is_grad_enabled() and (patch.requires_grad or weight.requires_grad)):
            y = fused_band(name, patch, weight, fn, statics, reduce, keep_window, g.stride, g.dilation, groups, grad)
            return plus_bias(y, bias, keep_window, kh * kw)
        args = (patch, weight, tap_fn, bias, reduce, keep_window, g.stride, g.dilation, groups)
        return run_compiled(name, window_band, (statics, g.stride, g.dilation), args, [(0, (0, 2, 3))])

    # the fused band needs no per-tap temporaries: the patch and the result per position
    needs_grad = torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad)
    per_tap = 1 if fused(geom.stride, needs_grad) else 4
    position_bytes = (input.shape[1] + per_tap * O_flat) * input.element_size()
    run_tiles_op(input, geom, mask, result, compute, position_bytes=position_bytes)
