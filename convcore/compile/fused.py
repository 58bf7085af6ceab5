"""The fused band form of the window ops: one reduction over (kh, kw, C) per output, with a backward derived from
the user's ``fn``, each pass its own compiled kernel.

Forward, ``fn`` is applied to a strided *window view* of the band's patch — ``xs``
(Tensor[B, G, 1, kh, kw, C/G, h, w], no copy) against ``ws`` (Tensor[1, G, O/G, kh, kw, C/G, 1, 1], the weight
laid out channel-last, G the groups) — and reduced over (kh, kw, C/G) in one expression, every group in one kernel.
Inductor emits one loop nest: the output's width vectorized, the (kh, kw, C) reduction innermost with the weight's
channels contiguous. The tap-by-tap form (:func:`convcore.compile.taps.window_band`) compiles into kh·kw separate
reductions; against it, in one run on the 2-core build machine (2×16×256×256, 3×3, static shapes), this form was
3.1x faster for |x−w|, 1.2x for Huber and 1.3x for exp(−(x−w)²).

Backward, AOTAutograd's derivative of the window view would scatter every window back (measured 10-40x slower than
the forward), so :class:`_FusedBand` derives its own, two more window reductions of the same shape:

- grad of the patch: Σ over (kh, kw, O) of the output gradient's *flipped* windows (the gradient padded by the
  window's reach) times ∂fn/∂x at each input element;
- grad of the weight: Σ over (B, h, w) of the output gradient times ∂fn/∂w at every window element.

Both ∂fn are taken by ``torch.func.vjp`` of ``fn`` on the broadcast operands, with the output gradient expanded as
its cotangent — or, with a custom gradient ``grad=(dfn_dx, dfn_dw)``, as the cotangent times the caller's
partial derivative, summed to the operand's shape: the sum over the broadcast dims *is* the reduction, and Inductor
fuses it, so the (B, O, kh, kw, C, h, w) product is never stored in either direction. max/min reductions keep the
index of the first winning element per output, in (kh, kw, C) order as the eager morph's running max, and the
gradient flows to it alone.

What this form takes: stride 1 for gradients of the patch (a strided op's patch gradient uses the tap-by-tap form),
``reduce`` in sum, mean, max, min (``keep_window`` forward only), any groups; under autograd, an ``fn`` that uses no
other tensor needing a gradient (:func:`convcore.compile.grad.reaches_other_tensors`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
import torch.nn.functional as F

from .cache import CannotCompile, run_compiled
from .grad import Grad, affine_coefficients, affine_weight_grad, traced_grad_fn
from .taps import window_band

__all__ = ["FUSED_REDUCTIONS", "fused_band", "fused_supported", "window_view"]

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# logsumexp runs tap by tap: its two-pass fused form hit an Inductor range-analysis error with dynamic band sizes
# ("ValueRangeError: Invalid ranges", torch 2.13).
FUSED_REDUCTIONS = ("sum", "mean", "max", "min")


def fused_supported(reduce: str, keep_window: bool, stride: tuple[int, int], needs_grad: bool) -> bool:
    """Whether :func:`fused_band` serves this call (otherwise the tap-by-tap form does)."""
    if not needs_grad:
        return reduce in FUSED_REDUCTIONS
    return reduce in FUSED_REDUCTIONS and not keep_window and stride == (1, 1)


def window_view(
    p: torch.Tensor, kh: int, kw: int, stride: tuple[int, int], dilation: tuple[int, int], groups: int = 1
) -> torch.Tensor:
    """Every window of ``p`` (Tensor[B, C, H, W]) as a view: Tensor[B, G, 1, kh, kw, C/G, h, w] (no copy)."""
    (sh, sw), (dh, dw) = stride, dilation
    v = p.unfold(2, dh * (kh - 1) + 1, sh)[..., ::dh]  # [B, C, h, W, kh]
    v = v.unfold(3, dw * (kw - 1) + 1, sw)[..., ::dw]  # [B, C, h, w, kh, kw]
    v = v.unflatten(1, (groups, p.shape[1] // groups))  # [B, G, C/G, h, w, kh, kw]
    return v.permute(0, 1, 5, 6, 2, 3, 4).unsqueeze(2)  # [B, G, 1, kh, kw, C/G, h, w]


def fused_band(
    name: str,
    patch: torch.Tensor,
    weight: torch.Tensor,
    fn: Fn,
    key: Hashable,
    reduce: str,
    keep_window: bool,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int = 1,
    grad: Grad | None = None,
) -> torch.Tensor:
    """``reduce`` of ``fn`` over every window of ``patch``, compiled; raises :class:`CannotCompile` where the
    compiled path is unavailable.

    Args:
        patch (Tensor[B, C, h_in, w_in]): a band's input with its halo.
        weight (Tensor[O, C/groups, kh, kw]).
        key: the function's cache key (with the op's static arguments).
        grad: (dfn_dx, dfn_dw), the caller's partial derivatives of ``fn`` for the backward, or None (autograd's).

    Returns:
        Tensor[B, O, h, w], or Tensor[B, O·kh·kw, h, w] with ``keep_window`` (no bias).
    """
    statics = (key, reduce, keep_window, stride, dilation)
    O, Cg, kh, kw = weight.shape
    # one memory layout for every band: a band inside the image is a strided view of it, whose other strides would
    # have Dynamo compile the graph again (and that second graph ran 3x slower per position here)
    patch = patch.contiguous()
    # [G, O/G, kh, kw, C/G]: channels innermost, as the kernels read them
    wf = weight.view(groups, O // groups, Cg, kh, kw).permute(0, 1, 3, 4, 2).contiguous()
    if torch.is_grad_enabled() and (patch.requires_grad or weight.requires_grad):
        y = _FusedBand.apply(patch, wf, name, fn, statics, grad)
    else:
        y = _forward(name, patch, wf, fn, statics, want_index=False)[0]
    # [B, G, O/G, (kh, kw,) h, w] -> [B, O(·kh·kw), h, w] here, outside the graph (inside it, the reshape tripped
    # Inductor's range analysis with dynamic sizes, torch 2.13)
    return y.flatten(1, 4 if keep_window else 2)


def _forward(name, patch, wf, fn, statics, want_index):
    _, reduce, keep_window, stride, dilation = statics
    args = (patch, wf, fn, reduce, keep_window, stride, dilation, want_index)
    return run_compiled(name, _band_forward, ("fused-fwd", statics, want_index), args, dynamic=[(0, (0, 2, 3))])


class _FusedBand(torch.autograd.Function):
    """The fused band with the backward the module docstring derives: gradients of the patch and of the weight in
    its grouped channels-last layout ``wf`` (Tensor[G, O/G, kh, kw, C/G]; autograd carries them back through the
    permute). The output is Tensor[B, G, O/G, h, w]."""

    @staticmethod
    def forward(ctx, patch, wf, name, fn, statics, grad):
        _, reduce, _, _, _ = statics
        out = _forward(name, patch, wf, fn, statics, want_index=reduce in ("max", "min"))
        y, index = out if len(out) == 2 else (out[0], None)
        ctx.save_for_backward(patch, wf, index)
        ctx.name, ctx.fn, ctx.statics, ctx.grad = name, fn, statics, grad
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # g [B, G, O/G, h, w]
        patch, wf, index = ctx.saved_tensors
        name, fn, statics, grad = ctx.name, ctx.fn, ctx.statics, ctx.grad
        _, reduce, _, stride, dilation = statics
        G, Og, kh, kw, Cg = wf.shape
        g = g.contiguous()
        if reduce == "mean":
            g = g / (Cg * kh * kw)
        try:
            return (*_derived_backward(ctx, name, patch, wf, fn, grad, index, g, statics), None, None, None, None)
        except CannotCompile:  # a compile failure in backward never breaks training
            return (*_eager_backward(ctx, patch, wf, g), None, None, None, None)


def _derived_backward(ctx, name, patch, wf, fn, grad, index, g, statics):
    """The two compiled window reductions: (∂L/∂patch or None, ∂L/∂wf or None)."""
    _, _, _, stride, dilation = statics
    G, Og, kh, kw, Cg = wf.shape
    grad_patch = grad_weight = None
    dynamic = [(0, (0, 3, 4)), (1, (0, 2, 3))]
    if ctx.needs_input_grad[0]:
        (dh, dw) = dilation
        ph, pw = dh * (kh - 1), dw * (kw - 1)
        gp = F.pad(g, (pw, pw, ph, ph))  # [B, G, O/G, h_in + ph, w_in + pw]: every window that reads an input
        ip = None if index is None else F.pad(index, (pw, pw, ph, ph), value=-1)
        wx = wf.permute(0, 2, 3, 4, 1).contiguous()  # [G, kh, kw, C/G, O/G]
        args = (gp, patch, wx, fn, grad, ip, dilation)
        grad_patch = run_compiled(name, _band_grad_patch, ("fused-dx", statics), args, dynamic=dynamic)
    if ctx.needs_input_grad[1]:
        coefficients = None if grad is None or index is not None else affine_coefficients(grad[1])
        if coefficients is not None:  # dfn_dw = a·x + b·w: a convolution's weight gradient (GEMM) and b·w·Σg
            weight = wf.permute(0, 1, 4, 2, 3).reshape(G * Og, Cg, kh, kw)  # [O, C/G, kh, kw]
            gw = affine_weight_grad(coefficients, patch, weight, g.flatten(1, 2), stride, dilation, G)
            return grad_patch, gw.view(G, Og, Cg, kh, kw).permute(0, 1, 3, 4, 2)  # [G, O/G, kh, kw, C/G]
        args = (g, patch, wf, fn, grad, index, stride, dilation)
        grad_weight = run_compiled(name, _band_grad_weight, ("fused-dw", statics), args, dynamic=dynamic)
    return grad_patch, grad_weight


def _eager_backward(ctx, patch, wf, g):
    """The backward by eager autograd of the tap-by-tap form. Returns the gradients of the patch and of ``wf``
    (Tensor[G, O/G, kh, kw, C/G])."""
    _, reduce, keep_window, stride, dilation = ctx.statics
    G, Og, kh, kw, Cg = wf.shape
    if reduce == "mean":  # g arrives divided already; the tap-by-tap form divides again
        g = g * (Cg * kh * kw)
    fn = ctx.fn if ctx.grad is None else traced_grad_fn(ctx.fn, ctx.grad)
    with torch.enable_grad():
        p, w = patch.detach().requires_grad_(), wf.detach().requires_grad_()
        weight = w.permute(0, 1, 4, 2, 3).reshape(G * Og, Cg, kh, kw)  # [O, C/G, kh, kw]
        y = window_band(p, weight, fn, None, reduce, keep_window, stride, dilation, G)  # [B, O, h, w]
        return torch.autograd.grad(y, (p, w), g.flatten(1, 2))


def _flat_index(kh: int, kw: int, C: int, device: torch.device) -> torch.Tensor:
    """The (kh, kw, C)-order position of every window element: Tensor[kh, kw, C] — tap first, then channel, the
    order in which the eager morph's running max takes the first winner."""
    return torch.arange(kh * kw * C, device=device).view(kh, kw, C)


def _partial(fn: Fn, grad: Grad | None, which: int, xs: torch.Tensor, ws: torch.Tensor, cot: torch.Tensor):
    """Σ over the broadcast dims of ``cot`` × ∂fn/∂(xs or ws), in the operand's shape: by ``torch.func.vjp`` of
    ``fn``, or with the caller's partial derivative ``grad[which]``."""
    if grad is not None:
        return (cot * grad[which](xs, ws)).sum_to_size((xs, ws)[which].shape)
    if which == 0:
        _, vjp = torch.func.vjp(lambda a: fn(a, ws), xs)
    else:
        _, vjp = torch.func.vjp(lambda b: fn(xs, b), ws)
    return vjp(cot)[0]


def _band_forward(patch, wf, fn, reduce, keep_window, stride, dilation, want_index):
    """The compiled forward (traced): (y,) or (y, index of the first winner) for max/min; y is
    Tensor[B, G, O/G, h, w] (Tensor[B, G, O/G, kh, kw, h, w] with ``keep_window``), the index int32 like y."""
    G, Og, kh, kw, Cg = wf.shape
    xs = window_view(patch, kh, kw, stride, dilation, G)  # [B, G, 1, kh, kw, C/G, h, w]
    ws = wf[None, :, :, :, :, :, None, None]  # [1, G, O/G, kh, kw, C/G, 1, 1]
    dims = (5,) if keep_window else (3, 4, 5)
    flat = _flat_index(kh, kw, Cg, patch.device).view(1, 1, 1, kh, kw, Cg, 1, 1)
    if reduce in ("max", "min") and want_index and not keep_window:
        v = fn(xs, ws)
        if v.dtype == torch.float32:  # one pass: the winner's value and position packed in one int64 key
            return _packed_extremum(v, reduce, flat)
    if reduce in ("max", "min"):
        y = fn(xs, ws).amax(dims) if reduce == "max" else fn(xs, ws).amin(dims)
    else:
        y = fn(xs, ws).sum(dims)  # [B, G, O/G, h, w], or [B, G, O/G, kh, kw, h, w] with keep_window
        if reduce == "mean":
            y = y / (Cg if keep_window else Cg * kh * kw)
    if not want_index:
        return (y,)
    hit = fn(xs, ws) == y[:, :, :, None, None, None]
    index = torch.where(hit, flat, Cg * kh * kw).amin((3, 4, 5)).to(torch.int32)  # [B, G, O/G, h, w]
    return y, index


def _packed_extremum(v: torch.Tensor, reduce: str, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """max/min of float32 ``v`` (Tensor[B, G, O/G, kh, kw, C/G, h, w]) over the window and the first winner's
    position, in one reduction: each value's bits, mapped to an int32 of the same order, fill a key's high half and
    the position its low half (complemented for max, so that ties keep the first). NaN wins, as in torch.amax/amin.

    Returns (Tensor[B, G, O/G, h, w], int32 Tensor[B, G, O/G, h, w]).
    """
    bits = v.view(torch.int32)
    order = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # float order as int32 order (−0 just below +0)
    nan = torch.iinfo(torch.int32).max if reduce == "max" else torch.iinfo(torch.int32).min
    order = torch.where(v != v, nan, order)  # NaN (v != v: a vectorized compare, where isnan is not)
    if reduce == "max":
        key = ((order.to(torch.int64) << 32) | (0xFFFFFFFF - flat)).amax((3, 4, 5))
        index = 0xFFFFFFFF - (key & 0xFFFFFFFF)
    else:
        key = ((order.to(torch.int64) << 32) | flat).amin((3, 4, 5))
        index = key & 0xFFFFFFFF
    top = (key >> 32).to(torch.int32)
    y = (top ^ ((top >> 31) & 0x7FFFFFFF)).view(torch.float32)  # the winner's bits back
    return y, index.to(torch.int32)


def _band_grad_patch(gp, patch, wx, fn, grad, index_padded, dilation):
    """∂L/∂patch (traced), stride 1: Σ over (kh, kw, O/G) of the flipped gradient windows × ∂fn/∂x.

    Args:
        gp (Tensor[B, G, O/G, h_in + ph, w_in + pw]): the output gradient, zero-padded by the window's reach.
        patch (Tensor[B, C, h_in, w_in]), wx (Tensor[G, kh, kw, C/G, O/G]).
        index_padded (int Tensor like gp, padded with -1, or None): max/min winners.
    """
    G, kh, kw, Cg, Og = wx.shape
    B, C, H, W = patch.shape

    def flipped(t: torch.Tensor) -> torch.Tensor:  # [B, G, O/G, ...] -> [B, G, kh, kw, 1, O/G, H, W], taps reversed
        win = window_view(t.flatten(1, 2), kh, kw, (1, 1), dilation, G)  # [B, G, 1, kh, kw, O/G, H, W]
        return win.flip(3, 4)[:, :, 0, :, :, None]

    xs = patch.view(B, G, 1, 1, Cg, 1, H, W)
    ws = wx[None, :, :, :, :, :, None, None]  # [1, G, kh, kw, C/G, O/G, 1, 1]
    cot = flipped(gp).expand(B, G, kh, kw, Cg, Og, H, W)
    if index_padded is not None:  # only the winning element of each window takes the gradient
        flat = _flat_index(kh, kw, Cg, patch.device).view(1, 1, kh, kw, Cg, 1, 1, 1)
        cot = torch.where(flipped(index_padded) == flat, cot, torch.zeros((), dtype=cot.dtype, device=cot.device))
    return _partial(fn, grad, 0, xs, ws, cot).view(B, C, H, W)  # Σ over (kh, kw, O/G), the broadcast dims


def _band_grad_weight(g, patch, wf, fn, grad, index, stride, dilation):
    """∂L/∂w (traced): Σ over (B, h, w) of the output gradient (Tensor[B, G, O/G, h, w]) × ∂fn/∂w at every
    window element.

    Returns Tensor[G, O/G, kh, kw, C/G].
    """
    G, Og, kh, kw, Cg = wf.shape
    xs = window_view(patch, kh, kw, stride, dilation, G)  # [B, G, 1, kh, kw, C/G, h, w]
    ws = wf[None, :, :, :, :, :, None, None]  # [1, G, O/G, kh, kw, C/G, 1, 1]
    B, h, w = xs.shape[0], xs.shape[-2], xs.shape[-1]
    cot = g[:, :, :, None, None, None].expand(B, G, Og, kh, kw, Cg, h, w)
    if index is not None:
        flat = _flat_index(kh, kw, Cg, patch.device).view(1, 1, 1, kh, kw, Cg, 1, 1)
        hit = index[:, :, :, None, None, None] == flat
        cot = torch.where(hit, cot, torch.zeros((), dtype=cot.dtype, device=cot.device))
    return _partial(fn, grad, 1, xs, ws, cot).view(G, Og, kh, kw, Cg)  # Σ over (B, h, w), the broadcast dims
