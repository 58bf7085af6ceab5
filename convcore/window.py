"""window_op2d — "a Conv2d that takes a function" — on the windows engine (:mod:`convcore.engine`).

The windows engine gathers the receptive windows of a chunk of output positions and hands them to the op's compute,
so the (N·L, C·kh·kw) unfold of the whole input never exists; under autograd each chunk is checkpointed, so neither
do its intermediates. Values are computed only at in-mask output positions; the rest is zero, or with ``out=`` left
untouched, as in :func:`convcore.roi_conv2d`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .checks import check_bias, check_groups, check_same, check_tensor
from .compile import (
    check_compile,
    check_grad,
    compiled_window_op,
    dense_window_op,
    function_key,
    grad_fn,
    run_op,
)
from .engine import run_windows, window_jobs
from .roi import RectRoi

__all__ = ["window_op2d"]

REDUCTIONS = ("sum", "mean", "max", "min", "logsumexp")
Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def window_op2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    fn: Fn,
    *,
    reduce: str = "sum",
    keep_window: bool = False,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | RectRoi | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    padding_mode: str = "zeros",
    groups: int = 1,
    out: torch.Tensor | None = None,
    compile: bool | str = "auto",
    grad: tuple[Fn, Fn] | None = None,
) -> torch.Tensor:
    """A sliding-window op with any elementwise ``fn`` in place of the product of a convolution.

    For every output position (i, j) and output channel o::

        y[n, o, i, j] = reduce_{c, m, q} fn(x_window, w)[o, c, m, q]      (+ bias[o])

    where ``x_window[c, m, q]`` is the input value under kernel tap (m, q) of the window at (i, j) (read through
    ``padding`` / ``padding_mode``; zero padding reads 0, as ``F.unfold`` does). ``fn=lambda x, w: x * w`` with
    ``reduce="sum"`` is ``F.conv2d``.

    ``fn(x, w)`` is called once per chunk of P windows with:

    * ``x`` (Tensor[P, 1, C, kh, kw]): the P windows of the chunk;
    * ``w`` (Tensor[O, C, kh, kw]): ``weight`` itself;

    and must return a tensor broadcastable to (P, O, C, kh, kw) — any elementwise torch expression of the two
    broadcasts like that (``(x - w).abs()``, ``torch.exp(-(x - w) ** 2)``, …). The result is reduced over
    (C, kh, kw) — or over C only with ``keep_window=True`` — with ``reduce`` in sum | mean | max | min | logsumexp.
    With ``groups`` = G > 1 (as ``nn.Conv2d``: output channel o reads the C/G input channels of its group) ``x`` is
    Tensor[P, G, 1, C/G, kh, kw] and ``w`` Tensor[G, O/G, C/G, kh, kw].

    ``grad=(dfn_dx, dfn_dw)`` replaces autograd's partial derivatives of ``fn`` in the backward: two functions of
    the same broadcast (x, w), each returning a tensor broadcastable like ``fn``'s result; the gradient reaching x
    is Σ ∂L/∂fn · dfn_dx(x, w), the one reaching w is Σ ∂L/∂fn · dfn_dw(x, w) — in the eager, compiled and dense
    forms alike. AdderNet's adder layer with the gradient of its paper (full-precision for the weight, HardTanh for
    the input) is::

        window_op2d(x, w, lambda x, w: -(x - w).abs(), grad=(lambda x, w: F.hardtanh(w - x), lambda x, w: x - w))

    Args:
        input (Tensor[N, C, H, W]): the input batch.
        weight (Tensor[O, C/groups, kh, kw]): the second operand of ``fn``; its shape sets the kernel size.
        fn: the elementwise window function (see above).
        reduce: "sum" | "mean" | "max" | "min" | "logsumexp".
        keep_window: reduce over channels only and keep the window: the channel-only sum of the forum recipe.
        bias (Tensor[O], optional): added after the reduction.
        mask (Tensor[N, H_out, W_out] or Tensor[H_out, W_out], bool, or a :class:`convcore.RectRoi`, optional): the
            ROI over output positions.
        stride, padding, dilation, groups: as in ``nn.Conv2d``; ``padding`` may be "same" or "valid".
        padding_mode: "zeros" | "reflect" | "replicate" | "circular" | "symmetric".
        out (Tensor, optional): the output, written only inside the mask; returned.
        compile: True | False | "auto". True traces ``fn`` and the reduction into one compiled kernel per band
            (``torch.compile``; falls back to the eager chunks, with one warning, where that is impossible); False
            runs the eager chunks; "auto" compiles where a compiler is present and one call evaluates
            ``fn`` at least :data:`convcore.compile.AUTO_MIN_WORK` times, or the eager calls of this layer have
            spent :data:`convcore.compile.AUTO_EAGER_SECONDS` (see docs/compile.md). On the
            compiled path ``fn`` sees other broadcast layouts of the same operands (whole windows as strided views,
            or one tap at a time), so it must be elementwise.
        grad: (dfn_dx, dfn_dw), the partial derivatives of ``fn`` to use in the backward, or None (autograd's).

    Returns:
        Tensor[N, O, H_out, W_out], or Tensor[N, O, kh, kw, H_out, W_out] with ``keep_window=True``.

    Example:
        >>> x, w = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)
        >>> y = window_op2d(x, w, lambda x, w: x * w, padding=1)
        >>> torch.allclose(y, torch.nn.functional.conv2d(x, w, padding=1), atol=1e-5)
        True
        >>> window_op2d(x, w, lambda x, w: (x - w).abs(), reduce="max").shape
        torch.Size([1, 3, 4, 4])
    """
    check_tensor("input", input, ["N", "C", "H", "W"])
    check_tensor("weight", weight, ["O", "C/groups", "kh", "kw"])
    check_same("weight", weight, input)
    if not callable(fn):
        raise TypeError(f"fn must be a callable fn(x, w) -> Tensor, got {type(fn).__name__}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if not isinstance(keep_window, bool):
        raise TypeError(f"keep_window must be a bool, got {type(keep_window).__name__}")
    O, Cg, kh, kw = weight.shape
    check_groups(input.shape[1], O, Cg, groups)
    check_bias(bias, O, input)
    check_compile(compile)
    grad = check_grad(grad)
    if keep_window and out is not None and not out.is_contiguous():
        raise ValueError("out must be contiguous with keep_window=True (it is written as (N, O*kh*kw, H_out, W_out))")
    geometry = dict(stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode)
    reduction = dict(bias=bias, reduce=reduce, keep_window=keep_window, groups=groups)
    channels = (O, kh, kw) if keep_window else (O,)
    key = function_key(fn) if grad is None else (function_key(fn), function_key(grad[0]), function_key(grad[1]))

    def dense(geom, mask, out):
        out_shape = (input.shape[0], *channels, *geom.out_hw)
        return dense_window_op(input, weight, fn, geom, mask, out, out_shape, grad=grad, **reduction)

    def compiled(s):
        flat = s.out.flatten(1, -3)  # [N, O_flat, H_out, W_out]
        compiled_window_op("window_op2d", input, weight, fn, key, flat, s.mask, s.geom, grad=grad, **reduction)
        return s.out

    def eager(s):
        _eager_window_op(input, weight, grad_fn(fn, grad, input), s.out.flatten(1, -3), s.mask, s.geom, **reduction)
        return s.out

    return run_op(
        input,
        (kh, kw),
        mask,
        out,
        channels,
        geometry,
        compile=compile,
        dense=dense,
        eager=eager,
        compiled=compiled,
        work=lambda s: s.positions * O * Cg * kh * kw,
        generic=True,
        key=key,
        params=(weight,) if bias is None else (weight, bias),
    )


def _eager_window_op(input, weight, fn, flat, mask, geom, *, bias, reduce, keep_window, groups) -> None:
    """The reference path on the windows engine: ``fn`` on each chunk's windows, reduced; writes ``flat``
    (Tensor[N, O_flat, H_out, W_out]) inside ``mask``."""
    C = input.shape[1]
    O, Cg, kh, kw = weight.shape
    G = groups
    O_flat = O * kh * kw if keep_window else O
    dims = (-3,) if keep_window else (-3, -2, -1)
    w = weight if G == 1 else weight.view(G, O // G, Cg, kh, kw)  # [O, C, kh, kw] or [G, O/G, C/G, kh, kw]

    def compute(cols: torch.Tensor) -> torch.Tensor:  # cols [C, K, P] -> [O_flat, P]
        P = cols.shape[2]
        x = cols.permute(2, 0, 1).reshape(P, 1, C, kh, kw)  # [P, 1, C, kh, kw]
        if G > 1:
            x = x.view(P, 1, G, Cg, kh, kw).transpose(1, 2)  # [P, G, 1, C/G, kh, kw]
        v = fn(x, w)
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"fn must return a torch.Tensor, got {type(v).__name__}")
        full = (P, O, C, kh, kw) if G == 1 else (P, G, O // G, Cg, kh, kw)
        if tuple(v.shape) != full:
            try:
                v = v.broadcast_to(full)  # [P, O, C, kh, kw] or [P, G, O/G, C/G, kh, kw]
            except RuntimeError:
                raise ValueError(
                    f"fn(x, w) must return a tensor broadcastable to {full} for x of shape {tuple(x.shape)} and w "
                    f"of shape {tuple(w.shape)}; got {tuple(v.shape)}"
                ) from None
        r = _reduce(v, reduce, dims).reshape(P, O, *((kh, kw) if keep_window else ()))  # [P, O(, kh, kw)]
        if bias is not None:
            r = r + (bias if not keep_window else bias[:, None, None])
        return r.reshape(P, O_flat).t()  # [O_flat, P]

    per_window = (2 * C * kh * kw + 3 * O * Cg * kh * kw + 2 * O_flat) * input.element_size()
    recompute = torch.is_grad_enabled()
    jobs = window_jobs(input, flat, mask, geom)
    run_windows(jobs, compute, window_bytes=per_window, recompute=recompute, reuse=not recompute)


def _reduce(v: torch.Tensor, reduce: str, dims: tuple[int, ...]) -> torch.Tensor:
    if reduce == "sum":
        return v.sum(dims)
    if reduce == "mean":
        return v.mean(dims)
    if reduce == "logsumexp":
        return torch.logsumexp(v, dims)
    return v.amax(dims) if reduce == "max" else v.amin(dims)
