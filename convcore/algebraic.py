"""Window ops whose algebra lowers them to ordinary convolutions: offset_conv2d (y = Σ A⊙(x − B)),
quadratic_conv2d (y = Σ a x² + b x + c) and distance_conv2d (y = −Σ |x − w|^p; AdderNet for p = 1).

The lowered forms call :func:`convcore.roi_conv2d`, so they inherit its exactness, its strategies and its speed
inside small ROIs. When a mask is given, the input transform (x², channel sums) is applied only to the input patch
under the mask's bounding box (:func:`_roi_patch`), never to the whole image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .checks import check_bias, check_groups, check_same, check_tensor
from .compile import (
    check_compile,
    check_grad,
    compiled_window_op,
    function_key,
    masked_result,
    run_op,
    traced_pad,
    tracing,
)
from .compile.grad import affine, affine_coefficients, affine_weight_grad
from .engine import dense_roi, needs_grad, run_tiles_op, shifted_views
from .functional import roi_conv2d
from .gather import gather_tile
from .geometry import ConvGeometry
from .window import window_op2d

__all__ = ["ADDERNET_GRAD", "distance_conv2d", "offset_conv2d", "quadratic_conv2d"]


def _adder_dx(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.hardtanh(w - x)  # AdderNet's input gradient: HardTanh of the full-precision one


@affine(1, -1)  # its weight gradient Σ g·(x − w) is a convolution's weight gradient minus w·Σ g
def _adder_dw(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x - w  # AdderNet's weight gradient: the full-precision difference, not its sign


# AdderNet's gradient for y = −Σ|x − w| (Chen et al., CVPR 2020): ``grad=ADDERNET_GRAD`` on distance_conv2d (p = 1),
# DistanceConv2d or window_op2d
ADDERNET_GRAD = (_adder_dx, _adder_dw)


def offset_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    offset: torch.Tensor,
    bias: torch.Tensor | None = None,
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
    """y = Σ_{c, m, q} A ⊙ (x_window − B)  (+ bias): a convolution of the input shifted by a learnable offset.

    Lowered exactly to ``roi_conv2d(x, A, bias − Σ A⊙B)``: one ordinary convolution. Padded positions read the
    padding value (0 for zero padding) before the offset is subtracted, as in :func:`window_op2d` with
    ``fn=lambda x, w: A * (x - B)``.

    Args:
        input (Tensor[N, C, H, W]): the input batch.
        weight (Tensor[O, C/groups, kh, kw]): A.
        offset (Tensor broadcastable to weight's shape, e.g. Tensor[O, C/groups, kh, kw] or Tensor[C/groups, 1, 1]):
            B.
        bias (Tensor[O], optional): added at every computed position.
        mask (Tensor[N, H_out, W_out] or Tensor[H_out, W_out], bool, optional): the ROI over output positions.
        stride, padding, dilation, groups: as in ``nn.Conv2d``; ``padding`` may be "same" or "valid".
        padding_mode: "zeros" | "reflect" | "replicate" | "circular" | "symmetric".
        out (Tensor[N, O, H_out, W_out], optional): written only inside the mask; returned.
        compile: accepted for symmetry (True | False | "auto"); the lowered form already runs at F.conv2d's pace,
            so nothing is compiled here. Inside an outer ``torch.compile`` the op is traceable (dense F.conv2d).

    Returns:
        Tensor[N, O, H_out, W_out].

    Example:
        >>> x, A = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)
        >>> y = offset_conv2d(x, A, torch.ones(1), padding=1)  # Σ A⊙(x − 1)
        >>> torch.allclose(y, torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1)) - 1, A), atol=1e-5)
        True
    """
    check_tensor("input", input, ["N", "C", "H", "W"])
    check_tensor("weight", weight, ["O", "C/groups", "kh", "kw"])
    if not isinstance(offset, torch.Tensor):
        raise TypeError(f"offset must be a torch.Tensor broadcastable to weight's shape, got {type(offset).__name__}")
    check_same("offset", offset, input)
    if _broadcast_shape(offset.shape, weight.shape) != tuple(weight.shape):
        raise ValueError(
            f"offset must be broadcastable to weight's shape {tuple(weight.shape)}, got {tuple(offset.shape)}"
        )
    check_bias(bias, weight.shape[0], input)
    check_compile(compile)
    shift = (weight * offset).sum((1, 2, 3))  # [O]: Σ A⊙B
    bias = -shift if bias is None else bias - shift
    geometry = dict(stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode)
    return _lowered(input, [(None, weight)], bias, mask, out, groups=groups, **geometry)


def quadratic_conv2d(
    input: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    padding_mode: str = "zeros",
    out: torch.Tensor | None = None,
    compile: bool | str = "auto",
) -> torch.Tensor:
    """y = Σ_{c, m, q} (a ⊙ x_window² + b ⊙ x_window)  (+ c): a convolution quadratic in the input.

    Lowered exactly to ``roi_conv2d(x², a) + roi_conv2d(x, b) + c`` (padding x² is the square of padding x in every
    padding mode): two convolutions' worth of multiply-adds, without copying the input into a stacked tensor.

    Args:
        input (Tensor[N, C, H, W]): the input batch.
        a, b (Tensor[O, C, kh, kw]): the quadratic and linear weights.
        c (Tensor[O], optional): the constant term.
        mask, stride, padding, dilation, padding_mode, out: as in :func:`window_op2d`.
        compile: as in :func:`offset_conv2d` (lowered: nothing to compile).

    Returns:
        Tensor[N, O, H_out, W_out].

    Example:
        >>> x, a, b = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3), torch.randn(3, 2, 3, 3)
        >>> conv = torch.nn.functional.conv2d
        >>> torch.allclose(quadratic_conv2d(x, a, b), conv(x * x, a) + conv(x, b), atol=1e-4)
        True
    """
    check_tensor("input", input, ["N", "C", "H", "W"])
    check_tensor("a", a, ["O", "C", "kh", "kw"])
    check_tensor("b", b, ["O", "C", "kh", "kw"])
    check_same("a", a, input)
    check_same("b", b, input)
    if a.shape != b.shape or a.shape[1] != input.shape[1]:
        raise ValueError(
            f"a and b must both have shape (O, C, kh, kw) with C = {input.shape[1]} (the input's channels), "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    check_bias(c, a.shape[0], input)
    check_compile(compile)
    geometry = dict(stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode)
    return _lowered(input, [(torch.square, a), (None, b)], c, mask, out, **geometry)


def distance_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    p: float = 1,
    bias: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    out: torch.Tensor | None = None,
    compile: bool | str = "auto",
    grad: tuple[Callable, Callable] | None = None,
) -> torch.Tensor:
    """y = −Σ_{c, m, q} |x_window − w|^p  (+ bias): a negative p-distance between each window and each filter.

    * p = 1 is AdderNet's adder layer, computed as a running sum over the C·kh·kw shifted views of cache-sized
      input tiles (no unfold).
    * p = 2 is lowered exactly to ordinary convolutions through −(‖x‖² − 2⟨x, w⟩ + ‖w‖²):
      2·conv(x, w) − conv(Σ_c x², ones(kh, kw)) − ‖w‖² (the second one has a single input channel).
    * any other p > 0 runs :func:`window_op2d` with ``fn=lambda x, w: -(x - w).abs() ** p``.

    ``grad=(dfn_dx, dfn_dw)`` trains with other partial derivatives than those of −|x − w|^p (see
    :func:`window_op2d`); AdderNet's are ``(lambda x, w: F.hardtanh(w - x), lambda x, w: x - w)`` for p = 1. The
    op then runs as :func:`window_op2d` with that gradient.

    Args:
        input (Tensor[N, C, H, W]): the input batch.
        weight (Tensor[O, C/groups, kh, kw]): the filters.
        p: the exponent, > 0.
        bias (Tensor[O], optional): added at every computed position.
        mask, stride, padding, dilation, groups, padding_mode, out: as in :func:`window_op2d`.
        compile: p = 1: True compiles the sum into one kernel per band (eager with one warning where
            impossible), False runs the eager loop, "auto" compiles as :func:`window_op2d` does (a large call, or a
            layer whose eager calls have spent :data:`convcore.compile.AUTO_EAGER_SECONDS`); p = 2 is lowered
            (nothing to compile); other p: as in :func:`window_op2d` (see docs/compile.md).

    Returns:
        Tensor[N, O, H_out, W_out].

    Example:
        >>> x = torch.zeros(1, 1, 3, 3); w = torch.ones(1, 1, 3, 3)
        >>> distance_conv2d(x, w, p=1)  # −Σ|0 − 1| over 9 taps
        tensor([[[[-9.]]]])
    """
    check_tensor("input", input, ["N", "C", "H", "W"])
    check_tensor("weight", weight, ["O", "C/groups", "kh", "kw"])
    check_same("weight", weight, input)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
        raise ValueError(f"p must be a number > 0, got {p!r}")
    O, Cg, kh, kw = weight.shape
    check_groups(input.shape[1], O, Cg, groups)
    check_bias(bias, O, input)
    check_compile(compile)
    grad = check_grad(grad)
    geometry = dict(stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode)
    if p == 2 and grad is None:
        norm = -weight.square().sum((1, 2, 3))  # [O]
        if groups == 1:  # Σ_c x² once, through a single-channel convolution
            terms = [(None, 2 * weight), (_channel_square_sum, -weight.new_ones(O, 1, kh, kw))]
        else:  # Σ over each group's channels of x²
            terms = [(None, 2 * weight), (torch.square, -torch.ones_like(weight))]
        return _lowered(input, terms, norm if bias is None else norm + bias, mask, out, groups=groups, **geometry)
    if p != 1 or tracing():
        fn = _neg_abs if p == 1 else (lambda x, w: -((x - w).abs() ** p))
        return window_op2d(
            input, weight, fn, bias=bias, mask=mask, out=out, compile=compile, groups=groups, grad=grad, **geometry
        )

    def compiled(s):
        compiled_window_op(
            "distance_conv2d", input, weight, _neg_abs, key, s.out, s.mask, s.geom, bias=bias, groups=groups, grad=grad
        )
        return s.out

    def eager(s):
        _eager_adder(input, weight, bias, groups, grad, s.out, s.mask, s.geom)
        return s.out

    key = ("neg_abs",) if grad is None else ("neg_abs", function_key(grad[0]), function_key(grad[1]))

    return run_op(
        input,
        (kh, kw),
        mask,
        out,
        O,
        geometry,
        compile=compile,
        dense=None,
        eager=eager,
        compiled=compiled,
        work=lambda s: s.positions * O * Cg * kh * kw,
        generic=True,
        key=("distance_conv2d p=1", key),
        params=(weight,) if bias is None else (weight, bias),
    )


def _eager_adder(input, weight, bias, groups, grad, result, mask, geom) -> None:
    """−Σ|x − w| (+ bias) by the running sums of :func:`_adder_band`, group by group, on the tiles engine; ``grad``:
    the partial derivatives its backward uses (None: those of −|x − w|)."""
    track = needs_grad(input, weight)
    O, Cg = weight.shape[:2]
    Og = O // groups

    def group(patch: torch.Tensor, band, k: int) -> torch.Tensor:  # [B, C/G, h_in, w_in] -> [B, O/G, h, w]
        p, w = patch[:, k * Cg : (k + 1) * Cg], weight[k * Og : (k + 1) * Og]
        return (
            _AdderBand.apply(p, w, band.geom, band.shape, grad) if track else _adder_band(p, w, band.geom, band.shape)
        )

    def compute(patch: torch.Tensor, band) -> torch.Tensor:  # patch [B, C, h_in, w_in] -> [B, O, h, w]
        y = group(patch, band, 0) if groups == 1 else torch.cat([group(patch, band, k) for k in range(groups)], 1)
        return y if bias is None else y + bias[:, None, None]

    run_tiles_op(input, geom, mask, result, compute, position_bytes=3 * O * input.element_size())


def _neg_abs(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return -(x - w).abs()


def _adder_band(patch: torch.Tensor, weight: torch.Tensor, geom: ConvGeometry, hw: tuple[int, int]) -> torch.Tensor:
    """−Σ |x − w| over the C·kh·kw shifted views of one band's patch (Tensor[B, C, h_in, w_in]) → Tensor[B, O, h, w]."""
    h, w = hw
    wt = weight.permute(2, 3, 1, 0)[..., None, None]  # [kh, kw, C, O, 1, 1]: wt[m, q, c] is [O, 1, 1]
    acc = buf = None
    for m, q, xs in shifted_views(patch, geom, h, w):  # xs [B, C, h, w]
        for c, xc in enumerate(xs.unsqueeze(2).unbind(1)):  # xc [B, 1, h, w]
            buf = torch.sub(xc, wt[m, q, c], out=buf).abs_()  # [B, O, h, w]
            acc = buf.neg() if acc is None else acc.sub_(buf)
    return acc


class _AdderBand(torch.autograd.Function):
    """One band of distance_conv2d(p=1) whose backward recomputes sign(x − w) — or the caller's partial derivatives
    ``grad`` — tap by tap instead of saving them.

    Saves only the band's input patch (a view of the input inside the image).
    """

    @staticmethod
    def forward(ctx, patch, weight, geom: ConvGeometry, hw: tuple[int, int], grad):
        ctx.save_for_backward(patch, weight)
        ctx.geom, ctx.hw, ctx.grad = geom, hw, grad
        return _adder_band(patch.detach(), weight.detach(), geom, hw)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # grad [B, O, h, w]
        patch, weight = ctx.saved_tensors
        h, w = ctx.hw
        grad_patch = torch.zeros_like(patch) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        coefficients = None if ctx.grad is None else affine_coefficients(ctx.grad[1])
        if grad_w is not None and coefficients is not None:  # a GEMM, not a loop over the taps
            g = ctx.geom
            grad_w = affine_weight_grad(coefficients, patch, weight, grad, g.stride, g.dilation, 1)
            if grad_patch is None:
                return None, grad_w, None, None, None
        views = shifted_views(grad_patch, ctx.geom, h, w) if grad_patch is not None else None
        for m, q, xs in shifted_views(patch, ctx.geom, h, w):  # xs [B, C, h, w]
            gxs = next(views)[2] if views is not None else None  # [B, C, h, w] view of grad_patch
            for c in range(xs.shape[1]):
                xc, wc = xs[:, c, None], weight[:, c, m, q, None, None]  # [B, 1, h, w], [O, 1, 1]
                if ctx.grad is None:
                    gs = grad * torch.sign(xc - wc)  # [B, O, h, w]: d/dw −|x − w| = sign(x − w) = −d/dx
                    gw, gx = gs, -gs
                else:
                    gw = grad * ctx.grad[1](xc, wc) if grad_w is not None and coefficients is None else None
                    gx = grad * ctx.grad[0](xc, wc) if gxs is not None else None  # [B, O, h, w]
                if grad_w is not None and coefficients is None:
                    grad_w[:, c, m, q] += gw.sum((0, 2, 3))
                if gxs is not None:
                    gxs[:, c] += gx.sum(1)
        return grad_patch, grad_w, None, None, None


def _lowered(
    input: torch.Tensor,
    terms: list[tuple[Callable[[torch.Tensor], torch.Tensor] | None, torch.Tensor]],
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    out: torch.Tensor | None,
    *,
    groups: int = 1,
    **geometry,
) -> torch.Tensor:
    """Σ_i roi_conv2d(transform_i(input), weight_i) + bias, each transform applied only to the input the mask reads.

    With a mask, the convolutions run on the input patch under the mask's bounding box (borders resolved per padding
    mode) and write into the matching view of the output, so neither the transforms nor roi_conv2d's planning touch
    the rest of the image. Separate convolutions (rather than one of the channel-stacked inputs) avoid copying the
    input into a stacked tensor; with several terms, each adds into the first one's result.
    """
    O, _, kh, kw = terms[0][1].shape

    def dense(geom, mask, out):
        return _lowered_dense(input, terms, bias, geom, mask, out, groups)

    def eager(s):
        return _lowered_eager(input, terms, bias, s, out, groups, geometry)

    return run_op(
        input, (kh, kw), mask, out, O, geometry, compile=False, dense=dense, eager=eager, allocate=mask is not None
    )


def _lowered_eager(input, terms, bias, setup, out, groups: int, geometry: dict) -> torch.Tensor:
    """:func:`_lowered` on the convolutions of :func:`roi_conv2d`, over the mask's bounding box."""
    geom, mask, result = setup.geom, dense_roi(setup.mask), setup.out  # a RectRoi's boxes as a mask: the bbox is cut
    if mask is None:
        x, sub_mask, conv_args, dst = input, None, dict(geometry, groups=groups), out
    else:
        y0, y1, x0, x1 = _bbox(mask)
        x = _roi_patch(input, geom, y0, y1, x0, x1)  # [N, C, h_in, w_in]
        sub_mask = mask[:, y0:y1, x0:x1]  # [N, h, w]
        conv_args = dict(stride=geom.stride, dilation=geom.dilation, groups=groups)
        dst = result[:, :, y0:y1, x0:x1]  # [N, O, h, w] view: roi_conv2d writes the ROI in place
    transform, weight = terms[0]
    if len(terms) == 1:
        y = roi_conv2d(transform(x) if transform else x, weight, bias, sub_mask, out=dst, **conv_args)
        return y if mask is None else result
    total = roi_conv2d(transform(x) if transform else x, weight, bias, sub_mask, **conv_args)  # [N, O, h, w]
    for transform, weight in terms[1:]:
        total = total.add_(roi_conv2d(transform(x) if transform else x, weight, None, sub_mask, **conv_args))
    if dst is None:
        return total
    if sub_mask is None or out is None:  # (a fresh result is zero outside the mask, as total is)
        dst.copy_(total)
    else:
        dst.copy_(torch.where(sub_mask[:, None], total, dst))
    return result if mask is not None else dst


def _lowered_dense(input, terms, bias, geom, mask, out, groups: int) -> torch.Tensor:
    """:func:`_lowered` as one traceable expression (for an outer ``torch.compile``): F.conv2d over the padded
    input, the mask applied by ``torch.where``."""
    x = traced_pad(input, geom)  # [N, C, H_pad, W_pad]
    y = None
    for transform, weight in terms:
        t = F.conv2d(transform(x) if transform else x, weight, None, geom.stride, 0, geom.dilation, groups)
        y = t if y is None else y + t
    y = y if bias is None else y + bias[:, None, None]
    return masked_result(y, mask, out)


def _channel_square_sum(x: torch.Tensor) -> torch.Tensor:
    return x.square().sum(1, keepdim=True)  # [N, 1, H, W]


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """Bounding box [y0, y1) × [x0, x1) of the True entries of a non-empty mask (N, H_out, W_out), all images."""
    union = mask.any(0)  # [H_out, W_out]
    rows = union.any(1).nonzero().squeeze(1)
    cols = union.any(0).nonzero().squeeze(1)
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _roi_patch(input: torch.Tensor, geom: ConvGeometry, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """The input (Tensor[N, C, h_in, w_in]) read by outputs [y0, y1) × [x0, x1), border handled per padding mode.

    A view inside the image; a remapped copy of just the patch across a border.
    """
    N, C, H, W = input.shape
    patch = gather_tile(input.reshape(N * C, H, W), geom, y0, y1, x0, x1)  # [N*C, h_in, w_in]
    return patch.unflatten(0, (N, C))


def _broadcast_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...] | None:
    try:
        return tuple(torch.broadcast_shapes(tuple(a), tuple(b)))
    except RuntimeError:
        return None
