"""plan_roi: rectangles cover the mask exactly, bands respect the budget, and the cost model's choices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convcore import plan_roi
from convcore.bench.measure import box_mask, pixel_mask
from convcore.engine import plan_bands, rects_from_mask


@pytest.mark.parametrize("tile", [4, 16, 32])
@pytest.mark.parametrize("seed", range(3))
def test_rects_cover_the_mask_exactly_and_are_disjoint(tile, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((2, 70, 90)) < 0.02
    mask[0, 10:40, 5:60] = True
    mask[1, 50:, 80:] = True
    covered = np.zeros(mask.shape, dtype=np.int32)
    bands = plan_bands([mask], [mask.shape], position_bytes=1, budget=7 * 90, tile=tile)
    assert sum(len(b.rects) for b in bands) >= len(rects_from_mask(mask, tile))  # tall rectangles are cut
    for band in bands:
        assert sum(r.shape[0] * r.shape[1] for r in band.rects) <= 7 * 90 or len(band.rects) == 1
    for r in (r for b in bands for r in b.rects):
        assert 0 < r.y1 - r.y0 and ((r.y1 - r.y0) * (r.x1 - r.x0) <= 7 * 90 or r.y1 - r.y0 == 1)
        covered[r.n, r.y0 : r.y1, r.x0 : r.x1] += 1
        assert r.full == bool(mask[r.n, r.y0 : r.y1, r.x0 : r.x1].all())
    assert covered.max() <= 1  # disjoint
    assert not (mask & (covered == 0)).any()  # every masked position is in a rectangle


def test_empty_mask_has_no_rects_and_no_windows():
    plan = plan_roi(torch.zeros(1, 30, 30, dtype=torch.bool), (1, 2, 32, 32), (3, 2, 3, 3))
    assert plan.rects() == [] and plan.num_windows == 0 and plan.positions()[0][0].numel() == 0


@pytest.mark.parametrize(
    "mask_fn, expected",
    [
        (lambda: box_mask(512, 0.01, torch.device("cpu")), "tiles"),
        (lambda: box_mask(512, 0.10, torch.device("cpu")), "tiles"),
        (lambda: pixel_mask(512, 0.005, torch.device("cpu")), "windows"),
        (lambda: box_mask(512, 1.0, torch.device("cpu")), "dense"),
        (lambda: pixel_mask(512, 0.9, torch.device("cpu")), "dense"),
    ],
)
def test_cost_model_choices(mask_fn, expected):
    plan = plan_roi(mask_fn(), (1, 16, 512, 512), (16, 16, 3, 3), padding=1)
    assert plan.strategy == expected, plan.estimates
