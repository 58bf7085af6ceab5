"""The tap form of a max/min window reduction of ``x + w`` (morphology), compiled, with a gather backward.

For few window elements per output (C/G·kh·kw small: the depthwise morphology of image filters), the reduction
is written as a chain of elementwise ops over the shifted views of a band's patch — one ``maximum`` (or ``minimum``)
and one ``where`` (the winner's index) per element — which Inductor fuses into one loop over the output, the
output's width vectorized and every tap a vector load: no window view, no reduction loop. The fused band
(:mod:`convcore.compile.fused`) reduces over a strided window view instead; with 9 elements per output its
reduction loop did not vectorize well (3.7× a depthwise ``F.conv2d`` against this form's figure in
docs/benchmarks.md).

Backward, the gradient goes to the first winner of each window alone (as the eager morph's): for stride 1 the
patch's gradient is *gathered* — each input element sums the output gradients of the windows that read it where
their winner is that element, one fused elementwise kernel over the padded output gradient —, and the weight's is
one reduction over (B, h, w) per window element, fused into one loop. Zero padding is copied once, border only, and
cut off again in the backward (``F.pad`` fills the whole padded tensor first; Inductor's in-kernel padding checked
bounds per tap and load: 2× slower than the copy). The winner's index is int32 (int8 kept Inductor from vectorizing:
25× slower). Strided calls scatter the patch gradient
eagerly (``index_add_``).
"""

from __future__ import annotations

import torch

from .cache import CannotCompile, run_compiled

__all__ = ["TAP_FORM_MAX_ELEMENTS", "extremum_band", "pad_zeros"]

# the tap form unrolls one op per window element into the traced graph: beyond this many (C/G·kh·kw) the fused band
# (a reduction loop) serves instead
TAP_FORM_MAX_ELEMENTS = 64


def extremum_band(
    name: str,
    patch: torch.Tensor,
    wg: torch.Tensor,
    reduce: str,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> torch.Tensor:
    """max (``reduce="max"``) or min over every window of ``patch`` of x + w, compiled; raises
    :class:`CannotCompile` where the compiled path is unavailable.

    Args:
        patch (Tensor[B, C, h_in, w_in]): a band's input with its halo, or a whole input with ``pad``.
        wg (Tensor[G, O/G, C/G, kh, kw]): the weight by group.
        pad: (top, bottom, left, right) zeros around ``patch``, copied once (border only), cut off in the backward.

    Returns:
        Tensor[B, O, h, w]; under autograd the gradient reaches ``patch`` and ``wg`` through the first winner of each
        window, in (kh, kw, C/G) order (the eager morph's).
    """
    statics = (reduce, stride, dilation, tuple(pad))
    patch = patch.contiguous()  # one memory layout for every band (see fused.fused_band)
    if torch.is_grad_enabled() and (patch.requires_grad or wg.requires_grad):
        y = _ExtremumBand.apply(patch, wg, name, statics)
    else:
        y = _forward(name, patch, wg, statics, want_index=False)[0]
    return y.flatten(1, 2)  # [B, G, O/G, h, w] -> [B, O, h, w], outside the graph


def _forward(name, patch, wg, statics, want_index):
    reduce, stride, dilation, pad = statics
    patch = pad_zeros(patch, pad)  # [B, C, h_in + top + bottom, w_in + left + right]
    args = (patch, wg, reduce, stride, dilation, want_index)
    return run_compiled(name, _band_forward, ("tap-extremum", statics, want_index), args, dynamic=[(0, (0, 2, 3))])


def _band_forward(patch, wg, reduce, stride, dilation, want_index):
    """(y,) or (y, index of the first winner c·kh·kw + m·kw + q, int32), y Tensor[B, G, O/G, h, w] (traced)."""
    B, C, h_in, w_in = patch.shape
    G, Og, Cg, kh, kw = wg.shape
    (sh, sw), (dh, dw) = stride, dilation
    h, w = (h_in - dh * (kh - 1) - 1) // sh + 1, (w_in - dw * (kw - 1) - 1) // sw + 1
    x = patch.view(B, G, 1, Cg, h_in, w_in)
    wt = wg[None, :, :, :, :, :, None, None]  # [1, G, O/G, C/G, kh, kw, 1, 1]
    pick = torch.maximum if reduce == "max" else torch.minimum
    better = torch.gt if reduce == "max" else torch.lt
    acc = index = None
    for m in range(kh):  # the eager morph's order: tap by tap, channels within a tap
        for q in range(kw):
            for c in range(Cg):
                xs = x[:, :, :, c, m * dh : m * dh + (h - 1) * sh + 1 : sh, q * dw : q * dw + (w - 1) * sw + 1 : sw]
                v = xs + wt[:, :, :, c, m, q]  # [B, G, O/G, h, w]
                if acc is None:
                    acc, index = v, torch.zeros(v.shape, dtype=torch.int32, device=v.device)
                    continue
                if want_index:
                    index = torch.where(better(v, acc), (c * kh + m) * kw + q, index)
                acc = pick(acc, v)
    return (acc, index) if want_index else (acc,)


class _ExtremumBand(torch.autograd.Function):
    """The compiled tap form with the winner's gradient; saves the winners' indices (int32, the output's size)."""

    @staticmethod
    def forward(ctx, patch, wg, name, statics):
        y, index = _forward(name, patch, wg, statics, want_index=True)
        ctx.save_for_backward(index)
        ctx.name, ctx.statics, ctx.shapes = name, statics, (patch.shape, wg.shape)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # g [B, G, O/G, h, w]
        (index,) = ctx.saved_tensors
        _, stride, dilation, pad = ctx.statics
        patch_shape, wg_shape = ctx.shapes
        g = g.contiguous()
        grad_patch = grad_wg = None
        try:
            if ctx.needs_input_grad[0]:
                if stride == (1, 1):
                    grad_patch = _grad_patch_gathered(ctx.name, g, index, wg_shape, dilation, pad)
                else:
                    grad_patch = _grad_patch_scattered(g, index, patch_shape, wg_shape, stride, dilation, pad)
            if ctx.needs_input_grad[1]:
                args = (g, index, wg_shape[2] * wg_shape[3] * wg_shape[4])
                grad_wg = run_compiled(ctx.name, _band_grad_weight, ("tap-extremum-dw",), args, [(0, (0, 3, 4))])
                grad_wg = grad_wg.view(wg_shape)
        except CannotCompile:  # a compile failure in backward never breaks training
            if ctx.needs_input_grad[0]:
                grad_patch = _grad_patch_scattered(g, index, patch_shape, wg_shape, stride, dilation, pad)
            if ctx.needs_input_grad[1]:
                grad_wg = _grad_weight_scattered(g, index, wg_shape)
        return grad_patch, grad_wg, None, None


def _grad_patch_gathered(name, g, index, wg_shape, dilation, pad):
    """∂L/∂patch for stride 1 (compiled): each input element gathers the gradients of the windows whose winner it
    is. Returns Tensor[B, C, h_in, w_in] (without ``pad``)."""
    _, _, Cg, kh, kw = wg_shape
    (dh, dw) = dilation
    ph, pw = dh * (kh - 1), dw * (kw - 1)
    gp = pad_zeros(g, (ph, ph, pw, pw))  # [B, G, O/G, h + 2ph, w + 2pw]: every window that reads an input element
    ip = pad_zeros(index, (ph, ph, pw, pw), value=-1)
    statics = (Cg, kh, kw, dilation, pad)
    return run_compiled(name, _band_grad_patch, ("tap-extremum-dx", statics), (gp, ip, *statics), [(0, (0, 3, 4))])


def _band_grad_patch(gp, ip, Cg, kh, kw, dilation, pad):
    """(traced) Tensor[B, C, h_in, w_in]: Σ over the windows reading each element (taps (m, q), the group's O/G
    outputs) of the output gradient where the window's winner is this element; ``pad`` (top, bottom, left, right)
    is cut off."""
    B, G, Og, hp, wp = gp.shape
    (dh, dw), (top, bottom, left, right) = dilation, pad
    h_in, w_in = hp - dh * (kh - 1) - top - bottom, wp - dw * (kw - 1) - left - right
    zero = torch.zeros((), dtype=gp.dtype, device=gp.device)
    parts = []
    for c in range(Cg):
        acc = None
        for m in range(kh):
            for q in range(kw):
                # tap (m, q) reads padded row R from the window at output row R − m·dh: gp row R + dh·(kh − 1 − m)
                r0, c0 = top + dh * (kh - 1 - m), left + dw * (kw - 1 - q)
                gs, js = gp[:, :, :, r0 : r0 + h_in, c0 : c0 + w_in], ip[:, :, :, r0 : r0 + h_in, c0 : c0 + w_in]
                v = torch.where(js == (c * kh + m) * kw + q, gs, zero).sum(2)  # [B, G, h_in, w_in]
                acc = v if acc is None else acc + v
        parts.append(acc)
    return torch.stack(parts, 2).view(B, G * Cg, h_in, w_in)  # [B, G, C/G, h_in, w_in] -> [B, C, h_in, w_in]


def pad_zeros(x: torch.Tensor, pad: tuple[int, int, int, int], value: float = 0) -> torch.Tensor:
    """``x`` (Tensor[..., H, W]) padded by (top, bottom, left, right) with ``value``, in one pass: the interior
    copied, only the border filled (``F.pad`` fills the whole output first, then copies the interior over it)."""
    top, bottom, left, right = pad
    if not any(pad):
        return x
    H, W = x.shape[-2:]
    out = x.new_empty(*x.shape[:-2], H + top + bottom, W + left + right)
    out[..., top : top + H, left : left + W] = x
    out[..., :top, :] = value
    out[..., top + H :, :] = value
    out[..., top : top + H, :left] = value
    out[..., top : top + H, left + W :] = value
    return out


def _band_grad_weight(g, index, K):
    """(traced) Tensor[G, O/G, K]: Σ over (B, h, w) of the output gradient where element k of the window won."""
    zero = torch.zeros((), dtype=g.dtype, device=g.device)
    return torch.stack([torch.where(index == k, g, zero).sum((0, 3, 4)) for k in range(K)], -1)


def _grad_patch_scattered(g, index, patch_shape, wg_shape, stride, dilation, pad):
    """∂L/∂patch by ``index_add_`` (eager; any stride). Returns Tensor[B, C, h_in, w_in] (without ``pad``)."""
    B, C, h_in, w_in = patch_shape
    top, bottom, left, right = pad
    hp, wp = h_in + top + bottom, w_in + left + right
    G, Og, Cg, kh, kw = wg_shape
    (sh, sw), (dh, dw) = stride, dilation
    _, _, _, h, w = g.shape
    code = index.long()  # [B, G, O/G, h, w]
    c, k = code // (kh * kw), code % (kh * kw)
    rows = torch.arange(h, device=g.device)[:, None] * sh + (k // kw) * dh  # [B, G, O/G, h, w]
    cols = torch.arange(w, device=g.device) * sw + (k % kw) * dw  # [B, G, O/G, h, w]
    chan = (torch.arange(G, device=g.device) * Cg)[:, None, None, None] + c  # [B, G, O/G, h, w]
    img = torch.arange(B, device=g.device)[:, None, None, None, None]
    flat = ((img * C + chan) * hp + rows) * wp + cols  # [B, G, O/G, h, w] into the padded patch
    out = g.new_zeros(B * C * hp * wp).index_add_(0, flat.reshape(-1), g.reshape(-1))
    return out.view(B, C, hp, wp)[:, :, top : top + h_in, left : left + w_in]


def _grad_weight_scattered(g, index, wg_shape):
    """∂L/∂wg by ``scatter_add_`` (eager). Returns Tensor[G, O/G, C/G, kh, kw]."""
    G, Og, Cg, kh, kw = wg_shape
    idx = index.long().permute(1, 2, 0, 3, 4).reshape(G * Og, -1)  # [O, B*h*w]
    src = g.permute(1, 2, 0, 3, 4).reshape(G * Og, -1)  # [O, B*h*w]
    return g.new_zeros(G * Og, Cg * kh * kw).scatter_add_(1, idx, src).view(wg_shape)
