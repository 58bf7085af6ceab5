"""RectRoi — a ROI handed over as boxes with local masks: the same answers as nn.Conv2d inside the boxes' union and
as the dense-mask form of the same ROI, nothing written outside, and no full-size mask built on the main paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracles import GEOMETRIES, geometry_id
from oracles import conv as oracle_conv
from support import patch_run_compiled

import convcore
import convcore.checks
import convcore.engine.rects
import convcore.engine.tiles
import convcore.plan
from convcore import RectRoi, roi_conv2d, roi_conv2d_batch, window_op2d


def union(boxes, masks, hw) -> torch.Tensor:
    """The ROI from its definition, pixel by pixel: True where some box's local mask (or the box) holds."""
    H, W = hw
    out = np.zeros((H, W), dtype=bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        local = None if masks is None or masks[i] is None else masks[i].cpu().numpy()
        for y in range(y0, y1):
            for x in range(x0, x1):
                if local is None or local[y - y0, x - x0]:
                    out[y, x] = True
    return torch.from_numpy(out)


def sample_roi(hw, seed: int = 0, device="cpu") -> tuple[list, list]:
    """Boxes at the borders, overlapping each other, with and without local masks, one of them empty."""
    H, W = hw
    g = torch.Generator().manual_seed(seed)
    boxes = [
        (0, 0, W // 3, H // 2),  # top-left corner
        (W // 4, H // 4, W - 1, H // 2 + 2),  # overlaps the first
        (W - 5, H - 4, W, H),  # bottom-right corner
        (1, H - 3, W // 2, H),  # bottom border
        (W // 2, 1, W // 2, 4),  # empty
        (W // 5, H // 5, W // 2, H - 2),  # overlaps the first two and the bottom one
    ]
    masks = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        partial = i in (1, 2, 5)
        masks.append((torch.rand(y1 - y0, x1 - x0, generator=g) < 0.5).to(device) if partial else None)
    return boxes, masks


@pytest.mark.parametrize("strategy", ["auto", "windows", "tiles", "dense"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=geometry_id)
def test_roi_conv2d_equals_the_whole_image_conv_inside_the_union(geometry, strategy, device, assert_close):
    kernel, stride, padding, dilation = geometry
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    torch.manual_seed(1)
    x = torch.randn(2, 4, 29, 37, device=device)  # odd sizes
    w, b = torch.randn(6, 2, kh, kw, device=device), torch.randn(6, device=device)
    ref = oracle_conv(x, w, b, stride, padding, dilation, groups=2)  # [N, O, H_out, W_out], the whole image
    boxes, masks = sample_roi(ref.shape[2:], device=device)
    roi = RectRoi(boxes, masks)
    keep = union(boxes, masks, ref.shape[2:]).to(device)  # [H_out, W_out]
    out = torch.full_like(ref, 7.0)
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=2, strategy=strategy)
    y = roi_conv2d(x, w, b, roi, out=out, **args)
    assert y is out
    assert_close(y, torch.where(keep, ref, torch.full_like(ref, 7.0)))
    assert torch.equal(y[:, :, ~keep], torch.full_like(y[:, :, ~keep], 7.0))  # untouched outside
    fresh = roi_conv2d(x, w, b, roi, **args)
    assert torch.equal(fresh, roi_conv2d(x, w, b, keep, **args))  # the dense-mask form of the same ROI
    assert not fresh[:, :, ~keep].any()


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular", "symmetric"])
def test_padding_modes_at_the_borders(padding_mode, device, assert_close):
    torch.manual_seed(2)
    x, w = torch.randn(1, 3, 21, 18, device=device), torch.randn(5, 3, 5, 3, device=device)
    ref = oracle_conv(x, w, None, 1, "same", 1, padding_mode=padding_mode)
    boxes, masks = sample_roi((21, 18), seed=3, device=device)
    keep = union(boxes, masks, (21, 18)).to(device)
    y = roi_conv2d(x, w, None, RectRoi(boxes, masks), padding="same", padding_mode=padding_mode)
    assert_close(y, ref * keep)


def test_gradients_equal_the_dense_mask_form(device):
    torch.manual_seed(4)
    x = torch.randn(2, 3, 23, 19, device=device, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, device=device, dtype=torch.float64)
    boxes, masks = sample_roi((23, 19), seed=5, device=device)
    keep = union(boxes, masks, (23, 19)).to(device)
    g = torch.randn(2, 4, 23, 19, device=device, dtype=torch.float64)
    grads = []
    for roi in (RectRoi(boxes, masks), keep):
        for strategy in ("windows", "tiles"):
            xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
            (roi_conv2d(xs, ws, None, roi, padding=1, strategy=strategy) * g).sum().backward()
            grads.append((xs.grad, ws.grad))
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    (F.conv2d(xs, ws, padding=1) * keep * g).sum().backward()  # the oracle: the masked dense convolution
    for gx, gw in grads:
        torch.testing.assert_close(gx, xs.grad)
        torch.testing.assert_close(gw, ws.grad)


def test_batch_takes_rect_rois_beside_masks(device, assert_close):
    torch.manual_seed(6)
    w, b = torch.randn(3, 3, 3, 3, device=device), torch.randn(3, device=device)
    images = [torch.randn(3, 31, 40, device=device), torch.randn(3, 17, 9, device=device)]
    boxes, masks = sample_roi((31, 40), seed=7, device=device)
    rois = [RectRoi(boxes, masks), RectRoi([(0, 0, 9, 17)])]  # the second covers its whole image
    ys = roi_conv2d_batch(images, w, b, rois, padding=1)
    for img, roi, y, hw in zip(images, rois, ys, [(31, 40), (17, 9)]):
        keep = union(roi.boxes, roi.masks, hw).to(device)
        assert_close(y, F.conv2d(img[None], w, b, padding=1)[0] * keep)
    dense = roi_conv2d_batch(images, w, b, [union(boxes, masks, (31, 40)).to(device), None], padding=1)
    assert all(torch.equal(a, c) for a, c in zip(ys, dense))


def window_ops(x: torch.Tensor):
    """Every op that takes mask=, as fn(mask, compile) (weights drawn once)."""
    g = torch.Generator().manual_seed(8)
    w = torch.randn(4, 2, 3, 3, generator=g).to(x.device)  # x has 4 channels: 2 groups of 2
    w1 = torch.randn(4, 4, 3, 3, generator=g).to(x.device)
    se = torch.randn(4, 1, 3, 3, generator=g).to(x.device)
    sigma = (torch.rand(x.shape[0], 1, *x.shape[2:], generator=g) + 0.5).to(x.device)
    kernels = torch.randn(x.shape[0], 3, 3, *x.shape[2:], generator=g).to(x.device)  # per location, padding 1
    per_patch = torch.randn(3, x.shape[1] * 9, generator=g).to(x.device)
    maxabs = lambda a, v: (a - v).abs()  # noqa: E731
    prod = lambda a, v: a * v  # noqa: E731
    return {
        "window_op2d": lambda m, c: window_op2d(x, w, maxabs, reduce="max", mask=m, padding=1, groups=2, compile=c),
        "window_op2d keep_window": lambda m, c: window_op2d(x, w1, prod, keep_window=True, mask=m, compile=c),
        "morph_conv2d": lambda m, c: convcore.morph_conv2d(x, se, mask=m, padding=1, groups=4, compile=c),
        "distance_conv2d p=1": lambda m, c: convcore.distance_conv2d(x, w, mask=m, padding=1, groups=2, compile=c),
        "distance_conv2d p=2": lambda m, c: convcore.distance_conv2d(x, w1, p=2, mask=m, stride=2, compile=c),
        "quadratic_conv2d": lambda m, c: convcore.quadratic_conv2d(x, w1, -w1, mask=m, padding=1),
        "offset_conv2d": lambda m, c: convcore.offset_conv2d(x, w1, torch.ones(1, device=x.device), mask=m, padding=1),
        "adaptive_conv2d": lambda m, c: convcore.adaptive_conv2d(x, kernels, mask=m, padding=1, compile=c),
        "dynamic_conv2d": lambda m, c: convcore.dynamic_conv2d(
            x, lambda p: per_patch.expand(p.shape[0], *per_patch.shape), 3, 3, mask=m, padding=1, compile=c
        ),
        "adaptive_gaussian_blur2d": lambda m, c: convcore.adaptive_gaussian_blur2d(x, sigma, 5, mask=m, compile=c),
    }


@pytest.mark.parametrize("route", ["eager", "compiled"])
@pytest.mark.parametrize("op", list(window_ops(torch.zeros(1, 4, 4, 4))))
def test_window_ops_equal_their_dense_mask_form(op, route, device, monkeypatch):
    if route == "compiled":  # the compiled route's engine, its computes run uncompiled
        patch_run_compiled(monkeypatch, lambda name, core, key, args, dynamic=(): core(*args))
    torch.manual_seed(9)
    x = torch.randn(2, 4, 27, 22, device=device)
    fn = window_ops(x)[op]
    full = fn(None, False)  # [N, O, H_out, W_out]
    boxes, masks = sample_roi(full.shape[-2:], seed=10, device=device)
    keep = union(boxes, masks, full.shape[-2:]).to(device)
    compile = route == "compiled"
    y = fn(RectRoi(boxes, masks), compile)
    torch.testing.assert_close(y, fn(keep, compile), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, torch.where(keep, full, torch.zeros_like(full)), atol=1e-5, rtol=1e-5)


def test_window_op2d_gradient_equals_the_dense_mask_form(device):
    x = torch.randn(1, 3, 19, 21, device=device, dtype=torch.float64)
    w = torch.randn(2, 3, 3, 3, device=device, dtype=torch.float64)
    boxes, masks = sample_roi((19, 21), seed=11, device=device)
    grads = []
    for roi in (RectRoi(boxes, masks), union(boxes, masks, (19, 21)).to(device)):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        window_op2d(xs, ws, lambda a, v: -(a - v).abs(), mask=roi, padding=1, compile=False).square().sum().backward()
        grads.append((xs.grad, ws.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_a_few_boxes_in_a_4k_image_build_no_full_size_mask(monkeypatch):
    """The cost follows the boxes: no dense mask is built or scanned, the planner reduces only the boxes' masks."""
    planned_shapes = []
    reduce = convcore.engine.rects.rects_from_mask

    def recording(mask, tile):
        planned_shapes.append(mask.shape)
        return reduce(mask, tile)

    def refuse(*args, **kwargs):
        raise AssertionError("a full-size mask was built")

    monkeypatch.setattr(convcore.engine.rects, "rects_from_mask", recording)
    monkeypatch.setattr(convcore.engine.rects.RoiRects, "dense", refuse)
    monkeypatch.setattr(convcore.RectRoi, "to_mask", refuse)
    monkeypatch.setattr(convcore.checks, "check_mask", refuse)
    monkeypatch.setattr(convcore.engine.rects, "check_mask", refuse)
    x = torch.randn(1, 3, 2160, 3840)
    w = torch.randn(3, 1, 5, 5)
    face = torch.ones(60, 50, dtype=torch.bool).tril()  # a shape drawn inside its box
    roi = RectRoi([(100, 200, 150, 260), (3000, 1500, 3064, 1564), (3790, 2100, 3840, 2160)], [face, None, None])
    plan = convcore.plan_roi(roi, x.shape, w.shape, padding=2, groups=3)
    assert plan.strategy in ("windows", "tiles") and plan.num_windows == int(face.sum()) + 64 * 64 + 50 * 60
    out = torch.zeros(1, 3, 2160, 3840)
    for strategy in ("windows", "tiles"):
        roi_conv2d(x, w, None, roi, padding=2, groups=3, strategy=strategy, out=out)
    with torch.no_grad():
        window_op2d(x, w, lambda a, v: a * v, mask=roi, padding=2, groups=3, compile=False)
        convcore.morph_conv2d(x, w, mask=roi, padding=2, groups=3, compile=False)
    assert planned_shapes and all(s == (1, 60, 50) for s in planned_shapes)  # only the face's own mask
    ref = F.conv2d(x[:, :, 190:270, 90:160], w, padding=2, groups=3)[:, :, 10:70, 10:60]  # the first box
    torch.testing.assert_close(out[:, :, 200:260, 100:150], ref * face, atol=1e-5, rtol=1e-5)


def test_a_plan_is_built_once_and_checked_against_the_roi_it_is_given(device):
    x, w = torch.randn(1, 2, 20, 20, device=device), torch.randn(2, 2, 3, 3, device=device)
    roi = RectRoi([(2, 3, 9, 12)], [torch.eye(9, 7, dtype=torch.bool, device=device)])
    plan = convcore.plan_roi(roi, x.shape, w.shape, padding=1, device=device)
    y = roi_conv2d(x, w, None, roi, padding=1, plan=plan)
    assert torch.equal(y, roi_conv2d(x, w, None, plan=plan, padding=1))
    assert torch.equal(plan.dense_mask()[0], union(roi.boxes, roi.masks, (20, 20)).to(device))
    with pytest.raises(ValueError, match="mask differs from the mask the plan was built for"):
        roi_conv2d(x, w, None, RectRoi([(2, 3, 9, 12)]), padding=1, plan=plan)
    whole = convcore.plan_roi(RectRoi([(0, 0, 20, 10), (0, 10, 20, 20)]), x.shape, w.shape, padding=1)
    assert whole.mask is None and whole.strategy == "dense"  # boxes that cover everything: the dense conv
    layer = convcore.RoIConv2d(2, 2, 3, padding=1).to(device)
    torch.testing.assert_close(layer(x, roi), layer(x, plan.dense_mask()))


def test_no_boxes_writes_nothing(device):
    x, w = torch.randn(1, 2, 9, 9, device=device), torch.randn(2, 2, 3, 3, device=device)
    out = torch.full((1, 2, 9, 9), 3.0, device=device)
    assert torch.equal(roi_conv2d(x, w, None, RectRoi([]), padding=1, out=out), torch.full_like(out, 3.0))
    empty = RectRoi([(1, 1, 4, 4)], [torch.zeros(3, 3, dtype=torch.bool)])
    assert not window_op2d(x, w, lambda a, v: a * v, mask=empty, padding=1).any()


@pytest.mark.parametrize(
    "boxes, masks, error, match",
    [
        ([(0, 0, 3)], None, ValueError, r"boxes\[0\] must be 4 ints"),
        ([(0, 0, 3, 2.5)], None, TypeError, r"boxes\[0\] must be 4 ints"),
        ([(0, 0, 3, 3), (-1, 0, 3, 3)], None, ValueError, r"boxes\[1\] .* starts outside"),
        ([(4, 0, 3, 3)], None, ValueError, r"boxes\[0\] .* negative size"),
        (torch.zeros(2, 4), None, TypeError, "must hold integers"),
        (torch.zeros(2, 3, dtype=torch.long), None, ValueError, r"Tensor\[K, 4\]"),
        ([(0, 0, 3, 2)], [torch.ones(3, 2, dtype=torch.bool)], ValueError, r"masks\[0\] must have the shape"),
        ([(0, 0, 3, 2)], [torch.ones(2, 3)], TypeError, r"masks\[0\] must be a bool"),
        ([(0, 0, 3, 2)], [None, None], ValueError, "one entry per box"),
        ("boxes", None, TypeError, "boxes must be"),
    ],
)
def test_bad_boxes_and_masks_name_the_field(boxes, masks, error, match):
    with pytest.raises(error, match=match):
        RectRoi(boxes, masks)


def test_a_box_past_the_output_is_refused_not_clipped():
    x, w = torch.randn(1, 2, 10, 10), torch.randn(2, 2, 3, 3)
    roi = RectRoi([(0, 0, 4, 4), (5, 5, 11, 8)])
    with pytest.raises(ValueError, match=r"mask\.boxes\[1\] .* reaches past the output \(H_out, W_out\) = \(10, 10\)"):
        roi_conv2d(x, w, None, roi, padding=1)
    with pytest.raises(ValueError, match=r"mask\.boxes\[1\]"):
        window_op2d(x, w, lambda a, v: a * v, mask=roi)  # valid padding: an 8x8 output
    assert RectRoi(torch.tensor([[0, 0, 2, 3]])).boxes == ((0, 0, 2, 3),)
