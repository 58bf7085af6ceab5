"""The Triton kernel behind :mod:`convcore.kernels.roi_conv`: an implicit-GEMM convolution over active positions.

This module imports ``triton`` at the top; :mod:`convcore.kernels.roi_conv` imports it only when a fused op is
called, so ``import convcore`` works without triton installed.

One program computes a block of ``BLOCK_P`` active output positions × ``BLOCK_O`` output channels of one group. For
each kernel tap (ky, kx) it maps the taps' input coordinates through the padding mode by index arithmetic, then
walks the group's input channels: it loads the input values straight from the input tensor ([BLOCK_P, BLOCK_C]
per step with ``tl.dot``, or one channel at a time) and the matching weights, and accumulates their product in
fp32 (fp64 for fp64 inputs). The bias is added and only the active outputs are stored: no gathered buffer exists
in memory.

The kernel calls only Triton builtins (no ``tl.cdiv``/``tl.zeros``/``tl.sum``, which are jitted library
functions): under the interpreter those would only work when ``TRITON_INTERPRET=1`` was set before ``triton`` was
first imported, while builtins are patched at each launch.

``triton.jit`` decides at decoration time whether a kernel runs compiled (GPU) or under the interpreter
(``TRITON_INTERPRET=1``, CPU tensors). The kernel is therefore decorated on first use, once per setting of that
variable (:func:`get_kernel`), so setting it any time before the first fused call is enough (tested with triton
3.2, 3.5.1 and 3.9; setting it before importing triton, as Triton documents, is the safe way).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .runtime import interpreter_enabled

GRID_Y_MAX = 65535  # CUDA's limit on the second grid dimension (groups × output-channel blocks)
# Padding modes as the kernel's MODE constant.
MODE_IDS = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3, "symmetric": 4}


@dataclass(frozen=True)
class KernelConfig:
    """Block sizes of one launch.

    ``use_dot``: the channel reduction goes through ``tl.dot`` (tensor cores on a GPU; needs blocks >= 16),
    chosen when a group has >= 16 input and >= 16 output channels. Otherwise (few channels per group, depthwise,
    float64) one rank-1 update per input channel (``block_c`` unused), which wastes nothing on padding the blocks
    up to 16. The sizes are untimed defaults (no GPU has run this code), chosen so that compiling for sm_90a
    (triton 3.9, ptxas -v) reports no register spills for a 3×3 kernel.
    """

    block_p: int
    block_c: int
    block_o: int
    use_dot: bool
    num_warps: int = 4


def kernel_config(channels_per_group: int, outputs_per_group: int, dtype: torch.dtype) -> KernelConfig:
    """Pick block sizes for a group of ``channels_per_group`` inputs and ``outputs_per_group`` outputs."""
    cg, og = channels_per_group, outputs_per_group
    if dtype != torch.float64 and cg >= 16 and og >= 16:
        block_c = 32 if cg >= 32 and dtype != torch.float32 else 16
        return KernelConfig(64, block_c, 64 if og >= 64 else max(16, triton.next_power_of_2(og)), True, num_warps=8)
    return KernelConfig(64, 1, min(16, triton.next_power_of_2(og)), False)


def _border_src(i, size, MODE: tl.constexpr):
    """Map input coordinates ``i`` (may lie in the padding) into [0, size) by the padding mode.

    Zero padding ("zeros", MODE 0) is clamped here and masked by the caller.
    """
    if MODE == 1:  # reflect (PyTorch "reflect", OpenCV BORDER_REFLECT_101): the edge is not repeated
        i = tl.where(i < 0, -i, i)
        i = tl.where(i >= size, 2 * size - 2 - i, i)
    elif MODE == 3:  # circular
        i = tl.where(i < 0, i + size, i)
        i = tl.where(i >= size, i - size, i)
    elif MODE == 4:  # symmetric (OpenCV BORDER_REFLECT): the edge is repeated
        i = tl.where(i < 0, -i - 1, i)
        i = tl.where(i >= size, 2 * size - 1 - i, i)
    # Clamp for every mode: zeros (masked load) and replicate (MODE 2) need it; the others stay in bounds anyway.
    return tl.minimum(tl.maximum(i, 0), size - 1)


def _roi_conv_src(
    x_ptr,  # input [N, C, H, W] (any strides)
    w_ptr,  # weight as [KH, KW, CG, O], contiguous: a tap's weights for consecutive outputs are adjacent
    b_ptr,  # bias [O] (ignored unless HAS_BIAS)
    act_ptr,  # active [P] int64 flat indices into N*HO*WO
    out_ptr,  # out [N, O, HO, WO] (any strides)
    P,
    H,
    W,
    HO,
    WO,
    TOTAL,  # N*HO*WO: active entries outside [0, TOTAL) are skipped
    O,
    OG,
    sxn,
    sxc,
    sxh,
    sxw,
    son,
    soc,
    soh,
    sow,
    stride_h,
    stride_w,
    pad_t,
    pad_l,
    dil_h,
    dil_w,
    CG: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    MODE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    USE_DOT: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_o = tl.program_id(1)
    o_blocks = (OG + BLOCK_O - 1) // BLOCK_O
    g = pid_o // o_blocks
    ob = pid_o % o_blocks

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # [BP]
    p_ok = offs_p < P
    flat = tl.load(act_ptr + offs_p, mask=p_ok, other=0).to(tl.int64)  # [BP]
    p_ok = p_ok & (flat >= 0) & (flat < TOTAL)
    flat = tl.where(p_ok, flat, 0)
    ox = flat % WO
    rest = flat // WO
    oy = rest % HO
    n = rest // HO

    offs_o = ob * BLOCK_O + tl.arange(0, BLOCK_O)  # [BO] within the group
    o_ok = offs_o < OG
    o_glob = (g * OG + offs_o).to(tl.int64)  # [BO]
    offs_c = tl.arange(0, BLOCK_C)  # [BC]
    x_img = n * sxn + (g * CG).to(tl.int64) * sxc  # [BP]: start of the group's channels in each position's image

    acc = tl.full([BLOCK_P, BLOCK_O], 0, dtype=ACC)
    for tap in range(0, KH * KW):  # a loop: unrolled taps spilled registers (ptxas, sm_90a)
        ky = tap // KW
        kx = tap % KW
        ry = oy * stride_h - pad_t + ky * dil_h  # [BP] row in the padded frame
        iy = _border(ry, H, MODE)  # [BP]
        rx = ox * stride_w - pad_l + kx * dil_w  # [BP]
        ix = _border(rx, W, MODE)  # [BP]
        pix_ok = p_ok  # [BP]
        if MODE == 0:  # zero padding: taps outside the input read nothing
            pix_ok = p_ok & (ry >= 0) & (ry < H) & (rx >= 0) & (rx < W)
        pix = x_img + iy * sxh + ix * sxw  # [BP]
        w_tap = tap * (CG * O) + o_glob  # [BO]: this tap's weights of the block's outputs
        if USE_DOT:
            for c0 in range(0, CG, BLOCK_C):
                cc = c0 + offs_c  # [BC]
                c_ok = cc < CG
                a = tl.load(
                    x_ptr + pix[:, None] + cc.to(tl.int64)[None, :] * sxc,
                    mask=pix_ok[:, None] & c_ok[None, :],
                    other=0.0,
                )  # [BP, BC]
                wv = tl.load(
                    w_ptr + w_tap[None, :] + (cc * O)[:, None],
                    mask=c_ok[:, None] & o_ok[None, :],
                    other=0.0,
                )  # [BC, BO]
                if UPCAST:
                    a = a.to(tl.float32)
                    wv = wv.to(tl.float32)
                if IEEE:
                    acc = tl.dot(a, wv, acc, input_precision="ieee")  # [BP, BO]
                else:
                    acc = tl.dot(a, wv, acc)  # [BP, BO]
        else:
            # Few channels per group (depthwise, first layers) or float64: one rank-1 update per input channel.
            for c in range(0, CG):
                a = tl.load(x_ptr + pix + c * sxc, mask=pix_ok, other=0.0).to(ACC)  # [BP]
                wv = tl.load(w_ptr + w_tap + c * O, mask=o_ok, other=0.0).to(ACC)  # [BO]
                acc += a[:, None] * wv[None, :]  # [BP, BO]

    if HAS_BIAS:
        acc += tl.load(b_ptr + o_glob, mask=o_ok, other=0.0).to(ACC)[None, :]
    dst = out_ptr + (n * son + oy * soh + ox * sow)[:, None] + (o_glob * soc)[None, :]  # [BP, BO]
    tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & o_ok[None, :])


_JITTED: dict[bool, tuple[object, object]] = {}
_border = None  # the jitted _border_src that _roi_conv_src calls; set by get_kernel()


def get_kernel() -> triton.runtime.KernelInterface:
    """The jitted kernel for the current ``TRITON_INTERPRET`` setting (decorated on first use).

    ``_border_src`` is jitted alongside and bound to the module name ``_border`` that the kernel calls.
    """
    global _border
    interpret = interpreter_enabled()
    if interpret not in _JITTED:
        _JITTED[interpret] = (triton.jit(_border_src), triton.jit(_roi_conv_src))
    _border, kernel = _JITTED[interpret]
    return kernel


def launch(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    active: torch.Tensor,
    out: torch.Tensor,
    *,
    stride: tuple[int, int],
    pad: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    padding_mode: str,
) -> None:
    """Launch the kernel on checked arguments (see :func:`convcore.kernels.roi_conv.fused_conv2d_active`)."""
    N, C, H, W = input.shape
    O, CG, KH, KW = weight.shape
    HO, WO = out.shape[2:]
    OG = O // groups
    P = active.shape[0]
    cfg = kernel_config(CG, OG, input.dtype)
    grid = (triton.cdiv(P, cfg.block_p), groups * triton.cdiv(OG, cfg.block_o))
    if grid[1] > GRID_Y_MAX:
        raise ValueError(f"groups × output-channel blocks = {grid[1]} is above one launch's {GRID_Y_MAX}")
    w_taps = weight.permute(2, 3, 1, 0).contiguous()  # [KH, KW, CG, O]
    # The interpreter keeps bfloat16 as raw uint16 bits, which its tl.dot multiplies as integers: there the
    # bfloat16 blocks go through tl.dot as float32 (exactly representable, so the result is the same).
    upcast = input.dtype == torch.bfloat16 and interpreter_enabled()
    # float32 on a GPU follows the switch F.conv2d follows (cuDNN's TF32 for convolutions, on by default).
    tf32 = input.dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not interpreter_enabled()
    kernel = get_kernel()[grid]
    with torch.cuda.device(input.device) if input.device.type == "cuda" else contextlib.nullcontext():
        kernel(
            input,
            w_taps,
            bias.contiguous() if bias is not None else w_taps,
            active,
            out,
            P,
            H,
            W,
            HO,
            WO,
            N * HO * WO,
            O,
            OG,
            *input.stride(),
            *out.stride(),
            stride[0],
            stride[1],
            pad[0],
            pad[1],
            dilation[0],
            dilation[1],
            CG=CG,
            KH=KH,
            KW=KW,
            MODE=MODE_IDS[padding_mode],
            HAS_BIAS=bias is not None,
            USE_DOT=cfg.use_dot,
            IEEE=upcast or (input.dtype == torch.float32 and not tf32),
            UPCAST=upcast,
            ACC=tl.float64 if input.dtype == torch.float64 else tl.float32,
            BLOCK_P=cfg.block_p,
            BLOCK_C=cfg.block_c,
            BLOCK_O=cfg.block_o,
            num_warps=cfg.num_warps,
        )
