"""The torch engine takes the ROI as the regions module drew it (rectangles with local masks, a convcore.RectRoi):
the same pixels as the ROI rasterized into a mask, and no full-size mask built for a depthwise filter."""

from __future__ import annotations

import numpy as np
import pytest

import convcore
from service.imaging import pipeline
from service.imaging.regions import pieces_mask
from service.imaging.spec import Spec
from service.imaging.torch_engine import run_batch
from service.imaging.work import Work, finish

ROI = {
    "boxes": [[5, 3, 60, 20], [50, 10, 90, 70], [118, 60, 130, 77]],  # overlapping, one at the corner
    "ellipses": [[40, 45, 25, 12, 30.0]],
    "polygons": [[[70, 5], [110, 30], [80, 60], [95, 20]]],  # self-crossing
    "circles": [[20, 70, 9]],
}
KERNEL_4D = np.random.default_rng(1).normal(size=(3, 3, 3, 3)).round(3).tolist()
FILTERS = [
    {"name": "gaussian", "ksize": 7},
    {"name": "sobel"},
    {"name": "dilate", "ksize": 5},
    {"name": "adaptive_gaussian"},
    {"name": "kernel", "weights": KERNEL_4D},
]


def prepared(filt: dict, bands: int, invert: bool = False, roi: dict = ROI, size=(77, 130)):
    pixels = np.random.default_rng(2).integers(0, 256, (*size, 3), dtype=np.uint8)
    spec = Spec.model_validate({"filter": filt, "roi": {**roi, "invert": invert}, "outside": "keep"})
    return pipeline.plan(spec, pixels, None, 10**9, prefer_torch=True, bands=bands)


@pytest.mark.parametrize("bands", [1, 3])
@pytest.mark.parametrize("filt", FILTERS, ids=lambda f: f["name"])
def test_pieces_give_the_pixels_of_the_rasterized_mask(filt, bands):
    for invert in (False, True):
        prep = prepared(filt, bands, invert)
        work = prep.work
        assert prep.engine == "torch" and work.mask is None and work.pieces is not None
        h, w = work.pixels.shape[:2]
        masked = Work(work.pixels, pieces_mask(work.pieces, h, w), work.outside, work.depth, bands=work.bands)
        ours, theirs = run_batch(prep.op, [work], "cpu")[0], run_batch(prep.op, [masked], "cpu")[0]
        assert np.array_equal(ours, theirs)  # the float results, before rounding
        assert np.array_equal(finish(ours, work), finish(theirs, masked))


@pytest.mark.parametrize("bands", [1, 3])
def test_a_depthwise_filter_builds_no_full_size_mask(bands, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a full-size mask was built")

    faces = {"ellipses": [[30, 40, 20, 28, 0.0]], "boxes": [[850, 550, 890, 590]]}  # far apart: a sparse window
    prep = prepared({"name": "gaussian", "ksize": 5}, bands, roi=faces, size=(600, 900))
    monkeypatch.setattr(convcore.RectRoi, "to_mask", refuse)
    monkeypatch.setattr(convcore.engine.RoiRects, "dense", refuse)
    run_batch(prep.op, [prep.work], "cpu")
