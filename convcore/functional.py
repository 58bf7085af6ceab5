"""roi_conv2d: a 2-D convolution computed only at output positions inside a region of interest."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._alloc import zeros
from ._checks import ConvGeometry, check_mask, check_out, check_same, check_tensor, conv_geometry
from .gather import as_plane, gather_tile, gather_windows, pad_input, scatter_windows, window_index
from .plan import STRATEGIES, RoiPlan, _check_groups, plan_roi, workspace_limit

__all__ = ["roi_conv2d", "roi_conv2d_batch", "conv2d_reference"]

_CPU_CHUNK_ELEMS = 2**18  # gathered elements per chunk on the CPU (1 MiB of float32)
# roi_conv2d_batch rounds rectangle sizes up to this many pixels per device type, so that rectangles of different
# images share conv calls. Worth it where a call costs a kernel launch (CUDA); on the CPU a call is cheap next to the
# extra pixels, so only rectangles of equal size share one.
_BATCH_TILE_QUANTUM = {"cuda": 16}


def roi_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    out: torch.Tensor | None = None,
    strategy: str = "auto",
    plan: RoiPlan | None = None,
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
            one per image or shared by the batch. None means everywhere.
        stride, padding, dilation, groups: as in ``F.conv2d``; ``padding`` may be "same" or "valid".
        padding_mode: "zeros" | "reflect" | "replicate" | "circular" as in ``nn.Conv2d``, or "symmetric" (the edge
            repeated, OpenCV's BORDER_REFLECT).
        out (Tensor[N, O, H_out, W_out], optional): written only inside the mask; returned.
        strategy: "auto" (a cost model picks, see :mod:`convcore.plan`), "windows" (indexed unfold + one matmul),
            "tiles" (active tiles with their halo through the dense conv) or "dense" (F.conv2d + masked write).
        plan: a :class:`RoiPlan` from :func:`plan_roi` for the same shapes and mask, to skip index building.

    Returns:
        Tensor[N, O, H_out, W_out]: ``out`` when given, else a new tensor.
    """
    check_tensor("input", input, ["N", "C", "H", "W"])
    check_tensor("weight", weight, ["O", "C/groups", "kh", "kw"])
    check_same("weight", weight, input)
    if bias is not None:
        check_tensor("bias", bias, ["O"])
        check_same("bias", bias, input)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape (O,) = ({weight.shape[0]},), got {tuple(bias.shape)}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    N, C, H, W = input.shape
    _check_groups(C, weight.shape[0], weight.shape[1], groups)
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
        if not isinstance(plan, RoiPlan):
            raise TypeError(f"plan must be a RoiPlan from convcore.plan_roi, got {type(plan).__name__}")
        if not plan.matches(input.shape, weight.shape, geom, groups):
            raise ValueError(
                f"plan was built for input {plan.input_shape}, weight {plan.weight_shape} and {plan.geometry}; "
                f"got input {tuple(input.shape)}, weight {tuple(weight.shape)} and {geom}: build a new plan"
            )
        if mask is not None:
            check_mask(mask, N, geom.out_hw)
        if plan.mask is not None and plan.mask.device != input.device:
            raise ValueError(f"plan is on {plan.device} but input is on {input.device}; build it with device=")
    out_shape = (N, weight.shape[0], *geom.out_hw)
    check_out(out, out_shape, input)
    chosen = plan.strategy if strategy == "auto" else strategy
    if chosen == "dense":
        return _run_dense(input, weight, bias, plan, out)
    fresh = out is None
    if fresh:
        out = zeros(out_shape, input)
    if plan.coverage == 0:
        return out
    if chosen == "tiles":
        masks = [None] * N if plan.mask is None else list(plan.mask)
        entries = [(input[r.n], out[r.n], masks[r.n], plan.geometry, r) for r in plan.rects()]
        _run_tiles(entries, weight, bias, groups)
    else:
        items = [(input[n], out[n], oy, ox, plan.geometry) for n, (oy, ox) in enumerate(plan.positions())]
        _run_windows(items, weight, bias, groups)
    return out


def roi_conv2d_batch(
    inputs: Sequence[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    masks: Sequence[torch.Tensor | None] | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    outs: Sequence[torch.Tensor | None] | None = None,
) -> list[torch.Tensor]:
    """Convolve images of different sizes with the same weights, each only inside its own mask.

    The in-mask windows of every image whose cost model picks "windows" are gathered together and go through one
    matmul (per workspace chunk); the results are scattered back per image. Images whose ROI is large enough for
    "tiles" or "dense" to be cheaper run on their own. Results equal per-image :func:`roi_conv2d` calls.

    Args:
        inputs (list of Tensor[C, H_i, W_i]): the images (same C, dtype and device).
        weight (Tensor[O, C/groups, kh, kw]), bias (Tensor[O], optional): shared by all images.
        masks (list of bool Tensor[H_out_i, W_out_i] or None, optional): each image's ROI over output positions.
        outs (list of Tensor[O, H_out_i, W_out_i] or None, optional): written only inside each mask.

    Returns:
        list of Tensor[O, H_out_i, W_out_i].
    """
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise TypeError("inputs must be a non-empty list of (C, H, W) tensors")
    n = len(inputs)
    masks = list(masks) if masks is not None else [None] * n
    outs = list(outs) if outs is not None else [None] * n
    if len(masks) != n or len(outs) != n:
        raise ValueError(f"masks and outs must have one entry per input ({n}), got {len(masks)} and {len(outs)}")
    results: list[torch.Tensor] = []
    windows_items, tile_entries = [], []
    for i, (image, mask, out) in enumerate(zip(inputs, masks, outs)):
        check_tensor(f"inputs[{i}]", image, ["C", "H", "W"])
        check_same("weight", weight, image)
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
            windows_items.append((image, o[0], oy, ox, plan.geometry))
        else:
            m0 = None if plan.mask is None else plan.mask[0]
            tile_entries += [(image, o[0], m0, plan.geometry, r) for r in plan.rects()]
    if windows_items:
        _run_windows(windows_items, weight, bias, groups)
    if tile_entries:
        _run_tiles(tile_entries, weight, bias, groups, quantum=_BATCH_TILE_QUANTUM.get(weight.device.type, 1))
    return results


def conv2d_reference(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
    groups: int,
) -> torch.Tensor:
    """The dense convolution for a resolved geometry (any padding mode): the fallback and the test oracle."""
    top, bottom, left, right = geometry.pad
    if geometry.padding_mode == "zeros" and top == bottom and left == right:
        return F.conv2d(input, weight, bias, geometry.stride, (top, left), geometry.dilation, groups)
    return F.conv2d(pad_input(input, geometry), weight, bias, geometry.stride, 0, geometry.dilation, groups)


def _run_dense(input, weight, bias, plan: RoiPlan, out):
    y = conv2d_reference(input, weight, bias, plan.geometry, plan.groups)  # [N, O, H_out, W_out]
    if plan.mask is None:
        return y if out is None else out.copy_(y)
    keep = plan.mask.unsqueeze(1)  # [N, 1, H_out, W_out]
    if out is None:
        return torch.where(keep, y, y.new_zeros(()))
    return out.copy_(torch.where(keep, y, out))


def _run_windows(items, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> None:
    """Gather the windows of every item, one matmul per workspace chunk, scatter back.

    ``items`` are (image Tensor[C, H, W], out Tensor[O, H_out, W_out], oy Tensor[P], ox Tensor[P], geometry).
    """
    O, Cg, kh, kw = weight.shape
    K = kh * kw
    C = Cg * groups
    w = weight.reshape(groups, O // groups, Cg * K)  # [G, O/G, Cg*K]
    elem = weight.element_size()
    per_window = (C * K + 2 * O) * elem + 3 * K * 8
    chunk = max(1, workspace_limit() // per_window)
    if weight.device.type == "cpu":
        # Small chunks keep the gathered block in cache and let the allocator reuse it: gathering into one large
        # fresh buffer costs more in page faults than the gather itself.
        chunk = min(chunk, max(256, _CPU_CHUNK_ELEMS // (C * K)))
    pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    count = 0

    def flush() -> None:
        nonlocal pending, count
        if not pending:
            return
        cols = pending[0][3] if len(pending) == 1 else torch.cat([p[3] for p in pending], dim=2)  # [C, K, P]
        res = torch.bmm(w, cols.reshape(groups, Cg * K, -1)).reshape(O, -1)  # [O, P]
        if bias is not None:
            res = res + bias[:, None]
        start = 0
        for out_image, oy, ox, c in pending:
            p = c.shape[2]
            scatter_windows(out_image, oy, ox, res[:, start : start + p])  # out[:, oy, ox] = [O, p]
            start += p
        pending, count = [], 0

    for image, out_image, oy, ox, geom in items:
        plane = as_plane(image)  # [C, H*W]
        for s in range(0, oy.shape[0], chunk):
            oy_c, ox_c = oy[s : s + chunk], ox[s : s + chunk]
            idx, valid = window_index(oy_c, ox_c, geom)  # [K, p]
            pending.append((out_image, oy_c, ox_c, gather_windows(plane, idx, valid)))  # [C, K, p]
            count += oy_c.shape[0]
            if count >= chunk:
                flush()
    flush()


def _run_tiles(entries, weight, bias, groups: int, quantum: int = 1) -> None:
    """Run the dense conv over active rectangles (with halo), same-shape ones batched into one call; write back.

    ``entries`` are (image Tensor[C, H, W], out Tensor[O, H_out, W_out], mask Tensor[H_out, W_out] or None,
    geometry, Rect). With ``quantum`` > 1 each rectangle is computed over its size rounded up to a multiple of
    ``quantum`` (the extra outputs are discarded), so rectangles of different images and sizes share conv calls.
    """
    C = weight.shape[1] * groups
    O = weight.shape[0]
    elem = weight.element_size()
    buckets: dict[tuple[int, int], list] = {}
    for entry in entries:
        h, w = entry[4].shape
        buckets.setdefault((-(-h // quantum) * quantum, -(-w // quantum) * quantum), []).append(entry)
    for (h, w), group in buckets.items():
        geom = group[0][3]
        h_in = (h - 1) * geom.stride[0] + (geom.kernel[0] - 1) * geom.dilation[0] + 1
        w_in = (w - 1) * geom.stride[1] + (geom.kernel[1] - 1) * geom.dilation[1] + 1
        batch = max(1, workspace_limit() // ((C * h_in * w_in + O * h * w) * elem))
        for s in range(0, len(group), batch):
            part = group[s : s + batch]
            patches = [gather_tile(im, g, r.y0, r.y0 + h, r.x0, r.x0 + w) for im, _, _, g, r in part]  # [C, h_in, w_in]
            tiles = patches[0].unsqueeze(0) if len(part) == 1 else torch.stack(patches)  # [B, C, h_in, w_in]
            y = F.conv2d(tiles, weight, bias, geom.stride, 0, geom.dilation, groups)  # [B, O, h, w]
            for (_, out, mask, _, r), y_r in zip(part, y):
                y_r = y_r[:, : r.y1 - r.y0, : r.x1 - r.x0]  # [O, rh, rw]: drop the rounding-up
                dst = out[:, r.y0 : r.y1, r.x0 : r.x1]  # [O, rh, rw] view
                if r.full:
                    dst.copy_(y_r)
                else:
                    dst.copy_(torch.where(mask[r.y0 : r.y1, r.x0 : r.x1], y_r, dst))
