"""Fused ROI convolution: a Triton kernel that convolves only at active output positions, and its autograd.

Two entry points:

- :func:`fused_conv2d_active` is the low-level op: it takes the list of active positions and an output tensor, and
  writes the convolution at those positions only. No autograd.
- :func:`fused_roi_conv2d` takes a bool mask, builds the active list on the device (one host sync), allocates the
  output when none is given, and is differentiable.

Both need ``triton`` and either CUDA tensors or ``TRITON_INTERPRET=1`` (Triton's interpreter, which runs the same
kernel code on CPU tensors, slowly: for tests). ``triton`` is imported on the first call, not with this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..geometry import pair
from .runtime import interpreter_enabled

PADDING_MODES = ("zeros", "reflect", "replicate", "circular", "symmetric")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fused_available(device: torch.device | str) -> bool:
    """True when the fused kernel can run on ``device``: triton importable, and CUDA or the interpreter enabled."""
    device = torch.device(device)
    if device.type != "cuda" and not (device.type == "cpu" and interpreter_enabled()):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _kernel_module():
    try:
        from . import triton_conv
    except ImportError as exc:
        raise ImportError(
            "the fused kernel needs the 'triton' package (pip install triton); the other strategies do not"
        ) from exc
    return triton_conv


def _check_tensor(name: str, t: object, dims: Sequence[str]) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape ({', '.join(dims)}), got {type(t).__name__}")
    if t.dim() != len(dims):
        raise ValueError(f"{name} must have shape ({', '.join(dims)}), got {tuple(t.shape)}")
    return t


def _check_like(name: str, t: torch.Tensor, like: torch.Tensor) -> None:
    if t.dtype != like.dtype or t.device != like.device:
        raise TypeError(
            f"{name} must have the input's dtype and device ({like.dtype}, {like.device}), got ({t.dtype}, {t.device})"
        )


def _check_device(device: torch.device) -> None:
    if device.type == "cuda" or (device.type == "cpu" and interpreter_enabled()):
        return
    if device.type == "cpu":
        raise ValueError(
            "the fused kernel runs on CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 (Triton's interpreter, "
            "for tests: slow) before the first fused call, or use another strategy"
        )
    raise ValueError(f"the fused kernel runs on CUDA tensors (or CPU under TRITON_INTERPRET=1), got {device}")


def _implied_pad(size: int, out_size: int, stride: int, dilation: int, kernel: int, before: int) -> int:
    """The padding after the input that the last output reads into (may be negative: the end is not read)."""
    return (out_size - 1) * stride + (kernel - 1) * dilation - before - (size - 1)


def _check_conv_args(input, weight, bias, out_shape, stride, pad, dilation, groups, padding_mode):
    """Validate everything but ``active``/``out``; return (stride, pad, dilation) as pairs."""
    _check_tensor("input", input, ["N", "C", "H", "W"])
    _check_tensor("weight", weight, ["O", "C/groups", "kh", "kw"])
    if input.dtype not in DTYPES:
        raise TypeError(f"input must be float16/bfloat16/float32/float64, got {input.dtype}")
    _check_like("weight", weight, input)
    if bias is not None:
        _check_tensor("bias", bias, ["O"])
        _check_like("bias", bias, input)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape (O,) = ({weight.shape[0]},), got {tuple(bias.shape)}")
    _check_device(input.device)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    N, C, H, W = input.shape
    O, Cg, kh, kw = weight.shape
    if C % groups or O % groups or Cg * groups != C:
        raise ValueError(
            f"groups={groups} needs C and O divisible by groups and weight.shape[1] == C/groups; "
            f"got C={C}, O={O}, weight.shape[1]={Cg}"
        )
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    stride = pair("stride", stride, minimum=1)
    dilation = pair("dilation", dilation, minimum=1)
    pad = pair("pad", pad, minimum=0)
    Ho, Wo = out_shape[2:]
    bottom = _implied_pad(H, Ho, stride[0], dilation[0], kh, pad[0])
    right = _implied_pad(W, Wo, stride[1], dilation[1], kw, pad[1])
    # Ho, Wo imply the padding after the input; F.conv2d geometries (symmetric padding, or "same" with an even
    # kernel) never need more than max(before, kernel span): more means out has the wrong size.
    span = ((kh - 1) * dilation[0], (kw - 1) * dilation[1])
    if Ho < 1 or Wo < 1 or bottom > max(pad[0], span[0]) or right > max(pad[1], span[1]):
        raise ValueError(
            f"output size {(Ho, Wo)} does not fit input {(H, W)}, kernel {(kh, kw)}, stride {stride}, dilation "
            f"{dilation} and pad (top, left) {pad}: it would read {(bottom, right)} rows/columns past the input"
        )
    limit = {"reflect": (H - 1, W - 1), "circular": (H, W), "symmetric": (H, W)}.get(padding_mode)
    if limit is not None and (max(pad[0], bottom) > limit[0] or max(pad[1], right) > limit[1]):
        raise ValueError(
            f"padding_mode={padding_mode!r} reflects or wraps once: padding (top, bottom, left, right) = "
            f"{(pad[0], bottom, pad[1], right)} must be <= {limit[0]} rows and {limit[1]} columns for input {(H, W)}"
        )
    return stride, pad, dilation


def fused_conv2d_active(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    active: torch.Tensor,
    out: torch.Tensor,
    *,
    stride: int | Sequence[int] = 1,
    pad: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    check_active: bool = True,
) -> torch.Tensor:
    """Write the convolution of ``input`` at the ``active`` output positions of ``out``; nothing else is touched.

    One Triton kernel: each program computes a block of active positions × a block of output channels as an
    implicit GEMM, reading the input windows straight from ``input`` (borders by index arithmetic), accumulating in
    fp32 (fp64 for fp64 inputs), adding the bias and storing only the active outputs. float32 inputs on a GPU
    multiply in TF32 when ``torch.backends.cudnn.allow_tf32`` is True (PyTorch's default, the setting F.conv2d
    follows), in full float32 otherwise and under the interpreter. No autograd: use :func:`fused_roi_conv2d`.

    Args:
        input (Tensor[N, C, H, W]): float16/bfloat16/float32/float64, CUDA (or CPU under ``TRITON_INTERPRET=1``).
        weight (Tensor[O, C/groups, kh, kw]), bias (Tensor[O] or None): input's dtype and device.
        active (Tensor[P], int64): flat indices into N*Ho*Wo (``(n * Ho + y) * Wo + x``), ascending for coalesced
            access (any order gives the same result). With ``check_active`` one host sync checks the range;
            without it, entries outside [0, N*Ho*Wo) are skipped by the kernel.
        out (Tensor[N, O, Ho, Wo]): input's dtype and device, any strides. Ho, Wo fix the geometry: the padding
            after the input (bottom/right) is what the last output position reads into.
        stride, dilation: int or (sh, sw), (dh, dw). pad: int or (top, left), the padding before the input.
        padding_mode: "zeros", "reflect" (PyTorch's, the edge not repeated), "replicate", "circular" or
            "symmetric" (the edge repeated, OpenCV's BORDER_REFLECT).

    Returns:
        ``out``.

    Example:
        >>> import os; os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU tensors: the interpreter (slow)
        '1'
        >>> x, w = torch.randn(2, 4, 5, 5), torch.randn(4, 1, 3, 3)  # depthwise
        >>> out = torch.full((2, 4, 3, 3), float("nan"))  # valid conv: Ho = Wo = 3
        >>> active = torch.tensor([0, 4, 9 + 8])  # (n=0, y=0, x=0), (0, 1, 1), (1, 2, 2)
        >>> _ = fused_conv2d_active(x, w, None, active, out, groups=4)
        >>> int(out.isnan().sum()) == 4 * (18 - 3)
        True
    """
    _check_tensor("out", out, ["N", "O", "Ho", "Wo"])
    stride, pad, dilation = _check_conv_args(
        input, weight, bias, out.shape, stride, pad, dilation, groups, padding_mode
    )
    _check_like("out", out, input)
    if tuple(out.shape[:2]) != (input.shape[0], weight.shape[0]):
        raise ValueError(
            f"out must have shape (N, O, Ho, Wo) with N={input.shape[0]}, O={weight.shape[0]}, got {tuple(out.shape)}"
        )
    if out.untyped_storage().data_ptr() == input.untyped_storage().data_ptr():
        raise ValueError("out must not share memory with input: the kernel reads input while it writes out")
    _check_tensor("active", active, ["P"])
    if active.dtype != torch.int64 or active.device != input.device:
        raise TypeError(f"active must be an int64 tensor on {input.device}, got {active.dtype} on {active.device}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias)):
        raise ValueError(
            "fused_conv2d_active does not record autograd; use fused_roi_conv2d or call it under torch.no_grad()"
        )
    total = out.shape[0] * out.shape[2] * out.shape[3]
    if active.numel() == 0:
        return out
    if check_active:
        lo, hi = torch.aminmax(active)
        lo, hi = int(lo), int(hi)  # one host sync
        if lo < 0 or hi >= total:
            raise ValueError(f"active indices must lie in [0, N*Ho*Wo) = [0, {total}), got [{lo}, {hi}]")
    _kernel_module().launch(
        input,
        weight,
        bias,
        active.contiguous(),
        out,
        stride=stride,
        pad=pad,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
    )
    return out


def _pad4(pad: int | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(pad, (tuple, list)) and len(pad) == 4:
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pad):
            raise ValueError(f"pad must be non-negative ints, got {tuple(pad)}")
        return tuple(int(v) for v in pad)  # type: ignore[return-value]
    top, left = pair("pad", pad, minimum=0)
    return top, top, left, left


def _out_size(size: int, before: int, after: int, kernel: int, stride: int, dilation: int) -> int:
    return (size + before + after - (kernel - 1) * dilation - 1) // stride + 1


def fused_roi_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    stride: int | Sequence[int] = 1,
    pad: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Convolve ``input`` only where ``mask`` is True, with the fused kernel; differentiable.

    Inside the mask the result equals ``F.conv2d`` on the input padded by ``padding_mode``; outside it is zero,
    or ``out`` left untouched when given. The active list is built on the device with one host sync
    (``torch.nonzero``).

    Gradients are exact but not ROI-proportional: the backward runs the dense ``conv2d_input`` /
    ``conv2d_weight`` of the masked output gradient over the whole padded input (and folds the padding back onto
    the input for the non-zero modes).

    Args:
        input (Tensor[N, C, H, W]), weight (Tensor[O, C/groups, kh, kw]), bias (Tensor[O] or None).
        mask (Tensor[N, Ho, Wo] bool): the ROI over output positions, on the input's device.
        stride, dilation: int or pair. pad: int, (top/bottom, left/right) or (top, bottom, left, right).
        groups, padding_mode: as in :func:`fused_conv2d_active`.
        out (Tensor[N, O, Ho, Wo], optional): written only inside the mask; returned.

    Returns:
        Tensor[N, O, Ho, Wo].

    Example:
        >>> import os; os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU tensors: the interpreter (slow)
        '1'
        >>> x, w = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)
        >>> mask = torch.zeros(1, 6, 6, dtype=torch.bool); mask[0, 2:4, 1:5] = True
        >>> y = fused_roi_conv2d(x, w, None, mask, pad=1, padding_mode="reflect")
        >>> y.shape, bool(y[0, :, 0].eq(0).all())
        (torch.Size([1, 3, 6, 6]), True)
    """
    _check_tensor("input", input, ["N", "C", "H", "W"])
    _check_tensor("weight", weight, ["O", "C/groups", "kh", "kw"])
    top, bottom, left, right = _pad4(pad)
    s, d = pair("stride", stride, minimum=1), pair("dilation", dilation, minimum=1)
    N, _, H, W = input.shape
    kh, kw = weight.shape[2:]
    Ho, Wo = _out_size(H, top, bottom, kh, s[0], d[0]), _out_size(W, left, right, kw, s[1], d[1])
    out_shape = (N, weight.shape[0], Ho, Wo)
    if Ho < 1 or Wo < 1:
        raise ValueError(
            f"kernel {(kh, kw)} with dilation {d} spans more than the padded input: input {(H, W)}, "
            f"pad (top, bottom, left, right) {(top, bottom, left, right)}"
        )
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = f"{mask.dtype} tensor" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor of shape (N, Ho, Wo) = {(N, Ho, Wo)}, got {got}; use mask != 0")
    if tuple(mask.shape) != (N, Ho, Wo):
        raise ValueError(
            f"mask must have shape (N, Ho, Wo) = {(N, Ho, Wo)}, got {tuple(mask.shape)}; the mask is over outputs"
        )
    if mask.device != input.device:
        raise TypeError(f"mask must be on the input's device {input.device}, got {mask.device}")
    geom = _check_conv_args(input, weight, bias, out_shape, s, (top, left), d, groups, padding_mode)
    if out is not None:
        _check_tensor("out", out, ["N", "O", "Ho", "Wo"])
        _check_like("out", out, input)
        if tuple(out.shape) != out_shape:
            raise ValueError(f"out must have shape {out_shape}, got {tuple(out.shape)}")
    active = torch.nonzero(mask.reshape(-1)).reshape(-1)  # [P] int64, ascending; the one host sync
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias))
    if not needs_grad:
        out = input.new_zeros(out_shape) if out is None else out
        kw_args = dict(stride=geom[0], pad=geom[1], dilation=geom[2], groups=groups, padding_mode=padding_mode)
        return fused_conv2d_active(input, weight, bias, active, out, check_active=False, **kw_args)
    y = _FusedRoiConv2d.apply(input, weight, bias, active, mask, out_shape, geom, groups, padding_mode)
    if out is None:
        return y
    return out.copy_(torch.where(mask[:, None], y, out))


def _border_index(size: int, before: int, count: int, mode: str, device: torch.device):
    """Input index of each of ``count`` padded coordinates starting at -before, and which are real (zeros mode)."""
    i = torch.arange(-before, count - before, device=device)
    valid = (i >= 0) & (i < size)
    if mode == "reflect":
        i = i.abs()
        i = torch.where(i >= size, 2 * size - 2 - i, i)
    elif mode == "circular":
        i = i.remainder(size)
    elif mode == "symmetric":
        i = torch.where(i < 0, -i - 1, i)
        i = torch.where(i >= size, 2 * size - 1 - i, i)
    if mode != "zeros":
        valid = torch.ones_like(valid)
    return i.clamp(0, size - 1), valid


class _FusedRoiConv2d(torch.autograd.Function):
    """Forward: the fused kernel into a zero output. Backward: exact dense gradients of the masked output."""

    @staticmethod
    def forward(ctx, input, weight, bias, active, mask, out_shape, geom, groups, padding_mode):
        stride, pad, dilation = geom
        out = input.new_zeros(out_shape)
        with torch.no_grad():
            fused_conv2d_active(
                input,
                weight,
                bias,
                active,
                out,
                stride=stride,
                pad=pad,
                dilation=dilation,
                groups=groups,
                padding_mode=padding_mode,
                check_active=False,
            )
        ctx.save_for_backward(input, weight, mask)
        ctx.conf = (stride, pad, dilation, groups, padding_mode, bias is not None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        input, weight, mask = ctx.saved_tensors
        stride, (top, left), dilation, groups, mode, has_bias = ctx.conf
        N, C, H, W = input.shape
        kh, kw = weight.shape[2:]
        Ho, Wo = grad_out.shape[2:]
        g = grad_out * mask[:, None]  # [N, O, Ho, Wo]: outputs outside the mask do not depend on anything
        # The part of the padded input the outputs read: rows -top .. -top+Hp-1, columns likewise.
        Hp = (Ho - 1) * stride[0] + (kh - 1) * dilation[0] + 1
        Wp = (Wo - 1) * stride[1] + (kw - 1) * dilation[1] + 1
        rows, vr = _border_index(H, top, Hp, mode, input.device)  # [Hp]
        cols, vc = _border_index(W, left, Wp, mode, input.device)  # [Wp]
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            padded = input.index_select(2, rows).index_select(3, cols)  # [N, C, Hp, Wp]
            padded = padded * (vr[:, None] & vc[None, :])
            grad_weight = torch.nn.grad.conv2d_weight(padded, weight.shape, g, stride, 0, dilation, groups)
        if ctx.needs_input_grad[0]:
            gp = torch.nn.grad.conv2d_input((N, C, Hp, Wp), weight, g, stride, 0, dilation, groups)  # [N, C, Hp, Wp]
            gp = gp[:, :, vr][:, :, :, vc]  # drop the zero padding
            gcols = gp.new_zeros(N, C, gp.shape[2], W).index_add_(3, cols[vc], gp)  # [N, C, Hp', W]
            grad_input = gp.new_zeros(N, C, H, W).index_add_(2, rows[vr], gcols)  # [N, C, H, W]
        if has_bias and ctx.needs_input_grad[2]:
            grad_bias = g.sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None
