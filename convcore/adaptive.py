"""Per-location kernels: adaptive_conv2d, dynamic_conv2d (kernels from a function of the patch) and
adaptive_gaussian_blur2d (a Gaussian blur whose spread is a per-pixel map)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .checks import check_bias, check_same, check_tensor, pair
from .compile import check_compile, dense_tiles_op, function_key, masked_result, run_compiled, run_op, traced_pad
from .engine import OpSetup, TileBatch, needs_grad, run_tiles_op, run_windows, tap_views, window_jobs
from .geometry import conv_geometry

__all__ = ["adaptive_conv2d", "adaptive_gaussian_blur2d", "dynamic_conv2d"]

BORDER_TYPES = ("reflect", "replicate", "zeros", "circular", "symmetric")
_MIN_SIGMA = 1e-2  # below this every off-centre tap weighs exp(-5000) = 0: the blur is the identity


def adaptive_conv2d(
    input: torch.Tensor,
    kernel: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    padding_mode: str = "zeros",
    out: torch.Tensor | None = None,
    compile: bool | str = "auto",
) -> torch.Tensor:
    """A convolution whose kernel differs at every output location.

    Without ``weight`` every channel is filtered by its location's kernel (a per-pixel depthwise filter)::

        y[n, c, i, j] = Σ_{m, q} kernel[n, g(c), m, q, i, j] · x[n, c, i·s + m·d, j·s + q·d]

    With ``weight`` (O, C, kh, kw) it is the modulated convolution (torchvision's ``deform_conv2d`` with zero
    offsets and ``mask=kernel``)::

        y[n, o, i, j] = Σ_{c, m, q} weight[o, c, m, q] · kernel[n, g(c), m, q, i, j] · x[n, c, i·s + m·d, j·s + q·d]

    (coordinates in the padded input; g(c) = c // (C / G) is the channel's kernel group). Computed over the kh·kw
    shifted views of cache-sized input tiles — with ``weight``, one (O × C) matmul per tap — so neither the unfolded
    input nor the per-location (N, O, C, kh, kw, H_out, W_out) kernel is ever materialized.

    Args:
        input (Tensor[N, C, H, W]): the input batch.
        kernel (Tensor[N, kh, kw, H_out, W_out] or Tensor[N, G, kh, kw, H_out, W_out]): the per-location kernels,
            shared by all channels or one per channel group (C divisible by G).
        weight (Tensor[O, C, kh, kw], optional): the modulated convolution's weight.
        bias (Tensor[O] or Tensor[C], optional): added at every computed position.
        mask (Tensor[N, H_out, W_out] or Tensor[H_out, W_out], bool, optional): the ROI over output positions.
        stride, padding, dilation: as in ``nn.Conv2d``; ``padding`` may be "same" or "valid".
        padding_mode: "zeros" | "reflect" | "replicate" | "circular" | "symmetric".
        out (Tensor[N, O or C, H_out, W_out], optional): written only inside the mask; returned.

    Returns:
        Tensor[N, O, H_out, W_out] with ``weight``, else Tensor[N, C, H_out, W_out].

    Example:
        >>> x = torch.randn(1, 2, 5, 5)
        >>> k = torch.zeros(1, 3, 3, 5, 5); k[:, 1, 1] = 1  # every location's kernel is the identity
        >>> torch.allclose(adaptive_conv2d(x, k, padding=1), x)
        True
    """
    check_tensor("input", input, ["N", "C", "H", "W"])
    if not isinstance(kernel, torch.Tensor) or kernel.dim() not in (5, 6):
        shape = tuple(kernel.shape) if isinstance(kernel, torch.Tensor) else type(kernel).__name__
        raise ValueError(
            f"kernel must be a tensor of shape (N, kh, kw, H_out, W_out) or (N, G, kh, kw, H_out, W_out), got {shape}"
        )
    check_same("kernel", kernel, input)
    if kernel.dim() == 5:
        kernel = kernel.unsqueeze(1)  # [N, 1, kh, kw, H_out, W_out]
    N, C = input.shape[:2]
    G, kh, kw = kernel.shape[1:4]
    if kernel.shape[0] != N:
        raise ValueError(f"kernel must have one entry per image (N = {N}), got {kernel.shape[0]}")
    if G < 1 or C % G:
        raise ValueError(f"kernel groups G = {G} must divide the input channels C = {C}")
    if weight is not None:
        check_tensor("weight", weight, ["O", "C", "kh", "kw"])
        check_same("weight", weight, input)
        if tuple(weight.shape[1:]) != (C, kh, kw):
            raise ValueError(
                f"weight must have shape (O, C, kh, kw) = (O, {C}, {kh}, {kw}) to match the input and kernel, "
                f"got {tuple(weight.shape)}"
            )
    O = weight.shape[0] if weight is not None else C
    check_bias(bias, O, input)
    check_compile(compile)
    geometry = dict(stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode)
    geom = conv_geometry(input.shape[2:], (kh, kw), **geometry)
    if tuple(kernel.shape[4:]) != geom.out_hw:
        raise ValueError(
            f"kernel must cover the output positions: its last two dimensions must be (H_out, W_out) = "
            f"{geom.out_hw}, got {tuple(kernel.shape[4:])}"
        )
    statics = (G, weight is not None, bias is not None)
    mode = {"compiled": False}  # read by compute; set by the path run_op takes (_engine_paths)

    def compute(patch: torch.Tensor, band: TileBatch) -> torch.Tensor:  # patch [B, C, h_in, w_in] -> [B, O, h, w]
        g = band.geom
        args = (patch, band.rows(kernel), weight, bias, g.kernel, g.stride, g.dilation, G)  # rows [B, G, kh, kw, h, w]
        if mode["compiled"]:
            dynamic = [(0, (0, 2, 3)), (1, (0, 4, 5))]
            return run_compiled("adaptive_conv2d", _adaptive_band, (statics, *args[4:]), args, dynamic)
        return _adaptive_band(*args, in_place=not needs_grad(input, kernel, weight))

    position = (2 * C + (2 * O if weight is not None else C) + G * kh * kw) * input.element_size()
    compiled, eager = _engine_paths(
        mode, lambda s: run_tiles_op(input, s.geom, s.mask, s.out, compute, position_bytes=position)
    )
    dense = lambda geom, mask, out: dense_tiles_op(input, geom, mask, out, compute)  # noqa: E731
    return run_op(input, (kh, kw), mask, out, O, geometry, compile=compile, dense=dense, eager=eager, compiled=compiled)


def _adaptive_band(
    patch: torch.Tensor,
    kt: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    kernel_hw: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    G: int,
    in_place: bool = False,
) -> torch.Tensor:
    """Σ over taps of the shifted views of ``patch`` (Tensor[B, C, h_in, w_in]) times the per-location kernels
    ``kt`` (Tensor[B, G, kh, kw, h, w]), with ``weight`` one (O × C) matmul per tap → Tensor[B, O or C, h, w]."""
    B, C = patch.shape[:2]
    h, w = kt.shape[-2:]
    acc = None
    for m, q, xs in tap_views(patch, kernel_hw, stride, dilation, h, w):  # xs [B, C, h, w]
        z = xs.unflatten(1, (G, C // G)) * kt[:, :, None, m, q]  # [B, G, Cg, h, w]
        if weight is not None:
            z = weight[:, :, m, q] @ z.reshape(B, C, h * w)  # [B, O, h*w]
        if acc is None:
            acc = z
        elif in_place:
            acc += z
        else:
            acc = acc + z
    acc = acc.reshape(B, -1, h, w)
    return acc if bias is None else acc + bias[:, None, None]


def adaptive_gaussian_blur2d(
    input: torch.Tensor,
    sigma: torch.Tensor,
    kernel_size: int | Sequence[int],
    border_type: str = "reflect",
    *,
    mask: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    compile: bool | str = "auto",
) -> torch.Tensor:
    """A Gaussian blur whose standard deviation is a per-pixel map.

    The output pixel (i, j) is the input under a normalized kh × kw Gaussian centred there with standard deviation
    ``sigma[n, 0, i, j]`` (in pixels, the same along both axes)::

        k[m, q] ∝ exp(-(dy_m² + dx_q²) / (2 σ²)),   Σ_{m, q} k[m, q] = 1

    With a constant map it equals an ordinary Gaussian blur (``cv2.GaussianBlur(x, (kw, kh), σ)``); σ = 0 leaves the
    pixel as it is. The kernels are built tile by tile from the map and never stored for the whole image.

    Args:
        input (Tensor[N, C, H, W]): the images; every channel is blurred alike.
        sigma (Tensor[N, 1, H, W]): the standard deviation at each pixel, >= 0.
        kernel_size: int or (kh, kw), odd.
        border_type: "reflect" (gfedcb|abcdefgh|gfedcb: OpenCV's BORDER_REFLECT_101, torch's "reflect"),
            "replicate", "zeros", "circular" or "symmetric" (fedcba|abcdefgh|hgfedc: OpenCV's BORDER_REFLECT).
        mask (Tensor[N, H, W] or Tensor[H, W], bool, optional): blur only these pixels.
        out (Tensor[N, C, H, W], optional): written only inside the mask (``out=x.clone()`` keeps the rest); returned.

    Returns:
        Tensor[N, C, H, W].

    Example:
        >>> x = torch.rand(1, 3, 8, 8)
        >>> torch.equal(adaptive_gaussian_blur2d(x, torch.zeros(1, 1, 8, 8), 5), x)  # σ = 0: unchanged
        True
    """
    check_tensor("input", input, ["N", "C", "H", "W"])
    check_tensor("sigma", sigma, ["N", "1", "H", "W"])
    check_same("sigma", sigma, input)
    N, C, H, W = input.shape
    if tuple(sigma.shape) != (N, 1, H, W):
        raise ValueError(
            f"sigma must have shape (N, 1, H, W) = {(N, 1, H, W)}, one standard deviation per pixel, "
            f"got {tuple(sigma.shape)}"
        )
    kh, kw = pair("kernel_size", kernel_size, minimum=1)
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel_size must be odd in each dimension (the kernel is centred), got {(kh, kw)}")
    if border_type not in BORDER_TYPES:
        raise ValueError(f"border_type must be one of {BORDER_TYPES}, got {border_type!r}")
    if not bool((sigma >= 0).all()):  # one pass; NaN compares False
        raise ValueError("sigma must be >= 0 everywhere (0 leaves a pixel unblurred); it has negative or NaN values")
    check_compile(compile)
    geometry = dict(stride=1, padding="same", dilation=1, padding_mode=border_type)
    dy = (torch.arange(kh, device=input.device, dtype=input.dtype) - (kh - 1) / 2).square()  # [kh]
    dx = (torch.arange(kw, device=input.device, dtype=input.dtype) - (kw - 1) / 2).square()  # [kw]
    mode = {"compiled": False}  # read by compute; set by the path run_op takes (_engine_paths)

    def compute(patch: torch.Tensor, band: TileBatch) -> torch.Tensor:  # patch [B, C, h_in, w_in] -> [B, C, h, w]
        args = (patch, band.rows(sigma), dy, dx, band.geom.stride)  # sigma rows [B, 1, h, w]
        if mode["compiled"]:
            dynamic = [(0, (0, 2, 3)), (1, (0, 2, 3))]
            return run_compiled("adaptive_gaussian_blur2d", _blur_band, (kh, kw, args[4]), args, dynamic)
        return _blur_band(*args)

    position = (3 * C + kh + kw + 4) * input.element_size()
    compiled, eager = _engine_paths(
        mode, lambda s: run_tiles_op(input, s.geom, s.mask, s.out, compute, position_bytes=position)
    )
    dense = lambda geom, mask, out: dense_tiles_op(input, geom, mask, out, compute)  # noqa: E731
    return run_op(input, (kh, kw), mask, out, C, geometry, compile=compile, dense=dense, eager=eager, compiled=compiled)


def _blur_band(
    patch: torch.Tensor, s: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, stride: tuple[int, int]
) -> torch.Tensor:
    """The Gaussian of standard deviation ``s`` (Tensor[B, 1, h, w]) at each position of one band's ``patch``
    (Tensor[B, C, h_in, w_in]), separable squared distances ``dy`` (Tensor[kh]), ``dx`` (Tensor[kw]) → [B, C, h, w]
    (``stride`` is (1, 1), or (1, kw) for gathered window rows)."""
    kh, kw = dy.shape[0], dx.shape[0]
    h, w = s.shape[-2:]
    coef = -0.5 / s.clamp_min(_MIN_SIGMA).square()  # [B, 1, h, w]
    gy = torch.exp(dy[:, None, None, None, None] * coef)  # [kh, B, 1, h, w]
    gx = torch.exp(dx[:, None, None, None, None] * coef)  # [kw, B, 1, h, w]
    gy = gy / gy.sum(0)
    gx = gx / gx.sum(0)
    acc = None
    for m, q, xs in tap_views(patch, (kh, kw), stride, (1, 1), h, w):  # xs [B, C, h, w]
        t = xs * (gy[m] * gx[q])  # [B, C, h, w]
        acc = t if acc is None else acc + t
    return acc


def dynamic_conv2d(
    input: torch.Tensor,
    kernel_fn: Callable[[torch.Tensor], torch.Tensor],
    out_channels: int,
    kernel_size: int | Sequence[int],
    bias: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    padding_mode: str = "zeros",
    out: torch.Tensor | None = None,
    compile: bool | str = "auto",
) -> torch.Tensor:
    """A convolution whose weights are computed from each patch by ``kernel_fn`` (e.g. a small trainable MLP)::

        y[n, :, i, j] = kernel_fn(p)[0] @ p[0]  (+ bias),   p = the (C·kh·kw) window at (i, j), as F.unfold orders it

    ``kernel_fn`` maps a chunk of patches (Tensor[P, C·kh·kw]) to per-window weights (Tensor[P, O, C·kh·kw] or
    Tensor[P, O·C·kh·kw]). It is evaluated chunk by chunk under the workspace cap, so the (N·L, O·C·kh·kw) weights
    of the whole input never exist at once; autograd reaches kernel_fn's parameters.

    Args:
        input (Tensor[N, C, H, W]): the input batch.
        kernel_fn: patches (Tensor[P, C·kh·kw]) → weights (Tensor[P, O, C·kh·kw]).
        out_channels: O.
        kernel_size: int or (kh, kw).
        bias (Tensor[O], optional): added at every computed position.
        mask (Tensor[N, H_out, W_out] or Tensor[H_out, W_out], bool, optional): the ROI over output positions.
        stride, padding, dilation: as in ``nn.Conv2d``; ``padding`` may be "same" or "valid".
        padding_mode: "zeros" | "reflect" | "replicate" | "circular" | "symmetric".
        out (Tensor[N, O, H_out, W_out], optional): written only inside the mask; returned.

    Returns:
        Tensor[N, O, H_out, W_out].

    Example:
        >>> x, w = torch.randn(1, 2, 6, 6), torch.randn(3, 2 * 3 * 3)
        >>> y = dynamic_conv2d(x, lambda p: w.expand(p.shape[0], 3, 18), 3, 3, padding=1)  # the same kernel everywhere
        >>> torch.allclose(y, torch.nn.functional.conv2d(x, w.view(3, 2, 3, 3), padding=1), atol=1e-5)
        True
    """
    check_tensor("input", input, ["N", "C", "H", "W"])
    if not callable(kernel_fn):
        raise TypeError(f"kernel_fn must be a callable (patches [P, C*kh*kw] -> weights), got {type(kernel_fn)}")
    if not isinstance(out_channels, int) or isinstance(out_channels, bool) or out_channels < 1:
        raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
    kh, kw = pair("kernel_size", kernel_size, minimum=1)
    O, C = out_channels, input.shape[1]
    CK = C * kh * kw
    check_bias(bias, O, input)
    check_compile(compile)
    geometry = dict(stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode)
    key = (function_key(kernel_fn), O, bias is not None)
    mode = {"compiled": False}  # read by compute; set by the path run_op takes (_engine_paths)

    def dense(geom, mask, out):  # inside an outer torch.compile: every window at once (the outer graph owns it)
        N = input.shape[0]
        cols = F.unfold(traced_pad(input, geom), (kh, kw), geom.dilation, 0, geom.stride)  # [N, C*K, L]
        cols = cols.permute(1, 0, 2).reshape(C, kh * kw, -1)  # [C, K, N*L]
        y = _dynamic_chunk(cols, kernel_fn, bias, O).view(O, N, *geom.out_hw).transpose(0, 1)  # [N, O, H_out, W_out]
        return masked_result(y, mask, out)

    def compute(cols: torch.Tensor) -> torch.Tensor:  # cols [C, K, P] -> [O, P]
        if mode["compiled"]:
            return run_compiled("dynamic_conv2d", _dynamic_chunk, key, (cols, kernel_fn, bias, O), [(0, (2,))])
        return _dynamic_chunk(cols, kernel_fn, bias, O)

    recompute = torch.is_grad_enabled()  # kernel_fn may hold parameters: checkpoint each chunk
    window_bytes = (3 * CK + 2 * O * CK) * input.element_size()

    def run(s: OpSetup) -> None:
        jobs = window_jobs(input, s.out, s.mask, s.geom)
        run_windows(jobs, compute, window_bytes=window_bytes, recompute=recompute, reuse=not recompute)

    compiled, eager = _engine_paths(mode, run)
    # "auto" leaves it eager: the per-window weights are kernel_fn's own output (a matmul already), and compiling the
    # chunk measured 0.73-0.95x of the eager chunks in python -m convcore.bench ops (2-core machine)
    return run_op(input, (kh, kw), mask, out, O, geometry, compile=compile, dense=dense, eager=eager, compiled=compiled)


def _dynamic_chunk(
    cols: torch.Tensor, kernel_fn: Callable[[torch.Tensor], torch.Tensor], bias: torch.Tensor | None, O: int
) -> torch.Tensor:
    """The per-window weights of ``kernel_fn`` applied to their windows: cols (Tensor[C, K, P]) → Tensor[O, P]."""
    C, K, P = cols.shape
    CK = C * K
    patches = cols.reshape(CK, P).t().contiguous()  # [P, C*K]
    wts = kernel_fn(patches)
    if not isinstance(wts, torch.Tensor) or wts.numel() != P * O * CK or wts.shape[0] != P:
        got = tuple(wts.shape) if isinstance(wts, torch.Tensor) else type(wts).__name__
        raise ValueError(
            f"kernel_fn must return per-window weights of shape (P, O, C*kh*kw) = {(P, O, CK)} for patches of "
            f"shape {(P, CK)}, got {got}"
        )
    y = (wts.reshape(P, O, CK) * patches[:, None]).sum(-1)  # [P, O] (faster than P tiny matmuls)
    if bias is not None:
        y = y + bias
    return y.t()  # [O, P]


def _engine_paths(mode: dict, run: Callable[[OpSetup], None]) -> tuple[Callable, Callable]:
    """The compiled and the eager path of an op whose one engine pass (``run(setup)``) has computes that read
    ``mode["compiled"]``. A compiled pass that cannot compile part-way is rerun whole eagerly by :func:`run_op`: the
    engine rewrites every in-mask position."""

    def path(compiled: bool) -> Callable[[OpSetup], torch.Tensor]:
        def go(s: OpSetup) -> torch.Tensor:
            mode["compiled"] = compiled
            run(s)
            return s.out

        return go

    return path(True), path(False)
