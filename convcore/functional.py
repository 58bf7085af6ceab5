"""roi_conv2d: a 2-D convolution computed only at output positions inside a region of interest."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .checks import check_bias, check_groups, check_out, check_same, check_tensor
from .engine import (
    SERIAL_SECONDS,
    TileBatch,
    TileSource,
    WindowJob,
    check_roi,
    chunk_bytes,
    needs_grad,
    plan_bands,
    run_tiles,
    run_windows,
    same_roi,
    scratch,
    single_thread,
    tile_size,
    zeros,
)
from .gather import pad_input
from .geometry import ConvGeometry, conv_geometry
from .kernels import fused_available, fused_roi_conv2d
from .plan import STRATEGIES, RoIPlan, plan_roi, tile_position_bytes, window_bytes
from .roi import RectRoi

__all__ = ["conv2d_reference", "roi_conv2d", "roi_conv2d_batch"]

# roi_conv2d_batch rounds rectangle sizes up to this many pixels per device type, so that rectangles of different
# images share conv calls. Worth it where a call costs a kernel launch (CUDA); on the CPU a call is cheap next to the
# extra pixels, so only rectangles of equal size share one.
_BATCH_TILE_QUANTUM = {"cuda": 16}


def roi_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | RectRoi | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    out: torch.Tensor | None = None,
    strategy: str = "auto",
    plan: RoIPlan | None = None,
) -> torch.Tensor:
    """Convolve ``input`` with ``weight`` only at the output positions where ``mask`` is True.

    Inside the mask the result equals ``nn.Conv2d`` with the same arguments; windows read their neighbours from the
    full input, in the ROI or not. Outside the mask the result is zero, or, when ``out`` is given, ``out`` is left
    untouched there (``out=x.clone()`` passes the rest of a same-shape image through).

    Args:
        input (Tensor[N, C, H, W]): the input batch.
        weight (Tensor[O, C/groups, kh, kw]): the convolution weights.
        bias (Tensor[O], optional): added at every computed position.
        mask (Tensor[N, H_out, W_out] or Tensor[H_out, W_out], bool, optional): the ROI over OUTPUT positions,
            one per image or shared by the batch. None means everywhere. A :class:`convcore.RectRoi` (boxes with
            local masks) is planned without a full-size mask ("dense" and "fused" build one).
        stride, padding, dilation, groups: as in ``F.conv2d``; ``padding`` may be "same" or "valid".
        padding_mode: "zeros" | "reflect" | "replicate" | "circular" as in ``nn.Conv2d``, or "symmetric" (the edge
            repeated). "reflect" does not repeat the edge: it is OpenCV's BORDER_REFLECT_101; OpenCV's BORDER_REFLECT
            is "symmetric" here (see :mod:`convcore.geometry`).
        out (Tensor[N, O, H_out, W_out], optional): written only inside the mask; returned.
        strategy: "auto" (a cost model picks, see :mod:`convcore.plan`), "windows" (indexed unfold + a matmul per
            chunk), "tiles" (active tiles with their halo through the dense conv), "dense" (F.conv2d + masked write)
            or "fused" (the Triton kernel of :mod:`convcore.kernels`: CUDA tensors, or CPU tensors under
            ``TRITON_INTERPRET=1``; "auto" does not pick it yet, see :mod:`convcore.kernels.cost`).
        plan: a :class:`RoIPlan` from :func:`plan_roi` for the same shapes, to skip index building; ``mask`` may
            then be omitted (the plan's is used) or given, and must then be the plan's mask.

    Returns:
        Tensor[N, O, H_out, W_out]: ``out`` when given, else a new tensor.

    Example:
        >>> x, w = torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3)
        >>> mask = torch.zeros(8, 8, dtype=torch.bool); mask[2:5, 3:7] = True
        >>> y = roi_conv2d(x, w, None, mask, padding=1)
        >>> torch.allclose(y, F.conv2d(x, w, padding=1) * mask, atol=1e-5)
        True
    """
    check_tensor("input", input, ["N", "C", "H", "W"])
    check_tensor("weight", weight, ["O", "C/groups", "kh", "kw"])
    check_same("weight", weight, input)
    check_bias(bias, weight.shape[0], input)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    N, C, H, W = input.shape
    check_groups(C, weight.shape[0], weight.shape[1], groups)
    geom = conv_geometry(
        (H, W), weight.shape[2:], stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode
    )
    if plan is None:
        plan = plan_roi(
            mask,
            input.shape,
            weight.shape,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            device=input.device,
            padding_mode=padding_mode,
            strategy=strategy,
            fresh_output=out is None,
        )
    else:
        if not isinstance(plan, RoIPlan):
            raise TypeError(f"plan must be a RoIPlan from convcore.plan_roi, got {type(plan).__name__}")
        if not plan.matches(input.shape, weight.shape, geom, groups):
            raise ValueError(
                f"plan was built for input {plan.input_shape}, weight {plan.weight_shape} and {plan.geometry}; "
                f"got input {tuple(input.shape)}, weight {tuple(weight.shape)} and {geom}: build a new plan"
            )
        if plan.mask is not None and plan.mask.device != input.device:
            raise ValueError(f"plan is on {plan.device} but input is on {input.device}; build it with device=")
        if mask is not None:
            given, _ = check_roi(mask, N, geom.out_hw, plan.device)
            if not same_roi(given, plan.mask):
                raise ValueError(
                    "mask differs from the mask the plan was built for: pass the plan's mask (or no mask), "
                    "or build a plan for this one with plan_roi"
                )
    out_shape = (N, weight.shape[0], *geom.out_hw)
    check_out(out, out_shape, input)
    chosen = plan.strategy if strategy == "auto" else strategy
    if chosen == "dense":
        return _run_dense(input, weight, bias, plan, out)
    if chosen == "fused":
        return _run_fused(input, weight, bias, plan, groups, out)
    estimate = plan.estimates.get(chosen)
    with single_thread(input.device.type == "cpu" and estimate is not None and estimate < SERIAL_SECONDS):
        fresh = out is None
        if fresh:
            out = zeros(out_shape, input)
        if plan.coverage == 0:
            return out
        if chosen == "tiles":
            run_tiles([TileSource(input, out, plan.mask, geom)], plan.bands(), _conv_compute(weight, bias, groups))
        else:
            jobs = [WindowJob(input[n], out[n], oy, ox, geom) for n, (oy, ox) in enumerate(plan.positions())]
            _run_windows(jobs, weight, bias, groups)
    return out


def _run_fused(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: RoIPlan, groups: int, out
) -> torch.Tensor:
    """The fused kernel over the plan's mask (all positions when the plan has none)."""
    if not fused_available(input.device):
        raise ValueError(
            f"strategy='fused' needs the triton package and a CUDA tensor (got a {input.device.type} tensor); "
            "on the CPU it runs only under Triton's interpreter (TRITON_INTERPRET=1): use another strategy"
        )
    geom = plan.geometry
    N = input.shape[0]
    if plan.mask is None:
        mask = torch.ones(N, *geom.out_hw, dtype=torch.bool, device=input.device)  # [N, H_out, W_out]
    else:
        mask = plan.dense_mask().expand(N, *geom.out_hw)  # [N, H_out, W_out]
    return fused_roi_conv2d(
        input,
        weight,
        bias,
        mask,
        stride=geom.stride,
        pad=geom.pad,  # (top, bottom, left, right)
        dilation=geom.dilation,
        groups=groups,
        padding_mode=geom.padding_mode,
        out=out,
    )


def _per_input(inputs, masks, outs) -> tuple[list, list]:
    """``masks`` and ``outs`` as lists with one entry per input (None where not given)."""
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise TypeError("inputs must be a non-empty list of (C, H, W) tensors")
    n = len(inputs)
    masks = list(masks) if masks is not None else [None] * n
    outs = list(outs) if outs is not None else [None] * n
    if len(masks) != n or len(outs) != n:
        raise ValueError(f"masks and outs must have one entry per input ({n}), got {len(masks)} and {len(outs)}")
    return masks, outs


def roi_conv2d_batch(
    inputs: Sequence[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    masks: Sequence[torch.Tensor | RectRoi | None] | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    outs: Sequence[torch.Tensor | None] | None = None,
) -> list[torch.Tensor]:
    """Convolve images of different sizes with the same weights, each only inside its own mask.

    The in-mask windows of the images whose plan picks "windows" share chunks: one matmul per chunk of gathered
    windows, however many images it spans; the results are scattered back per image. The rectangles of the images
    whose plan picks "tiles" go through the tiles engine together: rectangles of equal size (on CUDA rounded up to
    multiples of 16) share one conv call. Images whose plan picks "dense" run on their own. Results equal per-image
    :func:`roi_conv2d` calls.

    Args:
        inputs (list of Tensor[C, H_i, W_i]): the images (same C, dtype and device).
        weight (Tensor[O, C/groups, kh, kw]), bias (Tensor[O], optional): shared by all images.
        masks (list of bool Tensor[H_out_i, W_out_i], :class:`convcore.RectRoi` or None, optional): each image's ROI
            over output positions.
        outs (list of Tensor[O, H_out_i, W_out_i] or None, optional): written only inside each mask.

    Returns:
        list of Tensor[O, H_out_i, W_out_i].

    Example:
        >>> w = torch.randn(2, 3, 3, 3)
        >>> images = [torch.randn(3, 8, 8), torch.randn(3, 5, 9)]
        >>> masks = [torch.ones(8, 8, dtype=torch.bool), torch.zeros(5, 9, dtype=torch.bool)]
        >>> ys = roi_conv2d_batch(images, w, None, masks, padding=1)
        >>> [tuple(y.shape) for y in ys], bool(ys[1].any())
        ([(2, 8, 8), (2, 5, 9)], False)
    """
    masks, outs = _per_input(inputs, masks, outs)
    results: list[torch.Tensor] = []
    jobs: list[WindowJob] = []
    sources: list[TileSource] = []
    tile_masks: list = []
    check_tensor("weight", weight, ["O", "C/groups", "kh", "kw"])
    for i, (image, mask, out) in enumerate(zip(inputs, masks, outs)):
        check_tensor(f"inputs[{i}]", image, ["C", "H", "W"])
        check_same("weight", weight, image)
        check_bias(bias, weight.shape[0], image)
        x = image.unsqueeze(0)
        plan = plan_roi(
            mask,  # (H_out, W_out): plan_roi checks it against this image's output size
            x.shape,
            weight.shape,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            device=image.device,
            padding_mode=padding_mode,
            fresh_output=out is None,
        )
        if plan.strategy == "dense":
            o = None if out is None else out.unsqueeze(0)
            results.append(
                roi_conv2d(
                    x,
                    weight,
                    bias,
                    stride=stride,
                    padding=padding,
                    dilation=dilation,
                    groups=groups,
                    padding_mode=padding_mode,
                    out=o,
                    plan=plan,
                )[0]
            )
            continue
        o = zeros(plan.out_shape, x) if out is None else check_out(out.unsqueeze(0), plan.out_shape, x)
        results.append(o[0])
        if plan.strategy == "windows":
            oy, ox = plan.positions()[0]
            jobs.append(WindowJob(image, o[0], oy, ox, plan.geometry))
        else:
            sources.append(TileSource(x, o, plan.mask, plan.geometry))
            tile_masks.append(plan.mask.cpu().numpy() if isinstance(plan.mask, torch.Tensor) else plan.mask)
    if jobs:
        _run_windows(jobs, weight, bias, groups)
    if sources:
        out_hws = [(1, *s.geom.out_hw) for s in sources]
        bands = plan_bands(
            tile_masks,
            out_hws,
            position_bytes=tile_position_bytes(inputs[0].shape[0], weight.shape[0], sources[0].geom.stride),
            budget=chunk_bytes(weight.device, blocked=True),
            tile=tile_size([max(max(hw[1:]) for hw in out_hws)]),
            quantum=_BATCH_TILE_QUANTUM.get(weight.device.type, 1),
        )
        run_tiles(sources, bands, _conv_compute(weight, bias, groups))
    return results


def conv2d_reference(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """``F.conv2d`` with a ``padding_mode`` (any of roi_conv2d's, "symmetric" included): the dense convolution
    that roi_conv2d's "dense" strategy runs.

    Args:
        input (Tensor[N, C, H, W]), weight (Tensor[O, C/groups, kh, kw]), bias (Tensor[O], optional),
        stride, padding, dilation, groups: as in ``F.conv2d``.
        padding_mode: "zeros" | "reflect" | "replicate" | "circular" | "symmetric".

    Returns:
        Tensor[N, O, H_out, W_out].

    Example:
        >>> x, w = torch.randn(1, 2, 6, 6), torch.randn(4, 2, 3, 3)
        >>> torch.allclose(conv2d_reference(x, w, padding=1), F.conv2d(x, w, padding=1), atol=1e-5)
        True
    """
    check_tensor("input", input, ["N", "C", "H", "W"])
    check_tensor("weight", weight, ["O", "C/groups", "kh", "kw"])
    geom = conv_geometry(
        input.shape[2:], weight.shape[2:], stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode
    )
    return _dense(input, weight, bias, geom, groups)


def _dense(input, weight, bias, geometry: ConvGeometry, groups: int) -> torch.Tensor:
    top, bottom, left, right = geometry.pad
    if geometry.padding_mode == "zeros" and top == bottom and left == right:
        return F.conv2d(input, weight, bias, geometry.stride, (top, left), geometry.dilation, groups)
    return F.conv2d(pad_input(input, geometry), weight, bias, geometry.stride, 0, geometry.dilation, groups)


def _run_dense(input, weight, bias, plan: RoIPlan, out):
    y = _dense(input, weight, bias, plan.geometry, plan.groups)  # [N, O, H_out, W_out]
    if plan.mask is None:
        return y if out is None else out.copy_(y)
    keep = plan.dense_mask().unsqueeze(1)  # [N, 1, H_out, W_out]
    if out is None:
        return torch.where(keep, y, y.new_zeros(()))
    return out.copy_(torch.where(keep, y, out))


def _conv_compute(weight: torch.Tensor, bias: torch.Tensor | None, groups: int):
    """The tiles engine's compute for roi_conv2d: the dense conv over the band's patch."""

    def compute(patch: torch.Tensor, batch: TileBatch) -> torch.Tensor:  # [B, C, h_in, w_in] -> [B, O, h, w]
        return F.conv2d(patch, weight, bias, batch.geom.stride, 0, batch.geom.dilation, groups)

    return compute


def _run_windows(jobs: list[WindowJob], weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> None:
    """The windows engine with roi_conv2d's compute: one grouped matmul per chunk of gathered windows."""
    O, Cg, kh, kw = weight.shape
    K = kh * kw
    w = weight.reshape(groups, O // groups, Cg * K)  # [G, O/G, Cg*K]
    reuse = not needs_grad(weight, bias, *(j.image for j in jobs))

    def compute(cols: torch.Tensor) -> torch.Tensor:  # [C, K, P] -> [O, P]
        P = cols.shape[2]
        x = cols.reshape(groups, Cg * K, P)  # [G, Cg*K, P]
        if not reuse:
            res = torch.bmm(w, x).reshape(O, P)  # [O, P]
            return res if bias is None else res + bias[:, None]
        res = scratch("matmul", O * P, cols).view(groups, O // groups, P)
        res = torch.bmm(w, x, out=res).view(O, P)  # [O, P], in reused memory
        return res if bias is None else res.add_(bias[:, None])

    run_windows(jobs, compute, window_bytes=window_bytes(Cg * groups, O, K, weight.element_size()), reuse=reuse)
