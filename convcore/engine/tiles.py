"""The tiles engine: output rectangles with their input halo, a compute per band, results written back.

The per-band compute is the seam every op plugs into::

    compute(patch: Tensor[B, C, h_in, w_in], band: TileBatch) -> Tensor[B, O, h, w]

``patch`` holds the input under the band's B rectangles with their halo (a view of the input when the band is the
whole batch at one place, a copy otherwise; borders resolved per padding mode), to be read with ``band.geom`` —
e.g. ``F.conv2d(patch, weight, bias, band.geom.stride, 0, band.geom.dilation)`` (roi_conv2d) or a loop over
:func:`shifted_views` (the window ops). ``band.rows(t)`` slices a per-position map (N, ..., H_out, W_out) under the
band. The engine writes each result into ``out`` (masked where the mask covers a rectangle only partly).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..gather import as_plane, gather_tile, gather_windows, scatter_windows, window_index
from ..geometry import ConvGeometry
from .policy import chunk_bytes, chunk_count, tile_size
from .rects import Band, Rect, RoiRects, image_positions, plan_bands

__all__ = ["TileBatch", "TileSource", "TilesCompute", "run_tiles", "run_tiles_op", "shifted_views", "tap_views"]

# run_tiles_op gathers windows instead when the mask's rectangles cover this many times its positions.
SPARSE_RATIO = 4


@dataclass(frozen=True, eq=False)
class TileSource:
    """One input batch (Tensor[N, C, H, W]) with its output (Tensor[N, O, H_out, W_out]), checked ROI
    (bool Tensor[N, H_out, W_out], :class:`RoiRects` or None) and resolved geometry."""

    input: torch.Tensor
    out: torch.Tensor
    mask: torch.Tensor | RoiRects | None
    geom: ConvGeometry


@dataclass(frozen=True, eq=False)
class TileBatch:
    """What a compute gets with its patch: the band's size ``shape`` = (h, w), the geometry to read the patch
    with, and the rectangles (or, for window rows, the positions) it covers."""

    shape: tuple[int, int]
    geom: ConvGeometry
    rects: tuple[Rect, ...]
    pos: tuple[torch.Tensor, torch.Tensor] | None = None
    whole: bool = False  # the rectangles are images 0..N-1 of one source at one place

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """The part of a per-position map t (Tensor[N, ..., H_out, W_out]) under the band: Tensor[B, ..., h, w]."""
        if self.pos is not None:
            oy, ox = self.pos
            return t[self.rects[0].n][..., oy, ox].unsqueeze(-2).unsqueeze(0)  # [1, ..., 1, P]
        h, w = self.shape
        r = self.rects[0]
        if self.whole:
            return t[..., r.y0 : r.y0 + h, r.x0 : r.x0 + w]
        return torch.stack([t[r.n][..., r.y0 : r.y0 + h, r.x0 : r.x0 + w] for r in self.rects])


TilesCompute = Callable[[torch.Tensor, TileBatch], torch.Tensor]


def run_tiles(sources: Sequence[TileSource], bands: Sequence[Band], compute: TilesCompute) -> None:
    """Compute every band from its input patch and write the results into the sources' outputs.

    Args:
        sources: the inputs, outputs and masks the bands' rectangles refer to (``rect.src``, ``rect.n``).
        bands: from :func:`convcore.engine.plan_bands`.
        compute: ``compute(patch, batch)`` → Tensor[B, O, h, w] (see the module docstring).
    """
    for band in bands:
        r0 = band.rects[0]
        src = sources[r0.src]
        h, w = band.shape
        whole = (
            len(band.rects) == src.input.shape[0]
            and src.input.is_contiguous()
            and all(
                r.src == r0.src and r.n == i and r.shape == (h, w) and r.y0 == r0.y0 and r.x0 == r0.x0
                for i, r in enumerate(band.rects)
            )
        )
        if whole:
            N, C, H, W = src.input.shape
            flat = src.input.view(N * C, H, W)  # [N*C, H, W]
            patch = gather_tile(flat, src.geom, r0.y0, r0.y0 + h, r0.x0, r0.x0 + w).unflatten(0, (N, C))
        else:
            tiles = [
                gather_tile(sources[r.src].input[r.n], sources[r.src].geom, r.y0, r.y0 + h, r.x0, r.x0 + w)
                for r in band.rects
            ]  # [C, h_in, w_in] each
            patch = tiles[0].unsqueeze(0) if len(tiles) == 1 else torch.stack(tiles)  # [B, C, h_in, w_in]
        res = compute(patch, TileBatch((h, w), src.geom, band.rects, whole=whole))  # [B, O, h, w]
        if whole and all(r.full for r in band.rects):
            src.out[:, :, r0.y0 : r0.y1, r0.x0 : r0.x1].copy_(res)
            continue
        for b, r in enumerate(band.rects):
            s = sources[r.src]
            y = res[b, :, : r.y1 - r.y0, : r.x1 - r.x0]  # [O, rh, rw]: drop the rounding-up
            dst = s.out[r.n, :, r.y0 : r.y1, r.x0 : r.x1]  # [O, rh, rw] view
            if r.full:
                dst.copy_(y)
                continue
            keep = s.mask[r.n, r.y0 : r.y1, r.x0 : r.x1] if r.local is None else r.local  # [rh, rw] bool
            dst.copy_(torch.where(keep, y, dst))


def run_tiles_op(
    input: torch.Tensor,
    geom: ConvGeometry,
    mask: torch.Tensor | RoiRects | None,
    out: torch.Tensor,
    compute: TilesCompute,
    position_bytes: int,
) -> None:
    """The tiles engine for one batch, as the window ops use it: plan the bands, run them.

    Where the mask is so scattered that its rectangles would cover more than ``SPARSE_RATIO`` times its positions,
    the in-mask windows are gathered instead (chunked, as the windows engine does) and handed to the same compute
    as window rows (see :func:`run_window_rows`).

    Args:
        input (Tensor[N, C, H, W]), geom: the input and its resolved geometry.
        mask (bool Tensor[N, H_out, W_out], RoiRects or None): checked ROI; None is everywhere.
        out (Tensor[N, O, H_out, W_out]): written inside the mask only.
        compute: see the module docstring.
        position_bytes: working memory one output position of one image costs the compute.
    """
    N = input.shape[0]
    source = TileSource(input, out, mask, geom)
    planned = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask  # numpy, RoiRects or None
    budget = chunk_bytes(input.device)
    bands = plan_bands([planned], [(N, *geom.out_hw)], position_bytes, budget, tile_size(geom.out_hw))
    if planned is not None:
        count = planned.count if isinstance(planned, RoiRects) else int(planned.sum())
        area = sum(len(b.rects) * b.shape[0] * b.shape[1] for b in bands)
        if area > SPARSE_RATIO * count:
            run_window_rows(source, compute, position_bytes)
            return
    run_tiles([source], bands, compute)


def run_window_rows(source: TileSource, compute: TilesCompute, position_bytes: int) -> None:
    """Scattered masks: gather the in-mask windows chunk by chunk and compute them as (1 × P) window rows.

    P gathered windows laid out side by side (window j at columns j·kw …) are a (1 × P) band of stride (1, kw)
    under the geometry :func:`window_row_geometry` gives, so a tiles compute serves them unchanged.
    """
    input, geom = source.input, source.geom
    (kh, kw), K = geom.kernel, geom.window
    chunk = chunk_count(position_bytes + 2 * input.shape[1] * K * input.element_size(), input.device)
    for n in range(input.shape[0]):
        plane = as_plane(input[n])  # [C, H*W]
        oy_all, ox_all = image_positions(source.mask, n, geom.out_hw, input.device)  # [P_n]
        for s in range(0, oy_all.shape[0], chunk):
            oy, ox = oy_all[s : s + chunk], ox_all[s : s + chunk]
            p = oy.shape[0]
            idx, valid = window_index(oy, ox, geom)  # [K, p]
            cols = gather_windows(plane, idx, valid)  # [C, K, p]
            patch = cols.view(-1, kh, kw, p).permute(0, 1, 3, 2).reshape(1, -1, kh, p * kw)  # [1, C, kh, p*kw]
            batch = TileBatch((1, p), window_row_geometry(geom, p), (Rect(n, 0, 1, 0, p, True),), (oy, ox))
            res = compute(patch, batch)  # [1, O, 1, p]
            scatter_windows(source.out[n], oy, ox, res[0, :, 0])  # out[n][:, oy, ox] = [O, p]


def window_row_geometry(geom: ConvGeometry, p: int) -> ConvGeometry:
    """The geometry under which p gathered windows laid out side by side are a (1 × p) band."""
    kh, kw = geom.kernel
    return ConvGeometry((kh, p * kw), (kh, kw), (1, kw), (0, 0, 0, 0), (1, 1), (1, p), geom.padding_mode)


def shifted_views(patch: torch.Tensor, geom: ConvGeometry, h: int, w: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The kh·kw shifted (strided) views of a band's input patch: (m, q, Tensor[B, C, h, w]) per kernel tap.

    The view for tap (m, q) holds, at output position (i, j) of the band, the input value under that tap.
    No data is copied.
    """
    return tap_views(patch, geom.kernel, geom.stride, geom.dilation, h, w)


def tap_views(
    patch: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int], h: int, w: int
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """:func:`shifted_views` from the geometry's parts (what a compiled compute takes: plain ints, no object)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    for m in range(kh):
        for q in range(kw):
            r0, c0 = m * dh, q * dw
            yield m, q, patch[..., r0 : r0 + (h - 1) * sh + 1 : sh, c0 : c0 + (w - 1) * sw + 1 : sw]  # [B, C, h, w]
