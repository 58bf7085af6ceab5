"""The fused band form of the window ops: one reduction over (kh, kw, C) per output, with a backward derived from
the user's ``fn``, each pass its own compiled kernel.

Forward, ``fn`` is applied to a strided *window view* of the band's patch — ``xs`` (Tensor[B, 1, kh, kw, C, h, w],
no copy) against ``ws`` (Tensor[1, O, kh, kw, C, 1, 1], the weight laid out channel-last) — and reduced over
(kh, kw, C) in one expression. Inductor emits one loop nest: the output's width vectorized, the (kh, kw, C) reduction
innermost with the weight's channels contiguous. The tap-by-tap form (:func:`convcore.compiled.window_band`) compiles
into kh·kw separate reductions; against it, in one run on the 2-core build machine (2×16×256×256, 3×3, static
shapes), this form was 3.1x faster for |x−w|, 1.2x for Huber and 1.3x for exp(−(x−w)²).

Backward, AOTAutograd's derivative of the window view would scatter every window back (measured 10-40x slower than
the forward), so :class:`_FusedBand` derives its own, two more window reductions of the same shape:

- grad of the patch: Σ over (kh, kw, O) of the output gradient's *flipped* windows (the gradient padded by the
  window's reach) times ∂fn/∂x at each input element;
- grad of the weight: Σ over (B, h, w) of the output gradient times ∂fn/∂w at every window element.

Both ∂fn are taken by ``torch.func.vjp`` of ``fn`` on the broadcast operands, with the output gradient expanded as
its cotangent: autograd's sum over the broadcast dims *is* the reduction, and Inductor fuses it, so the
(B, O, kh, kw, C, h, w) product is never stored in either direction. max/min reductions keep the index of the first
winning element per output, in (kh, kw, C) order as the eager morph's running max, and the gradient flows to it
alone.

What this form takes: stride 1 for gradients of the patch (a strided op's patch gradient uses the tap-by-tap form),
``reduce`` in sum, mean, max, min (``keep_window`` forward only), one group per call; under autograd, an ``fn`` that
uses no other tensor needing a gradient (:func:`reaches_other_tensors`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
import torch.nn.functional as F

from .engine.compiled import run_compiled

__all__ = ["FUSED_REDUCTIONS", "fused_band", "fused_supported", "reaches_other_tensors", "window_view"]

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# logsumexp runs tap by tap: its two-pass fused form hit an Inductor range-analysis error with dynamic band sizes
# ("ValueRangeError: Invalid ranges", torch 2.13).
FUSED_REDUCTIONS = ("sum", "mean", "max", "min")


def fused_supported(reduce: str, keep_window: bool, stride: tuple[int, int], needs_grad: bool) -> bool:
    """Whether :func:`fused_band` serves this call (otherwise the tap-by-tap form does)."""
    if not needs_grad:
        return reduce in FUSED_REDUCTIONS
    return reduce in FUSED_REDUCTIONS and not keep_window and stride == (1, 1)


def reaches_other_tensors(fn: Fn, like: torch.Tensor) -> bool:
    """Whether ``fn`` draws on a tensor that needs a gradient other than its two arguments (a closure's parameter,
    a module attribute, a global): the fused backward returns gradients for ``x`` and ``w`` only, so such a function
    takes the tap-by-tap form, whose AOTAutograd backward reaches every input. Probed with two 0-d tensors; a
    function that cannot take them counts as reaching."""
    try:
        with torch.enable_grad():
            zero = torch.zeros((), dtype=like.dtype, device=like.device)
            y = fn(zero, zero)
    except Exception:  # noqa: BLE001 - shape-dependent code: do not guess, take the form that is always right
        return True
    return not isinstance(y, torch.Tensor) or y.requires_grad


def window_view(p: torch.Tensor, kh: int, kw: int, stride: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """Every window of ``p`` (Tensor[B, C, H, W]) as a view: Tensor[B, 1, kh, kw, C, h, w] (no copy)."""
    (sh, sw), (dh, dw) = stride, dilation
    v = p.unfold(2, dh * (kh - 1) + 1, sh)[..., ::dh]  # [B, C, h, W, kh]
    v = v.unfold(3, dw * (kw - 1) + 1, sw)[..., ::dw]  # [B, C, h, w, kh, kw]
    return v.permute(0, 4, 5, 1, 2, 3).unsqueeze(1)  # [B, 1, kh, kw, C, h, w]


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
) -> torch.Tensor | None:
    """``reduce`` of ``fn`` over every window of ``patch``, compiled; None when the compiled path is unavailable.

    Args:
        patch (Tensor[B, C, h_in, w_in]): a band's input with its halo.
        weight (Tensor[O, C, kh, kw]).
        key: the function's cache key (with the op's static arguments).

    Returns:
        Tensor[B, O, h, w], or Tensor[B, O·kh·kw, h, w] with ``keep_window`` (no bias).
    """
    statics = (key, reduce, keep_window, stride, dilation)
    # one memory layout for every band: a band inside the image is a strided view of it, whose other strides would
    # have Dynamo compile the graph again (and that second graph ran 3x slower per position here)
    patch = patch.contiguous()
    wf = weight.permute(0, 2, 3, 1).contiguous()  # [O, kh, kw, C]: channels innermost, as the kernels read them
    if torch.is_grad_enabled() and (patch.requires_grad or weight.requires_grad):
        try:
            return _FusedBand.apply(patch, wf, name, fn, statics)
        except _Unavailable:
            return None
    y = _forward(name, patch, wf, fn, statics, want_index=False)
    if y is None:
        return None
    # keep_window: [B, O, kh, kw, h, w] -> [B, O·kh·kw, h, w] here, outside the graph (inside it, the reshape
    # tripped Inductor's range analysis with dynamic sizes, torch 2.13)
    return y[0].flatten(1, 3) if keep_window else y[0]


def _forward(name, patch, wf, fn, statics, want_index):
    _, reduce, keep_window, stride, dilation = statics
    args = (patch, wf, fn, reduce, keep_window, stride, dilation, want_index)
    return run_compiled(name, _band_forward, ("fused-fwd", statics, want_index), args, dynamic=[(0, (0, 2, 3))])


class _FusedBand(torch.autograd.Function):
    """The fused band with the backward the module docstring derives: gradients of the patch and of the weight in
    its channels-last layout ``wf`` (Tensor[O, kh, kw, C]; autograd carries them back through the permute)."""

    @staticmethod
    def forward(ctx, patch, wf, name, fn, statics):
        _, reduce, _, _, _ = statics
        out = _forward(name, patch, wf, fn, statics, want_index=reduce in ("max", "min"))
        if out is None:
            raise _Unavailable
        y, index = out if len(out) == 2 else (out[0], None)
        ctx.save_for_backward(patch, wf, index)
        ctx.name, ctx.fn, ctx.statics = name, fn, statics
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        patch, wf, index = ctx.saved_tensors
        name, fn, statics = ctx.name, ctx.fn, ctx.statics
        _, reduce, _, stride, dilation = statics
        O, kh, kw, C = wf.shape
        g = g.contiguous()
        if reduce == "mean":
            g = g / (C * kh * kw)
        grad_patch = grad_weight = None
        if ctx.needs_input_grad[0]:
            (dh, dw) = dilation
            ph, pw = dh * (kh - 1), dw * (kw - 1)
            gp = F.pad(g, (pw, pw, ph, ph))  # [B, O, h_in + ph, w_in + pw]: every window that reads an input
            ip = None if index is None else F.pad(index, (pw, pw, ph, ph), value=-1)
            wx = wf.permute(1, 2, 3, 0).contiguous()  # [kh, kw, C, O]
            args = (gp, patch, wx, fn, ip, dilation)
            grad_patch = run_compiled(
                name, _band_grad_patch, ("fused-dx", statics), args, dynamic=[(0, (0, 2, 3)), (1, (0, 2, 3))]
            )
        if ctx.needs_input_grad[1]:
            args = (g, patch, wf, fn, index, stride, dilation)
            grad_weight = run_compiled(
                name, _band_grad_weight, ("fused-dw", statics), args, dynamic=[(0, (0, 2, 3)), (1, (0, 2, 3))]
            )  # [O, kh, kw, C]
        if (ctx.needs_input_grad[0] and grad_patch is None) or (ctx.needs_input_grad[1] and grad_weight is None):
            grad_patch, grad_weight = _eager_backward(ctx, patch, wf, g)
        return grad_patch, grad_weight, None, None, None


class _Unavailable(Exception):
    """The compiled forward is not available (the reason was warned about)."""


def _eager_backward(ctx, patch, wf, g):
    """The backward by eager autograd of the tap-by-tap form: a compile failure in backward never breaks training.
    Returns the gradients of the patch and of ``wf`` (Tensor[O, kh, kw, C])."""
    from .compiled import window_band

    _, reduce, keep_window, stride, dilation = ctx.statics
    if reduce == "mean":  # g arrives divided already; the tap-by-tap form divides again
        g = g * wf[0].numel()
    with torch.enable_grad():
        p, w = patch.detach().requires_grad_(), wf.detach().requires_grad_()
        y = window_band(p, w.permute(0, 3, 1, 2), ctx.fn, None, reduce, keep_window, stride, dilation)
        return torch.autograd.grad(y, (p, w), g)


def _flat_index(kh: int, kw: int, C: int, device: torch.device) -> torch.Tensor:
    """The (kh, kw, C)-order position of every window element: Tensor[kh, kw, C] — tap first, then channel, the
    order in which the eager morph's running max takes the first winner."""
    return torch.arange(kh * kw * C, device=device).view(kh, kw, C)


def _band_forward(patch, wf, fn, reduce, keep_window, stride, dilation, want_index):
    """The compiled forward (traced): (y,) or (y, index of the first winner) for max/min."""
    O, kh, kw, C = wf.shape
    xs = window_view(patch, kh, kw, stride, dilation)  # [B, 1, kh, kw, C, h, w]
    ws = wf[None, :, :, :, :, None, None]  # [1, O, kh, kw, C, 1, 1]
    dims = (4,) if keep_window else (2, 3, 4)
    if reduce in ("max", "min") and want_index and not keep_window:
        v = fn(xs, ws)
        if v.dtype == torch.float32:  # one pass: the winner's value and position packed in one int64 key
            return _packed_extremum(v, reduce, _flat_index(kh, kw, C, patch.device).view(1, 1, kh, kw, C, 1, 1))
    if reduce in ("max", "min"):
        y = fn(xs, ws).amax(dims) if reduce == "max" else fn(xs, ws).amin(dims)
    else:
        y = fn(xs, ws).sum(dims)  # [B, O, h, w], or [B, O, kh, kw, h, w] with keep_window
        if reduce == "mean":
            y = y / (C if keep_window else C * kh * kw)
    if not want_index:
        return (y,)  # [B, O, h, w]
    flat = _flat_index(kh, kw, C, patch.device).view(1, 1, kh, kw, C, 1, 1)
    hit = fn(xs, ws) == y[:, :, None, None, None]
    index = torch.where(hit, flat, C * kh * kw).amin((2, 3, 4)).to(torch.int32)  # [B, O, h, w]
    return y, index


def _packed_extremum(v: torch.Tensor, reduce: str, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """max/min of float32 ``v`` (Tensor[B, O, kh, kw, C, h, w]) over the window and the first winner's position, in
    one reduction: each value's bits, mapped to an int32 of the same order, fill a key's high half and the position
    its low half (complemented for max, so that ties keep the first). NaN wins, as in torch.amax/amin.

    Returns (Tensor[B, O, h, w], int32 Tensor[B, O, h, w]).
    """
    bits = v.view(torch.int32)
    order = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # float order as int32 order (−0 just below +0)
    nan = torch.iinfo(torch.int32).max if reduce == "max" else torch.iinfo(torch.int32).min
    order = torch.where(v != v, nan, order)  # NaN (v != v: a vectorized compare, where isnan is not)
    if reduce == "max":
        key = ((order.to(torch.int64) << 32) | (0xFFFFFFFF - flat)).amax((2, 3, 4))
        index = 0xFFFFFFFF - (key & 0xFFFFFFFF)
    else:
        key = ((order.to(torch.int64) << 32) | flat).amin((2, 3, 4))
        index = key & 0xFFFFFFFF
    top = (key >> 32).to(torch.int32)
    y = (top ^ ((top >> 31) & 0x7FFFFFFF)).view(torch.float32)  # the winner's bits back
    return y, index.to(torch.int32)


def _band_grad_patch(gp, patch, wx, fn, index_padded, dilation):
    """∂L/∂patch (traced), stride 1: Σ over (kh, kw, O) of the flipped gradient windows × ∂fn/∂x.

    Args:
        gp (Tensor[B, O, h_in + ph, w_in + pw]): the output gradient, zero-padded by the window's reach.
        patch (Tensor[B, C, h_in, w_in]), wx (Tensor[kh, kw, C, O]).
        index_padded (int Tensor[B, O, ...] like gp, padded with -1, or None): max/min winners.
    """
    kh, kw, C, O = wx.shape
    B, _, H, W = patch.shape
    gwin = window_view(gp, kh, kw, (1, 1), dilation).flip(2, 3)[:, 0, :, :, None]  # [B, kh, kw, 1, O, H, W]
    xs = patch[:, None, None, :, None]  # [B, 1, 1, C, 1, H, W]
    ws = wx[None, :, :, :, :, None, None]  # [1, kh, kw, C, O, 1, 1]
    shape = (B, kh, kw, C, O, H, W)
    cot = gwin.expand(shape)
    if index_padded is not None:  # only the winning element of each window takes the gradient
        iwin = window_view(index_padded, kh, kw, (1, 1), dilation).flip(2, 3)[:, 0, :, :, None]  # like gwin
        flat = _flat_index(kh, kw, C, patch.device).view(1, kh, kw, C, 1, 1, 1)
        cot = torch.where(iwin == flat, cot, torch.zeros((), dtype=cot.dtype, device=cot.device))
    _, vjp = torch.func.vjp(lambda a: fn(a, ws), xs)
    return vjp(cot)[0].view(B, C, H, W)  # Σ over (kh, kw, O), the broadcast dims


def _band_grad_weight(g, patch, wf, fn, index, stride, dilation):
    """∂L/∂w (traced): Σ over (B, h, w) of the output gradient × ∂fn/∂w at every window element.

    Returns Tensor[O, kh, kw, C].
    """
    O, kh, kw, C = wf.shape
    xs = window_view(patch, kh, kw, stride, dilation)  # [B, 1, kh, kw, C, h, w]
    ws = wf[None, :, :, :, :, None, None]  # [1, O, kh, kw, C, 1, 1]
    B, h, w = xs.shape[0], xs.shape[-2], xs.shape[-1]
    cot = g[:, :, None, None, None].expand(B, O, kh, kw, C, h, w)
    if index is not None:
        flat = _flat_index(kh, kw, C, patch.device).view(1, 1, kh, kw, C, 1, 1)
        hit = index[:, :, None, None, None] == flat
        cot = torch.where(hit, cot, torch.zeros((), dtype=cot.dtype, device=cot.device))
    _, vjp = torch.func.vjp(lambda b: fn(xs, b), ws)
    return vjp(cot)[0].view(O, kh, kw, C)  # Σ over (B, h, w), the broadcast dims
