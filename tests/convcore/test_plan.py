"""plan_roi: rectangles cover the mask exactly, the cost model's choices, and the bench's ROI generators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convcore import plan_roi
from convcore.bench import box_mask, format_report, pixel_mask, run_roi
from convcore.plan import _rects_from_mask


@pytest.mark.parametrize("tile", [4, 16, 32])
@pytest.mark.parametrize("seed", range(3))
def test_rects_cover_the_mask_exactly_and_are_disjoint(tile, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((2, 70, 90)) < 0.02
    mask[0, 10:40, 5:60] = True
    mask[1, 50:, 80:] = True
    covered = np.zeros(mask.shape, dtype=np.int32)
    for r in _rects_from_mask(mask, tile, max_rows=7):
        assert 0 < r.y1 - r.y0 <= 7
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


@pytest.mark.parametrize("coverage", [0.01, 0.1, 0.3, 0.6])
def test_bench_masks_have_the_requested_coverage(coverage):
    assert box_mask(1024, coverage, torch.device("cpu")).float().mean().item() == pytest.approx(coverage, rel=0.02)
    assert pixel_mask(1024, coverage, torch.device("cpu")).float().mean().item() == pytest.approx(coverage, rel=0.05)


def test_bench_runs_and_reports_every_case():
    report = run_roi(torch.device("cpu"), size=64, channels=4, rounds=1)
    cases = {r["case"] for r in report["rows"]}
    assert cases == {"box 1%", "box 10%", "box 30%", "box 60%", "box 100%", "pixels 1%"}
    methods = {r["method"] for r in report["rows"] if r["case"] == "box 10%"}
    assert {"dense", "unfold recipe", "windows out=", "tiles", "auto out="} <= methods
    assert all(r["ms"] > 0 and r["speedup_vs_dense"] > 0 for r in report["rows"])
    text = format_report(report, [])
    assert "| box 60% | auto out= |" in text
