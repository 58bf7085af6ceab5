"""Mask → indices and tiles, and the cost model that picks a strategy.

A :class:`RoIPlan` holds everything about a ROI convolution that does not depend on the tensor data: the resolved
geometry, the in-mask output positions of each image (for the "windows" strategy), the active tiles merged into
rectangles (for "tiles"), and the strategy "auto" chose. Build it once with :func:`plan_roi` and pass it to
``roi_conv2d(..., plan=plan)`` to skip index building on repeated calls (video frames, several layers).

The cost model
--------------
Each strategy's time is estimated from the mask statistics with per-device throughput constants:

* dense   = all FLOPs at conv throughput + a masked write of the whole output (none when the mask is full)
* windows = gathered elements (P·C·kh·kw) at gather throughput + P's FLOPs at matmul throughput + scattered
  elements (P·O) at scatter throughput
* tiles   = FLOPs of the active rectangles (their halo and the unmasked positions inside them included) at conv
  throughput + a fixed cost per conv call + the copies in and out

"auto" takes the cheapest. Dense is the fallback whenever the mask covers nearly everything, so "auto" is never
much slower than F.conv2d. The CPU constants were fitted on a 2-core x86 CPU; the CUDA constants are estimates
that no GPU run has checked yet. Only their ratios matter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .checks import check_groups
from .engine import (
    Band,
    Rect,
    RoiRects,
    check_roi,
    chunk_bytes,
    dense_roi,
    image_positions,
    plan_bands,
    single_thread,
    tile_size,
)
from .geometry import ConvGeometry, conv_geometry
from .roi import RectRoi

__all__ = [
    "STRATEGIES",
    "RoIPlan",
    "RoiPlan",
    "device_costs",
    "estimate_costs",
    "plan_roi",
    "tile_position_bytes",
    "window_bytes",
]

STRATEGIES = ("auto", "windows", "tiles", "dense", "fused")


@dataclass(frozen=True)
class _Costs:
    """Throughput constants of one device type (seconds per FLOP / per element / per call)."""

    conv_flop: float
    mm_flop: float
    gather_elem: float
    scatter_elem: float
    copy_elem: float
    where_elem: float
    call: float


_CPU = _Costs(
    conv_flop=1 / 38e9,
    mm_flop=1 / 70e9,
    gather_elem=3e-9,
    scatter_elem=3e-9,
    copy_elem=0.25e-9,
    where_elem=1.0e-9,
    call=30e-6,
)
_CUDA = _Costs(
    conv_flop=1 / 30e12,
    mm_flop=1 / 40e12,
    gather_elem=2e-12,
    scatter_elem=4e-12,
    copy_elem=1e-12,
    where_elem=2e-12,
    call=15e-6,
)


def device_costs(device: torch.device | str) -> _Costs:
    """The cost model's throughput constants (seconds per FLOP, per copied element, per call) for ``device``."""
    return _CUDA if torch.device(device).type == "cuda" else _CPU


def window_bytes(C: int, O: int, K: int, element_size: int) -> int:
    """Working memory of one window of roi_conv2d's windows engine: its gathered values, result and indices."""
    return (C * K + 2 * O) * element_size + 3 * K * 8


def tile_position_bytes(C: int, O: int, stride: Sequence[int]) -> int:
    """Working memory of one output position of the tiles' conv: its input patch (halo aside) and output."""
    return (C * stride[0] * stride[1] + 2 * O) * 4


@dataclass
class RoIPlan:
    """Cached geometry, indices and strategy of a ROI convolution. Build it with :func:`plan_roi`.

    Attributes:
        input_shape: (N, C, H, W) the plan is for.
        weight_shape: (O, C/groups, kh, kw).
        geometry: resolved stride/padding/dilation and output size.
        mask: the checked ROI: a bool Tensor[N, H_out, W_out] on the plan's device, the planned boxes of a
            :class:`convcore.RectRoi` (:class:`convcore.engine.RoiRects`), or None for "everywhere";
            :meth:`dense_mask` gives it as a tensor in either case.
        strategy: what "auto" picked (or what was forced); one of "windows", "tiles", "dense".
        coverage: fraction of output positions inside the mask.
        estimates: the cost model's estimated seconds per strategy.

    Example:
        >>> plan = plan_roi(torch.ones(8, 8, dtype=torch.bool), (1, 2, 8, 8), (3, 2, 3, 3), padding=1)
        >>> plan.strategy, plan.coverage, plan.mask is None  # a full mask: the dense conv
        ('dense', 1.0, True)
    """

    input_shape: tuple[int, int, int, int]
    weight_shape: tuple[int, int, int, int]
    geometry: ConvGeometry
    groups: int
    mask: torch.Tensor | RoiRects | None
    device: torch.device
    coverage: float
    strategy: str = "dense"
    estimates: dict[str, float] = field(default_factory=dict)
    tile: int = 32
    _positions: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)
    _bands: list[Band] | None = field(default=None, repr=False)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.input_shape[0], self.weight_shape[0], *self.geometry.out_hw)

    @property
    def num_windows(self) -> int:
        """Output positions computed per output channel (the in-mask positions)."""
        return round(self.coverage * self.input_shape[0] * self.geometry.out_hw[0] * self.geometry.out_hw[1])

    def positions(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image, the in-mask output positions as (oy, ox) long tensors (Tensor[P_n] each), raster order."""
        if self._positions is None:
            N = self.input_shape[0]
            if self.mask is None or isinstance(self.mask, RoiRects):  # the same positions for every image
                self._positions = [image_positions(self.mask, 0, self.geometry.out_hw, self.device)] * N
            else:
                self._positions = [image_positions(self.mask, n, self.geometry.out_hw, self.device) for n in range(N)]
        return self._positions

    def dense_mask(self) -> torch.Tensor | None:
        """The ROI as a bool Tensor[N, H_out, W_out] (built from the boxes of a RectRoi), or None for everywhere."""
        return dense_roi(self.mask)

    def bands(self) -> list[Band]:
        """The tiles engine's conv calls: the mask's rectangles, cut and batched under the chunk budget."""
        if self._bands is None:
            N = self.input_shape[0]
            mask = self.mask.detach().cpu().numpy() if isinstance(self.mask, torch.Tensor) else self.mask
            budget = chunk_bytes(self.device, blocked=True)
            self._bands = plan_bands([mask], [(N, *self.geometry.out_hw)], self.position_bytes, budget, self.tile)
        return self._bands

    def rects(self) -> list[Rect]:
        """Every rectangle of :meth:`bands`: disjoint, covering the ROI, each shrunk to the ROI's bounding box in it."""
        return [r for band in self.bands() for r in band.rects]

    @property
    def position_bytes(self) -> int:
        return tile_position_bytes(self.input_shape[1], self.weight_shape[0], self.geometry.stride)

    def matches(
        self, input_shape: Sequence[int], weight_shape: Sequence[int], geometry: ConvGeometry, groups: int
    ) -> bool:
        return (
            tuple(input_shape) == self.input_shape
            and tuple(weight_shape) == self.weight_shape
            and geometry == self.geometry
            and groups == self.groups
        )


RoiPlan = RoIPlan  # the name before RoIPlan matched RoIConv2d's spelling; kept working


def plan_roi(
    mask: torch.Tensor | RectRoi | None,
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    device: torch.device | str | None = None,
    padding_mode: str = "zeros",
    strategy: str = "auto",
    fresh_output: bool = True,
) -> RoIPlan:
    """Build a :class:`RoIPlan` for convolving inputs of ``input_shape`` with weights of ``weight_shape``.

    Args:
        mask (Tensor[N, H_out, W_out] or Tensor[H_out, W_out], bool, or a :class:`convcore.RectRoi`): the ROI over
            output positions, or None.
        input_shape: (N, C, H, W).
        weight_shape: (O, C/groups, kh, kw).
        stride, padding, dilation, groups, padding_mode: as in ``nn.Conv2d``.
        device: where the indices live (default: the mask's device, else CPU).
        strategy: "auto" (the cost model picks), or force "windows" | "tiles" | "dense".
        fresh_output: whether the call allocates its output (True) or writes into ``out=`` (False); only the
            cost model uses it.

    Example:
        >>> mask = torch.zeros(64, 64, dtype=torch.bool); mask[10:20, 30:50] = True
        >>> plan = plan_roi(mask, (1, 4, 64, 64), (4, 4, 3, 3), padding=1)
        >>> plan.strategy in ("windows", "tiles", "dense"), round(plan.coverage, 4)
        (True, 0.0488)
    """
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (N, C, H, W), got {tuple(input_shape)}")
    if len(weight_shape) != 4:
        raise ValueError(f"weight_shape must be (O, C/groups, kh, kw), got {tuple(weight_shape)}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    N, C, H, W = (int(s) for s in input_shape)
    O, Cg, kh, kw = (int(s) for s in weight_shape)
    check_groups(C, O, Cg, groups)
    geom = conv_geometry((H, W), (kh, kw), stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode)
    if device is None:
        device = mask.device if isinstance(mask, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    with single_thread(device.type == "cpu"):  # mask statistics: small work, not worth a parallel region each
        mask, covered = check_roi(mask, N, geom.out_hw, device)
        total = N * geom.out_hw[0] * geom.out_hw[1]
        if covered < 0:
            covered = total
        plan = RoIPlan((N, C, H, W), (O, Cg, kh, kw), geom, groups, mask, device, covered / max(total, 1))
        plan.tile = tile_size(geom.out_hw)
        if strategy == "auto":
            plan.estimates = estimate_costs(plan, fresh_output=fresh_output)
            plan.strategy = min(plan.estimates, key=plan.estimates.get)
        else:
            plan.strategy = strategy
    return plan


def estimate_costs(plan: RoIPlan, *, fresh_output: bool = True) -> dict[str, float]:
    """Estimated seconds of each strategy for this plan (see the module docstring)."""
    k = device_costs(plan.device)
    N, C, H, W = plan.input_shape
    O, Cg, kh, kw = plan.weight_shape
    H_out, W_out = plan.geometry.out_hw
    K = kh * kw
    flop_per_pos = 2.0 * O * Cg * K
    total = N * H_out * W_out
    P = plan.num_windows
    write_all = (
        0.0
        if (plan.mask is None and fresh_output)
        else total * O * (k.where_elem if plan.mask is not None else k.copy_elem)
    )
    dense = total * flop_per_pos * k.conv_flop + write_all + k.call
    if plan.mask is None:
        return {"dense": dense}
    chunks = math.ceil(P * window_bytes(C, O, K, 4) / chunk_bytes(plan.device)) + N
    windows = P * C * K * k.gather_elem + P * flop_per_pos * k.mm_flop + P * O * k.scatter_elem + chunks * k.call * 4
    return {"dense": dense, "windows": windows, "tiles": _tiles_cost(plan, k, flop_per_pos)}


def _tiles_cost(plan: RoIPlan, k: _Costs, flop_per_pos: float) -> float:
    O, C = plan.weight_shape[0], plan.input_shape[1]
    H, W = plan.geometry.in_hw
    cost = 0.0
    for band in plan.bands():
        cost += k.call * (1 + 2 * len(band.rects))
        for r in band.rects:
            h, w = r.shape
            iy0, iy1, ix0, ix1 = plan.geometry.input_span(r.y0, r.y1, r.x0, r.x1)
            border = iy0 < 0 or ix0 < 0 or iy1 > H or ix1 > W
            cost += h * w * flop_per_pos * k.conv_flop
            cost += (iy1 - iy0) * (ix1 - ix0) * C * k.copy_elem * (3 if border else 1)
            cost += h * w * O * (k.copy_elem if r.full else k.where_elem)
    return cost
