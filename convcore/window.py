"""window_op2d — "a Conv2d that takes a function" — and the two engines every window op here runs on.

* The **windows engine** (:func:`run_windows_op`) gathers the receptive windows of a chunk of output positions
  (indexed unfold, :func:`convcore.gather.gather_windows`), hands them to a per-chunk compute function and scatters
  the result back. Chunks are cache-sized and never above :func:`convcore.plan.workspace_limit`, so the
  (N·L, C·kh·kw) unfold of the whole input never exists; under autograd each chunk is checkpointed, so neither do
  its intermediates. Used by ops whose function needs the whole window at once: :func:`window_op2d`,
  ``dynamic_conv2d``.
* The **tiles engine** (:func:`run_tiles_op`) cuts the output into bands (row bands of the whole batch, or the
  mask's active tiles merged into rectangles, images sharing a rectangle batched), takes each band's input patch
  with its halo (:func:`convcore.gather.gather_tile`: a view inside the image, a remapped copy across a border) and
  hands it to a compute function that loops over the kh·kw shifted views of the patch (:func:`shifted_views`). Used
  by ops that reduce elementwise over the window (morphology, L1 distance, per-location kernels, adaptive blur): no
  gather at all, and each band's working set stays in cache. For scattered masks it gathers the in-mask windows and
  lays them out as a band, so the same compute functions serve both.

Both engines honour the masked semantics of :func:`convcore.roi_conv2d`: values are computed only at in-mask output
positions; the rest is zero, or with ``out=`` left untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from ._alloc import zeros
from ._checks import ConvGeometry, check_mask, check_out, check_same, check_tensor, conv_geometry
from .gather import as_plane, gather_tile, gather_windows, scatter_windows, window_index
from .plan import _rects_from_mask, _tile_size, workspace_limit

__all__ = ["window_op2d"]

REDUCTIONS = ("sum", "mean", "max", "min", "logsumexp")
# Working set of one chunk/rectangle: small enough to stay in cache and let the allocator reuse blocks, large
# enough that each elementwise op is worth its thread-pool round trip (much smaller tiles were erratic on 2 cores).
_CPU_WORKING_BYTES = 2**23
_GPU_WORKING_BYTES = 2**27
# The tiles engine gathers windows instead when the mask's rectangles cover this many times its positions.
_SPARSE_RATIO = 4

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def window_op2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    fn: Fn,
    *,
    reduce: str = "sum",
    keep_window: bool = False,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    padding_mode: str = "zeros",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """A sliding-window op with any elementwise ``fn`` in place of the product of a convolution.

    For every output position (i, j) and output channel o::

        y[n, o, i, j] = reduce_{c, m, q} fn(x_window, w)[o, c, m, q]      (+ bias[o])

    where ``x_window[c, m, q]`` is the input value under kernel tap (m, q) of the window at (i, j) (read through
    ``padding`` / ``padding_mode``; zero padding reads 0, as ``F.unfold`` does). ``fn=lambda x, w: x * w`` with
    ``reduce="sum"`` is ``F.conv2d``.

    ``fn(x, w)`` is called once per chunk of P windows with:

    * ``x`` (Tensor[P, 1, C, kh, kw]): the P windows of the chunk;
    * ``w`` (Tensor[O, C, kh, kw]): ``weight`` itself;

    and must return a tensor broadcastable to (P, O, C, kh, kw) — any elementwise torch expression of the two
    broadcasts like that (``(x - w).abs()``, ``torch.exp(-(x - w) ** 2)``, …). The result is reduced over
    (C, kh, kw) — or over C only with ``keep_window=True`` — with ``reduce`` in sum | mean | max | min | logsumexp.

    Args:
        input (Tensor[N, C, H, W]): the input batch.
        weight (Tensor[O, C, kh, kw]): the second operand of ``fn``; its shape sets the kernel size.
        fn: the elementwise window function (see above).
        reduce: "sum" | "mean" | "max" | "min" | "logsumexp".
        keep_window: reduce over channels only and keep the window: the channel-only sum of the forum recipe.
        bias (Tensor[O], optional): added after the reduction.
        mask (Tensor[N, H_out, W_out] or Tensor[H_out, W_out], bool, optional): the ROI over output positions.
        stride, padding, dilation: as in ``nn.Conv2d``; ``padding`` may be "same" or "valid".
        padding_mode: "zeros" | "reflect" | "replicate" | "circular" | "symmetric".
        out (Tensor, optional): the output, written only inside the mask; returned.

    Returns:
        Tensor[N, O, H_out, W_out], or Tensor[N, O, kh, kw, H_out, W_out] with ``keep_window=True``.
    """
    check_tensor("input", input, ["N", "C", "H", "W"])
    check_tensor("weight", weight, ["O", "C", "kh", "kw"])
    check_same("weight", weight, input)
    if not callable(fn):
        raise TypeError(f"fn must be a callable fn(x, w) -> Tensor, got {type(fn).__name__}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if not isinstance(keep_window, bool):
        raise TypeError(f"keep_window must be a bool, got {type(keep_window).__name__}")
    N, C, H, W = input.shape
    O, Cw, kh, kw = weight.shape
    if Cw != C:
        raise ValueError(f"weight must have shape (O, C, kh, kw) with C = {C} (the input's channels), got {Cw}")
    check_bias(bias, O, input)
    geom = conv_geometry((H, W), (kh, kw), stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode)
    mask = _drop_full(check_mask(mask, N, geom.out_hw, input.device))
    Ho, Wo = geom.out_hw
    out_shape = (N, O, kh, kw, Ho, Wo) if keep_window else (N, O, Ho, Wo)
    out = check_out(out, out_shape, input)
    if keep_window and out is not None and not out.is_contiguous():
        raise ValueError("out must be contiguous with keep_window=True (it is written as (N, O*kh*kw, H_out, W_out))")
    dims = (2,) if keep_window else (2, 3, 4)
    O_flat = O * kh * kw if keep_window else O

    def compute(cols: torch.Tensor) -> torch.Tensor:  # cols [C, K, P] -> [O_flat, P]
        P = cols.shape[2]
        x = cols.permute(2, 0, 1).reshape(P, 1, C, kh, kw)  # [P, 1, C, kh, kw]
        v = fn(x, weight)
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"fn must return a torch.Tensor, got {type(v).__name__}")
        full = (P, O, C, kh, kw)
        if tuple(v.shape) != full:
            try:
                v = v.broadcast_to(full)  # [P, O, C, kh, kw]
            except RuntimeError:
                raise ValueError(
                    f"fn(x, w) must return a tensor broadcastable to (P, O, C, kh, kw) = {full} for x of shape "
                    f"{tuple(x.shape)} and w of shape {tuple(weight.shape)}; got {tuple(v.shape)}"
                ) from None
        r = _reduce(v, reduce, dims)  # [P, O] or [P, O, kh, kw]
        if bias is not None:
            r = r + (bias if not keep_window else bias[:, None, None])
        return r.reshape(P, O_flat).t()  # [O_flat, P]

    per_window = (2 * C * kh * kw + 3 * O * C * kh * kw + 2 * O_flat) * input.element_size()
    result = out if out is not None else (input.new_empty(out_shape) if mask is None else zeros(out_shape, input))
    flat = result.view(N, O_flat, Ho, Wo)
    run_windows_op(input, geom, mask, flat, compute, per_window)
    return result


def _reduce(v: torch.Tensor, reduce: str, dims: tuple[int, ...]) -> torch.Tensor:
    if reduce == "sum":
        return v.sum(dims)
    if reduce == "mean":
        return v.mean(dims)
    if reduce == "logsumexp":
        return torch.logsumexp(v, dims)
    return v.amax(dims) if reduce == "max" else v.amin(dims)


# --------------------------------------------------------------------------------------------------------------------
# Shared helpers (used by algebraic.py, morph.py, adaptive.py)


def check_bias(bias: object, channels: int, like: torch.Tensor) -> None:
    """Check an optional bias of shape (channels,)."""
    if bias is None:
        return
    check_tensor("bias", bias, ["O"])
    check_same("bias", bias, like)
    if bias.shape[0] != channels:
        raise ValueError(f"bias must have shape (O,) = ({channels},), got {tuple(bias.shape)}")


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records an op on these tensors (else the engines may update buffers in place)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def working_bytes(device: torch.device) -> int:
    """Target size of one chunk's or rectangle's working set: cache-sized on the CPU, capped by the workspace."""
    target = _GPU_WORKING_BYTES if device.type == "cuda" else _CPU_WORKING_BYTES
    return min(target, workspace_limit())


def run_windows_op(
    input: torch.Tensor,
    geom: ConvGeometry,
    mask: torch.Tensor | None,
    out: torch.Tensor,
    compute: Callable[[torch.Tensor], torch.Tensor],
    per_window_bytes: int,
) -> None:
    """The windows engine: gather the windows of in-mask positions chunk by chunk, compute, scatter into ``out``.

    Under autograd each chunk's compute is checkpointed: its intermediates (the (P, O, C, kh, kw) broadcast of
    ``fn``, the per-window weights of ``kernel_fn``) are recomputed chunk by chunk in the backward pass instead of
    being kept for the whole input, so training stays within the workspace too. ``compute`` must therefore be
    deterministic (random ops inside it replay with the same RNG state).

    Args:
        input (Tensor[N, C, H, W]), geom: the input and its resolved geometry.
        mask (bool Tensor[N, H_out, W_out] or None): checked ROI; None is everywhere.
        out (Tensor[N, O, H_out, W_out]): written at the computed positions only.
        compute: ``compute(cols)`` with cols (Tensor[C, kh*kw, P]) returns Tensor[O, P].
        per_window_bytes: working memory one window costs, to size chunks.
    """
    N = input.shape[0]
    Ho, Wo = geom.out_hw
    chunk = max(1, working_bytes(input.device) // max(per_window_bytes, 1))
    recompute = torch.is_grad_enabled()
    for n in range(N):
        plane = as_plane(input[n])  # [C, H*W]
        if mask is None:
            flat = None
            total = Ho * Wo
        else:
            flat = mask[n].reshape(-1).nonzero().squeeze(1)  # [P_n]
            total = flat.shape[0]
        for s in range(0, total, chunk):
            if flat is None:
                f = torch.arange(s, min(s + chunk, total), device=input.device)
            else:
                f = flat[s : s + chunk]
            oy, ox = f // Wo, f % Wo
            idx, valid = window_index(oy, ox, geom)  # [K, p]
            cols = gather_windows(plane, idx, valid)  # [C, K, p]
            if recompute:
                values = checkpoint(compute, cols, use_reentrant=False)  # [O, p]
            else:
                values = compute(cols)  # [O, p]
            scatter_windows(out[n], oy, ox, values)  # out[n][:, oy, ox] = [O, p]


@dataclass(frozen=True, eq=False)
class Band:
    """What the tiles engine hands an op's compute function: output rows [y0, y1) × cols [x0, x1) of images ``ns``.

    ``geom`` is the geometry to take the shifted views with (:func:`shifted_views`). For scattered masks the engine
    hands over a *window row* instead: ``pos`` = (oy, ox) of P in-mask positions of image ``ns[0]``, whose gathered
    windows are laid out as a (1 × P) band of stride (1, kw) (see :func:`_window_row`).
    """

    ns: tuple[int, ...]
    y0: int
    y1: int
    x0: int
    x1: int
    full: bool
    geom: ConvGeometry
    pos: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        if self.pos is not None:
            return 1, self.pos[0].shape[0]
        return self.y1 - self.y0, self.x1 - self.x0

    def rows(self, t: torch.Tensor, n_images: int) -> torch.Tensor:
        """The part of a per-output-position map t (Tensor[N, ..., H_out, W_out]) under the band: [B, ..., h, w]."""
        if self.pos is not None:
            oy, ox = self.pos
            return t[self.ns[0]][..., oy, ox].unsqueeze(-2).unsqueeze(0)  # [1, ..., 1, P]
        t = t[..., self.y0 : self.y1, self.x0 : self.x1]
        return t if len(self.ns) == n_images else t[list(self.ns)]


def tile_bands(mask: torch.Tensor | None, n_images: int, geom: ConvGeometry, row_bytes: int, device) -> list[Band]:
    """The output rectangles the tiles engine visits, images that share a rectangle batched together.

    Without a mask: row bands across the whole batch. With one: the mask's active tiles merged into rectangles
    (:func:`convcore.plan._rects_from_mask`), those of different images with the same bounds grouped (a mask shared
    by the batch gives one group per rectangle). Each group is cut into row bands whose working set (``row_bytes``
    per full-width output row and image) stays near :func:`working_bytes`.
    """
    Ho, Wo = geom.out_hw
    budget = working_bytes(device)
    if mask is None:
        groups = {(0, Ho, 0, Wo): list(range(n_images))}
    else:
        groups = {}
        for r in _rects_from_mask(mask.detach().cpu().numpy(), _tile_size(geom.out_hw), Ho):
            groups.setdefault((r.y0, r.y1, r.x0, r.x1), []).append(r.n)
    bands: list[Band] = []
    for (y0, y1, x0, x1), ns in groups.items():
        per_row = max(1, row_bytes * len(ns) * (x1 - x0) // max(Wo, 1))
        rows = max(1, budget // per_row)
        for b0 in range(y0, y1, rows):
            b1 = min(b0 + rows, y1)
            full = mask is None or bool(mask[ns, b0:b1, x0:x1].all())
            bands.append(Band(tuple(ns), b0, b1, x0, x1, full, geom))
    return bands


def run_tiles_op(
    input: torch.Tensor,
    geom: ConvGeometry,
    mask: torch.Tensor | None,
    out: torch.Tensor,
    compute: Callable[[torch.Tensor, Band], torch.Tensor],
    row_bytes: int,
) -> None:
    """The tiles engine: for each output band, compute from its input patch and write it into ``out``.

    Where the mask is so scattered that its rectangles would cover more than ``_SPARSE_RATIO`` times its positions,
    the engine gathers the in-mask windows instead (chunked, as the windows engine does) and hands them to the same
    compute function as window rows.

    Args:
        input (Tensor[N, C, H, W]), geom: the input and its resolved geometry.
        mask (bool Tensor[N, H_out, W_out] or None): checked ROI; None is everywhere.
        out (Tensor[N, O, H_out, W_out]): written inside the mask only.
        compute: ``compute(patch, band)`` with patch (Tensor[B, C, h_in, w_in]: the band's input with halo for its
            B = len(band.ns) images, to be read through ``shifted_views(patch, band.geom, *band.shape)``) returns
            Tensor[B, O, h, w].
        row_bytes: working memory of one full-width output row of one image, to size the bands.
    """
    N, C, H, W = input.shape
    bands = tile_bands(mask, N, geom, row_bytes, input.device)
    if mask is not None:
        area = sum(len(b.ns) * b.shape[0] * b.shape[1] for b in bands)
        if area > _SPARSE_RATIO * int(mask.sum()):
            _run_window_rows(input, geom, mask, out, compute, max(1, row_bytes // max(geom.out_hw[1], 1)))
            return
    for band in bands:
        patch = _band_patch(input, geom, band)  # [B, C, h_in, w_in]
        res = compute(patch, band)  # [B, O, h, w]
        if band.full and len(band.ns) == N:
            out[:, :, band.y0 : band.y1, band.x0 : band.x1].copy_(res)
            continue
        for b, n in enumerate(band.ns):
            dst = out[n, :, band.y0 : band.y1, band.x0 : band.x1]  # [O, h, w] view
            if band.full:
                dst.copy_(res[b])
            else:
                dst.copy_(torch.where(mask[n, band.y0 : band.y1, band.x0 : band.x1], res[b], dst))


def _run_window_rows(input, geom: ConvGeometry, mask: torch.Tensor, out, compute, position_bytes: int) -> None:
    """Scattered masks: gather the in-mask windows chunk by chunk and compute them as (1 × P) window rows."""
    (kh, kw), K = geom.kernel, geom.window
    per_window = position_bytes + 2 * input.shape[1] * K * input.element_size()
    chunk = max(1, working_bytes(input.device) // per_window)
    for n in range(input.shape[0]):
        plane = as_plane(input[n])  # [C, H*W]
        flat = mask[n].reshape(-1).nonzero().squeeze(1)  # [P_n]
        for s in range(0, flat.shape[0], chunk):
            f = flat[s : s + chunk]
            oy, ox = f // geom.out_hw[1], f % geom.out_hw[1]
            idx, valid = window_index(oy, ox, geom)  # [K, p]
            cols = gather_windows(plane, idx, valid)  # [C, K, p]
            band = Band((n,), 0, 1, 0, f.shape[0], True, _window_row(geom, f.shape[0]), (oy, ox))
            res = compute(_as_window_row(cols, kh, kw), band)  # [1, O, 1, p]
            scatter_windows(out[n], oy, ox, res[0, :, 0])  # out[n][:, oy, ox] = [O, p]


def _window_row(geom: ConvGeometry, p: int) -> ConvGeometry:
    """The geometry under which p gathered windows, laid out by :func:`_as_window_row`, are a (1 × p) band."""
    (kh, kw) = geom.kernel
    return ConvGeometry((kh, p * kw), (kh, kw), (1, kw), (0, 0, 0, 0), (1, 1), (1, p), geom.padding_mode)


def _as_window_row(cols: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Gathered windows (Tensor[C, kh*kw, P]) as a patch (Tensor[1, C, kh, P*kw]): window j at columns j*kw.."""
    C, _, P = cols.shape
    return cols.view(C, kh, kw, P).permute(0, 1, 3, 2).reshape(1, C, kh, P * kw)


def _band_patch(input: torch.Tensor, geom: ConvGeometry, band: Band) -> torch.Tensor:
    """Input patch with halo (Tensor[B, C, h_in, w_in]) of a band: a view inside the image when possible."""
    N, C, H, W = input.shape
    if len(band.ns) == N and input.is_contiguous():
        flat = input.view(N * C, H, W)  # [N*C, H, W]
        return gather_tile(flat, geom, band.y0, band.y1, band.x0, band.x1).unflatten(0, (N, C))
    tiles = [gather_tile(input[n], geom, band.y0, band.y1, band.x0, band.x1) for n in band.ns]  # [C, h_in, w_in]
    return tiles[0].unsqueeze(0) if len(tiles) == 1 else torch.stack(tiles)


def shifted_views(patch: torch.Tensor, geom: ConvGeometry, h: int, w: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The kh·kw shifted (strided) views of a band's input patch: (m, q, Tensor[B, C, h, w]) per kernel tap.

    The view for tap (m, q) holds, at output position (i, j) of the band, the input value under that tap.
    No data is copied.
    """
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
    for m in range(kh):
        for q in range(kw):
            r0, c0 = m * dh, q * dw
            yield m, q, patch[..., r0 : r0 + (h - 1) * sh + 1 : sh, c0 : c0 + (w - 1) * sw + 1 : sw]  # [B, C, h, w]


def prepare(
    input: torch.Tensor,
    kernel_hw: Sequence[int],
    mask: torch.Tensor | None,
    out: torch.Tensor | None,
    out_channels: int,
    *,
    stride,
    padding,
    dilation,
    padding_mode: str,
    allocate: bool = True,
) -> tuple[ConvGeometry, torch.Tensor | None, torch.Tensor | None, bool]:
    """Geometry, checked mask and the output tensor of a window op; ``done`` when the mask is empty.

    A mask that covers everything is returned as None (the whole-image path). The output is ``out`` when given,
    else new (zeros where a mask leaves positions unwritten, uninitialized when every position gets written), or
    None with ``allocate=False``.
    """
    N, _, H, W = input.shape
    geom = conv_geometry(
        (H, W), kernel_hw, stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode
    )
    mask = check_mask(mask, N, geom.out_hw, input.device)
    out_shape = (N, out_channels, *geom.out_hw)
    out = check_out(out, out_shape, input)
    covered = -1 if mask is None else int(mask.sum())
    done = covered == 0
    if covered == (-1 if mask is None else mask.numel()):
        mask = None  # covers every position: the whole-image path is cheaper
    if out is not None or not allocate:
        return geom, mask, out, done
    result = zeros(out_shape, input) if mask is not None or done else input.new_empty(out_shape)
    return geom, mask, result, done


def _drop_full(mask: torch.Tensor | None) -> torch.Tensor | None:
    """None for a mask that covers every output position (the whole-image path is cheaper)."""
    return None if mask is None or bool(mask.all()) else mask
