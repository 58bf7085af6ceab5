"""morph_conv2d: grayscale morphology (dilation / erosion) with a structuring element per (out, in) channel pair."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .checks import check_groups, check_same, check_tensor
from .compile import check_compile, compiled_window_op, dense_window_op, run_op
from .compile.extremum import TAP_FORM_MAX_ELEMENTS, extremum_band
from .engine import needs_grad, run_tiles_op, shifted_views
from .gather import pad_input
from .geometry import PADDING_MODES, ConvGeometry, resolve_padding

__all__ = ["MORPH_PADDING_MODES", "morph_conv2d"]

MODES = ("dilation", "erosion")
MORPH_PADDING_MODES = (*PADDING_MODES, "geodesic")


def morph_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    mode: str = "dilation",
    *,
    mask: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    out: torch.Tensor | None = None,
    compile: bool | str = "auto",
) -> torch.Tensor:
    """Morphological dilation or erosion: a convolution with (max, +) or (min, −) in place of (sum, ×).

    ::

        dilation: y[n, o, i, j] = max_{c, m, q} x[n, c, i·s + m·d, j·s + q·d] + w[o, c, m, q]
        erosion:  y[n, o, i, j] = min_{c, m, q} x[n, c, i·s + m·d, j·s + q·d] − w[o, c, m, q]

    (coordinates in the padded input; c runs over the input channels of o's group) — the element is not reflected:
    kornia's dilation, which reflects it, is ``morph_conv2d(x, se.flip(-2, -1), ...)``. A flat structuring element is
    ``w = 0`` on its taps and ``-inf`` elsewhere; with ``groups=C`` and weight (C, 1, kh, kw) every channel is
    dilated/eroded on its own, like ``cv2.dilate`` / ``cv2.erode`` (use ``padding="same"`` and a non-zero
    ``padding_mode``: zero padding reads 0, it is not OpenCV's "ignore the border").

    Computed as a running max/min over the kh·kw·C shifted views of cache-sized input tiles: the unfolded input is
    never materialized.

    Args:
        input (Tensor[N, C, H, W]): the input batch.
        weight (Tensor[O, C/groups, kh, kw]): the structuring elements; or Tensor[kh, kw], one element for every
            channel on its own (as weight (C, 1, kh, kw) with ``groups=C``; ``groups`` must then be 1 or C).
        mode: "dilation" or "erosion".
        mask (Tensor[N, H_out, W_out] or Tensor[H_out, W_out], bool, optional): the ROI over output positions.
        stride, padding, dilation, groups: as in ``nn.Conv2d``; ``padding`` may be "same" or "valid".
        padding_mode: "zeros" | "reflect" | "replicate" | "circular" | "symmetric" (edge repeated), or
            "geodesic": the border never wins (−inf around a dilation, +inf around an erosion), kornia's default.
        out (Tensor[N, O, H_out, W_out], optional): written only inside the mask; returned.
        compile: True compiles the max/min (``torch.compile``; eager with one warning where impossible): with
            C/groups·kh·kw <= 64 window elements as one fused elementwise kernel over the whole input (bands of the
            mask with one), else one reduction kernel per band; False runs the eager loop; "auto" compiles as
            :func:`window_op2d` does (a large call, or a layer whose eager calls have spent
            :data:`convcore.compile.AUTO_EAGER_SECONDS`; see docs/compile.md). Both give the gradient of a tie to the
            first winner in (kh, kw, C) order.

    Returns:
        Tensor[N, O, H_out, W_out].

    Example:
        >>> x = torch.tensor([[[[0., 0., 5., 0., 0.]]]])
        >>> se = torch.zeros(1, 1, 1, 3)  # flat 1×3 structuring element
        >>> morph_conv2d(x, se, "dilation", padding=(0, 1), padding_mode="replicate")
        tensor([[[[0., 5., 5., 5., 0.]]]])
    """
    check_tensor("input", input, ["N", "C", "H", "W"])
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:  # one element for every channel
        C = input.shape[1]
        if groups not in (1, C):
            raise ValueError(f"a 2-D weight (one element for all channels) takes groups 1 or C = {C}, got {groups}")
        weight, groups = weight.expand(C, 1, *weight.shape), C
    check_tensor("weight", weight, ["O", "C/groups", "kh", "kw"])
    check_same("weight", weight, input)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    O, Cg, kh, kw = weight.shape
    check_groups(input.shape[1], O, Cg, groups)
    check_compile(compile)
    if padding_mode == "geodesic":  # a border that never wins: the input padded once with ∓inf, then no padding
        top, bottom, left, right = resolve_padding(padding, (kh, kw), stride=stride, dilation=dilation)
        fill = -math.inf if mode == "dilation" else math.inf
        input = F.pad(input, (left, right, top, bottom), value=fill)  # [N, C, H + top + bottom, W + left + right]
        padding, padding_mode = 0, "zeros"
    geometry = dict(stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode)
    reduction = dict(reduce="max" if mode == "dilation" else "min", groups=groups)
    signed = weight if mode == "dilation" else -weight  # erosion: min(x − w) = min(x + (−w))
    G = groups
    wg = signed.reshape(G, O // G, Cg, kh, kw)  # [G, O/G, Cg, kh, kw]
    track = needs_grad(input, weight)

    def dense(geom, mask, out):
        return dense_window_op(input, signed, _plus, geom, mask, out, (input.shape[0], O, *geom.out_hw), **reduction)

    def compiled(s):
        return _compiled(input, signed, wg, reduction, s, output)

    def compute(patch: torch.Tensor, band) -> torch.Tensor:  # patch [B, C, h_in, w_in] -> [B, O, h, w]
        if track:
            return _MorphBand.apply(patch, wg, band.geom, band.shape, mode)
        return _morph_band(patch, wg, band.geom, band.shape, mode, track=False)[0]

    def output(s) -> torch.Tensor:  # every position gets written where run_op allocated none (no mask)
        return input.new_empty(input.shape[0], O, *s.geom.out_hw) if s.out is None else s.out

    def eager(s):
        result = output(s)
        run_tiles_op(input, s.geom, s.mask, result, compute, position_bytes=3 * O * input.element_size())
        return result

    return run_op(
        input,
        (kh, kw),
        mask,
        out,
        O,
        geometry,
        compile=compile,
        dense=dense,
        eager=eager,
        compiled=compiled,
        # "auto" compiles morphology by the rule of the window ops (a large call, a hot layer, compiled before): its
        # compiled forms measured faster than the eager loop, forward and backward (docs/benchmarks.md, peers)
        work=lambda s: s.positions * O * Cg * kh * kw,
        generic=True,
        key=("morph_conv2d", mode),
        params=(weight,),
        allocate=mask is not None,  # the whole input's compiled result is returned as it comes
    )


def _compiled(input, signed, wg, reduction, s, output) -> torch.Tensor:
    """The compiled forms of :func:`morph_conv2d` for the planned call ``s``: the tap form (one fused elementwise
    max/min over the shifted views, with the winner's index) up to ``TAP_FORM_MAX_ELEMENTS`` window elements per
    output, the fused band beyond. ``wg`` [G, O/G, Cg, kh, kw] is the signed weight by group."""
    _, _, Cg, kh, kw = wg.shape
    if Cg * kh * kw > TAP_FORM_MAX_ELEMENTS:  # a reduction loop over the window: the fused band
        result = output(s)
        compiled_window_op("morph_conv2d", input, signed, _plus, "plus", result, s.mask, s.geom, **reduction)
        return result
    g = s.geom
    if s.mask is None:  # the whole input in one call: zeros read in the kernel, other borders padded once
        x, pad = (input, g.pad) if g.padding_mode == "zeros" else (pad_input(input, g), (0, 0, 0, 0))
        y = extremum_band("morph_conv2d", x, wg, reduction["reduce"], g.stride, g.dilation, pad)
        return y if s.out is None else s.out.copy_(y)

    def band(patch: torch.Tensor, band) -> torch.Tensor:  # patch [B, C, h_in, w_in] -> [B, O, h, w]
        return extremum_band("morph_conv2d", patch, wg, reduction["reduce"], band.geom.stride, band.geom.dilation)

    O = signed.shape[0]
    run_tiles_op(input, g, s.mask, s.out, band, position_bytes=(input.shape[1] + 2 * O) * input.element_size())
    return s.out


def _plus(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x + w


def _morph_band(
    patch: torch.Tensor, wg: torch.Tensor, geom: ConvGeometry, hw: tuple[int, int], mode: str, *, track: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Running max (dilation) / min (erosion) of x + w over the C/G·kh·kw shifted views of one band's patch.

    Returns the result (Tensor[B, O, h, w]) and, with ``track``, the index of the winning tap (int32
    Tensor[B, O, h, w], c·kh·kw + m·kw + q into ``wg[g, o]``) that the backward pass routes the gradient through.
    """
    G, Og, Cg, kh, kw = wg.shape
    h, w = hw
    B = patch.shape[0]
    pick = torch.maximum if mode == "dilation" else torch.minimum
    better = torch.gt if mode == "dilation" else torch.lt
    wt = wg.permute(3, 4, 2, 0, 1)[..., None, None]  # [kh, kw, Cg, G, O/G, 1, 1]: wt[m, q, c] is [G, O/G, 1, 1]
    acc = code = buf = None
    for m, q, xs in shifted_views(patch, geom, h, w):  # xs [B, C, h, w]
        xcs = xs.unflatten(1, (G, Cg)).unsqueeze(3).unbind(2)  # Cg x [B, G, 1, h, w]
        for c, xc in enumerate(xcs):
            wk = wt[m, q, c]  # [G, O/G, 1, 1]
            if acc is None:
                acc = xc + wk  # [B, G, O/G, h, w]
                code = torch.zeros(acc.shape, dtype=torch.int32, device=acc.device) if track else None
                continue
            buf = torch.add(xc, wk, out=buf)  # [B, G, O/G, h, w]
            if track:
                code.masked_fill_(better(buf, acc), c * kh * kw + m * kw + q)
            pick(acc, buf, out=acc)
    O = G * Og
    return acc.reshape(B, O, h, w), None if code is None else code.reshape(B, O, h, w)


class _MorphBand(torch.autograd.Function):
    """One band of morph_conv2d with a sparse backward: the gradient goes to the winning tap only.

    Saves the winners' indices (int32, the size of the band's output) instead of every x + w of the loop.
    """

    @staticmethod
    def forward(ctx, patch, wg, geom: ConvGeometry, hw: tuple[int, int], mode: str):
        y, code = _morph_band(patch.detach(), wg.detach(), geom, hw, mode, track=True)
        ctx.save_for_backward(code)
        ctx.patch_shape, ctx.wg_shape, ctx.geom = patch.shape, wg.shape, geom
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # grad [B, O, h, w]
        (code,) = ctx.saved_tensors
        B, C, h_in, w_in = ctx.patch_shape
        G, Og, Cg, kh, kw = ctx.wg_shape
        (sh, sw), (dh, dw) = ctx.geom.stride, ctx.geom.dilation
        grad = grad.contiguous()
        code = code.long()  # [B, O, h, w]
        grad_patch = grad_wg = None
        if ctx.needs_input_grad[0]:
            _, O, h, w = grad.shape
            c, k = code // (kh * kw), code % (kh * kw)
            rows = torch.arange(h, device=grad.device)[:, None] * sh + (k // kw) * dh  # [B, O, h, w]
            cols = torch.arange(w, device=grad.device) * sw + (k % kw) * dw  # [B, O, h, w]
            chan = (torch.arange(O, device=grad.device) // Og * Cg)[:, None, None] + c  # [B, O, h, w]
            img = torch.arange(B, device=grad.device)[:, None, None, None]
            flat = ((img * C + chan) * h_in + rows) * w_in + cols  # [B, O, h, w] into the patch
            grad_patch = grad.new_zeros(B * C * h_in * w_in).index_add_(0, flat.reshape(-1), grad.reshape(-1))
            grad_patch = grad_patch.view(B, C, h_in, w_in)
        if ctx.needs_input_grad[1]:
            O = G * Og
            idx = code.transpose(0, 1).reshape(O, -1)  # [O, B*h*w]
            grad_wg = grad.new_zeros(O, Cg * kh * kw).scatter_add_(1, idx, grad.transpose(0, 1).reshape(O, -1))
            grad_wg = grad_wg.view(ctx.wg_shape)
        return grad_patch, grad_wg, None, None, None
