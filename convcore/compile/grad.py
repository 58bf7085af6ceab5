"""A custom gradient for a window function: ``grad=(dfn_dx, dfn_dw)``, two functions of the broadcast operands
``(x, w)`` that replace autograd's partial derivatives of ``fn`` in the backward (AdderNet trains its adder layer
with HardTanh(w − x) for the input and x − w for the weight, not the derivatives of −|x − w|).

Three forms, one contract — the backward of ``fn(x, w)`` against a cotangent ``g`` is ``Σ g·dfn_dx(x, w)`` to
``x``'s shape and ``Σ g·dfn_dw(x, w)`` to ``w``'s:

* eager (:func:`eager_grad_fn`): an autograd function that saves the two operands and evaluates the partials in
  its backward (the windows engine checkpoints its chunks, so nothing larger is kept);
* traced (:func:`traced_grad_fn`): ``fn(x̄, w̄) + dfn_dx(x̄, w̄)·(x − x̄) + dfn_dw(x̄, w̄)·(w − w̄)`` with x̄, w̄ the
  detached operands — the value of ``fn`` exactly (the added terms are zero), the gradient of the partials, and any
  tensor ``fn`` closes over still gets autograd's gradient; Dynamo traces it and Inductor fuses it;
* the fused band's derived backward uses the partials directly (:mod:`convcore.compile.fused`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "Grad",
    "affine",
    "affine_coefficients",
    "affine_weight_grad",
    "check_grad",
    "eager_grad_fn",
    "grad_fn",
    "reaches_other_tensors",
    "traced_grad_fn",
]

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Grad = tuple[Fn, Fn]


def check_grad(grad: object) -> Grad | None:
    """Validate a ``grad=`` argument: None, or a pair of callables (dfn_dx, dfn_dw)."""
    if grad is None:
        return None
    if not isinstance(grad, (tuple, list)) or len(grad) != 2 or not all(callable(g) for g in grad):
        raise TypeError(
            "grad must be None or a pair of callables (dfn_dx, dfn_dw), each taking the broadcast (x, w) like fn, "
            f"got {grad!r}"
        )
    return tuple(grad)


def affine(a: float, b: float) -> Callable[[Fn], Fn]:
    """Declare a partial derivative ``dfn_dw(x, w) = a·x + b·w`` (a decorator; the function must compute exactly
    that). The weight's gradient Σ g·(a·x + b·w) over (B, h, w) is then ``a`` times an ordinary convolution's weight
    gradient (a matrix product) plus ``b·w`` times Σ g — exact algebra, at GEMM speed: AdderNet's full-precision
    x − w is ``affine(1, -1)``."""

    def declare(fn: Fn) -> Fn:
        fn.affine = (float(a), float(b))
        return fn

    return declare


def affine_coefficients(fn: Fn) -> tuple[float, float] | None:
    """(a, b) of a partial derivative declared with :func:`affine`, else None."""
    coefficients = getattr(fn, "affine", None)
    return coefficients if isinstance(coefficients, tuple) and len(coefficients) == 2 else None


def affine_weight_grad(
    coefficients: tuple[float, float],
    patch: torch.Tensor,
    weight: torch.Tensor,
    g: torch.Tensor,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """Σ over (B, h, w) of g·(a·x + b·w) for every weight element: a·(the convolution's weight gradient) + b·w·Σ g.

    Args:
        patch (Tensor[B, C, h_in, w_in]): the input, padding resolved; weight (Tensor[O, C/groups, kh, kw]);
        g (Tensor[B, O, h, w]): the output gradient.

    Returns:
        Tensor[O, C/groups, kh, kw].
    """
    a, b = coefficients
    kh, kw = weight.shape[-2:]
    h, w = g.shape[-2:]
    rows, cols = (h - 1) * stride[0] + dilation[0] * (kh - 1) + 1, (w - 1) * stride[1] + dilation[1] * (kw - 1) + 1
    patch = patch[:, :, :rows, :cols]  # what the windows read: the convolution's sizes must agree with g's
    xg = torch.nn.grad.conv2d_weight(patch, weight.shape, g, stride, 0, dilation, groups)  # [O, C/G, kh, kw]: Σ x·g
    total = g.sum((0, 2, 3))[:, None, None, None]  # [O, 1, 1, 1]: Σ g
    return a * xg + b * weight * total


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


def grad_fn(fn: Fn, grad: Grad | None, like: torch.Tensor) -> Fn:
    """``fn`` with the backward of ``grad`` for an eager call: the autograd function, or the traced form where ``fn``
    draws on other tensors needing a gradient (the autograd function would not reach them); ``fn`` itself for None."""
    if grad is None:
        return fn
    return traced_grad_fn(fn, grad) if reaches_other_tensors(fn, like) else eager_grad_fn(fn, grad)


def traced_grad_fn(fn: Fn, grad: Grad) -> Fn:
    """``fn`` with the backward of ``grad``, in a form Dynamo traces (see the module docstring)."""
    dfn_dx, dfn_dw = grad

    def with_grad(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xd, wd = x.detach(), w.detach()
        return fn(xd, wd) + dfn_dx(xd, wd) * (x - xd) + dfn_dw(xd, wd) * (w - wd)

    return with_grad


def eager_grad_fn(fn: Fn, grad: Grad) -> Fn:
    """``fn`` with the backward of ``grad``, as an autograd function (eager)."""

    def with_grad(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return _CustomGrad.apply(x, w, fn, grad)

    return with_grad


class _CustomGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, fn, grad):
        ctx.save_for_backward(x, w)
        ctx.grad = grad
        with torch.no_grad():
            return fn(x, w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        dfn_dx, dfn_dw = ctx.grad
        gx = (g * dfn_dx(x, w)).sum_to_size(x.shape) if ctx.needs_input_grad[0] else None
        gw = (g * dfn_dw(x, w)).sum_to_size(w.shape) if ctx.needs_input_grad[1] else None
        return gx, gw, None, None
