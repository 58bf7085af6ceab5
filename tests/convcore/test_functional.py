"""roi_conv2d against the dense oracle (nn.Conv2d), over a grid of geometries, masks and strategies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracles import MODES, masks
from oracles import conv as oracle_conv

import convcore
from convcore import RoIConv2d, plan_roi, roi_conv2d, roi_conv2d_batch

STRATEGIES = ["windows", "tiles", "dense", "auto"]

# (in_ch, out_ch, kernel, stride, padding, dilation, groups)
GEOMETRIES = [
    (4, 6, 3, 1, 1, 1, 1),
    (4, 6, 3, 2, 0, 1, 1),
    (4, 4, (2, 2), 1, "same", 1, 1),  # even kernel: asymmetric "same"
    (4, 6, (1, 5), (2, 1), (0, 2), 1, 2),  # non-square kernel, pair stride/padding, groups
    (6, 6, 3, 1, "same", 2, 6),  # depthwise, dilated
    (3, 5, (3, 2), 1, "valid", (2, 1), 1),
    (4, 8, 5, (1, 2), (2, 1), 1, 4),
    (2, 3, 4, 3, 3, 1, 1),  # stride larger than half the kernel, even kernel
]


def _masks(n, h, w, device, seed=0):
    return masks("mixed", n, (h, w), device, seed=seed)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("padding_mode", MODES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"k{g[2]}s{g[3]}p{g[4]}d{g[5]}g{g[6]}")
def test_matches_conv2d_inside_mask(geometry, padding_mode, strategy, device, assert_close):
    cin, cout, k, s, p, d, g = geometry
    module_mode = "zeros" if padding_mode == "symmetric" else padding_mode
    conv = torch.nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, padding_mode=module_mode)
    conv = conv.double().to(device)
    x = torch.randn(2, cin, 23, 29, dtype=torch.float64, device=device)
    with torch.no_grad():
        if padding_mode == "symmetric":  # nn.Conv2d has no symmetric mode: numpy's pad + F.conv2d
            ref_full = oracle_conv(x, conv.weight, conv.bias, s, p, d, g, "symmetric")
        else:
            ref_full = conv(x)
    mask = _masks(2, *ref_full.shape[2:], device)
    y = roi_conv2d(  # plain tensors, as in inference (no autograd bookkeeping in the engines)
        x,
        conv.weight.detach(),
        conv.bias.detach(),
        mask,
        stride=s,
        padding=p,
        dilation=d,
        groups=g,
        padding_mode=padding_mode,
        strategy=strategy,
    )
    assert_close(y, ref_full * mask[:, None])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_symmetric_padding_matches_numpy_symmetric_pad(strategy, device, assert_close):
    x = torch.randn(1, 3, 17, 19, dtype=torch.float64, device=device)
    w = torch.randn(2, 3, 5, 3, dtype=torch.float64, device=device)
    padded = np.pad(x.cpu().numpy(), ((0, 0), (0, 0), (2, 2), (1, 1)), mode="symmetric")
    ref = F.conv2d(torch.from_numpy(padded).to(device), w)
    mask = _masks(1, 17, 19, device)
    y = roi_conv2d(x, w, None, mask, padding=(2, 1), padding_mode="symmetric", strategy=strategy)
    assert_close(y, ref * mask[:, None])


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", ["empty", "full", "border", "corner_pixels", "shared_2d"])
def test_mask_kinds(kind, strategy, device, assert_close):
    x = torch.randn(3, 4, 20, 24, dtype=torch.float64, device=device)
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64, device=device)
    b = torch.randn(5, dtype=torch.float64, device=device)
    ref = F.conv2d(x, w, b, padding=1)
    mask = torch.zeros(3, 20, 24, dtype=torch.bool, device=device)
    if kind == "full":
        mask[:] = True
    elif kind == "border":
        mask[:, 0, :] = True
        mask[:, :, -1] = True
        mask[1, -3:, :4] = True
    elif kind == "corner_pixels":
        mask[:, 0, 0] = mask[:, -1, -1] = mask[:, 0, -1] = mask[:, -1, 0] = True
    elif kind == "shared_2d":
        mask = torch.zeros(20, 24, dtype=torch.bool, device=device)
        mask[5:9, 2:7] = True
    y = roi_conv2d(x, w, b, mask, padding=1, strategy=strategy)
    full_mask = mask.expand(3, 20, 24) if mask.dim() == 2 else mask
    assert_close(y, ref * full_mask[:, None])
    if kind == "empty":
        assert not y.any()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_out_is_written_only_inside_mask(strategy, device, assert_close):
    x = torch.randn(2, 3, 16, 18, device=device)
    w = torch.randn(3, 1, 3, 3, device=device)
    mask = _masks(2, 16, 18, device, seed=3)
    out = x.clone()
    before = out.clone()
    result = roi_conv2d(x, w, None, mask, padding=1, groups=3, padding_mode="reflect", out=out, strategy=strategy)
    assert result is out
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, groups=3)
    m = mask[:, None].expand_as(out)
    assert torch.equal(out[~m], before[~m])  # untouched outside, bit for bit
    assert_close(out[m], ref[m])


def test_out_with_non_contiguous_and_channels_last(device, assert_close):
    x = torch.randn(2, 8, 20, 20, device=device)[:, ::2]  # non-contiguous channels
    xc = torch.randn(2, 4, 20, 20, device=device).to(memory_format=torch.channels_last)
    w = torch.randn(6, 4, 3, 3, device=device)
    mask = _masks(2, 18, 18, device, seed=5)
    for inp in (x, xc):
        ref = F.conv2d(inp, w) * mask[:, None]
        for strategy in STRATEGIES:
            out_cl = torch.zeros(2, 6, 18, 18, device=device).to(memory_format=torch.channels_last)
            y = roi_conv2d(inp, w, None, mask, out=out_cl, strategy=strategy)
            assert y is out_cl
            assert_close(y, ref)
            assert_close(roi_conv2d(inp, w, None, mask, strategy=strategy), ref)


@pytest.mark.parametrize("strategy", ["windows", "tiles", "dense"])
def test_gradcheck_float64(strategy, device):
    x = torch.randn(2, 4, 7, 8, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 2, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    mask = _masks(2, 7, 9, device, seed=7)

    def f(x, w, b):
        return roi_conv2d(x, w, b, mask, padding=1, groups=2, padding_mode="reflect", strategy=strategy)

    assert torch.autograd.gradcheck(f, (x, w, b))


@pytest.mark.parametrize("strategy", ["windows", "tiles"])
def test_gradients_equal_masked_dense_reference(strategy, device, assert_close):
    x = torch.randn(2, 3, 12, 12, device=device, requires_grad=True)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).to(device)
    mask = _masks(2, 12, 12, device, seed=11)
    g = torch.randn(2, 4, 12, 12, device=device)
    (conv(x) * mask[:, None] * g).sum().backward()
    ref = [t.grad.clone() for t in (x, conv.weight, conv.bias)]
    for t in (x, conv.weight, conv.bias):
        t.grad = None
    (roi_conv2d(x, conv.weight, conv.bias, mask, padding=1, strategy=strategy) * g).sum().backward()
    for t, r in zip((x, conv.weight, conv.bias), ref):
        assert_close(t.grad, r)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reduced_precision(dtype, device, assert_close):
    x = torch.randn(1, 8, 24, 24, device=device)
    w = torch.randn(8, 8, 3, 3, device=device) / 8
    try:
        ref = F.conv2d(x.to(dtype), w.to(dtype), padding=1).float()
    except RuntimeError as e:  # e.g. a CPU build without half convolution
        pytest.skip(f"{dtype} conv2d unsupported on {device}: {e}")
    mask = _masks(1, 24, 24, device, seed=2)
    for strategy in STRATEGIES:
        y = roi_conv2d(x.to(dtype), w.to(dtype), None, mask, padding=1, strategy=strategy)
        assert y.dtype == dtype
        assert_close(y.float(), ref * mask[:, None], dtype=dtype)


def test_workspace_chunks_give_the_same_result(device, assert_close):
    x = torch.randn(2, 8, 40, 40, device=device)
    w = torch.randn(8, 8, 3, 3, device=device)
    mask = _masks(2, 40, 40, device, seed=9)
    ref = roi_conv2d(x, w, None, mask, padding=1, strategy="windows")
    try:
        convcore.set_workspace_limit(2**16)  # ~100 windows per chunk
        for strategy in ("windows", "tiles"):
            assert_close(roi_conv2d(x, w, None, mask, padding=1, strategy=strategy), ref)
    finally:
        convcore.set_workspace_limit(None)
    assert convcore.workspace_limit() == 256 * 2**20


def test_plan_reuse_and_strategy_choice(device, assert_close):
    x = torch.randn(1, 16, 256, 256, device=device)
    w = torch.randn(16, 16, 3, 3, device=device)
    small = torch.zeros(256, 256, dtype=torch.bool, device=device)
    small[10:30, 40:60] = True
    plan = plan_roi(small, x.shape, w.shape, padding=1, device=device)
    assert plan.strategy in ("windows", "tiles")
    assert plan.num_windows == 400
    y1 = roi_conv2d(x, w, None, plan=plan, padding=1)
    y2 = roi_conv2d(x * 2, w, None, plan=plan, padding=1)
    assert_close(y2, 2 * y1)
    assert_close(y1, F.conv2d(x, w, padding=1) * small)
    full = plan_roi(torch.ones_like(small), x.shape, w.shape, padding=1, device=device)
    assert full.strategy == "dense" and full.mask is None
    assert set(plan.estimates) == {"dense", "windows", "tiles"}


@pytest.mark.parametrize("groups", [1, 3])
def test_batch_of_different_sizes_equals_per_image(groups, device, assert_close):
    w = torch.randn(3, 3 // groups, 5, 5, device=device)
    b = torch.randn(3, device=device)
    shapes = [(30, 40), (17, 23), (64, 64), (9, 9), (120, 90), (300, 300), (64, 64)]
    images = [torch.randn(3, h, w_, device=device) for h, w_ in shapes]
    masks = []
    for i, im in enumerate(images):
        m = torch.zeros(im.shape[1:], dtype=torch.bool, device=device)
        m[i : i + 6, 2:8] = True
        masks.append(m)
    masks[3] = None  # whole image
    masks[4][10:90, 5:70] = True  # a large box: tiles
    masks[5] = torch.rand(300, 300, device=device) < 0.01  # scattered: windows
    masks[6][:] = True
    masks[6][0, 0] = False  # nearly full: dense
    strategies = {
        plan_roi(m, (1, *im.shape), w.shape, padding=2, groups=groups, padding_mode="reflect").strategy
        for im, m in zip(images, masks)
    }
    assert strategies == {"windows", "tiles", "dense"} if groups == 1 else len(strategies) >= 2
    outs = [im.clone() for im in images]
    results = roi_conv2d_batch(images, w, b, masks, padding=2, groups=groups, padding_mode="reflect", outs=outs)
    for im, m, r, o in zip(images, masks, results, outs):
        single = roi_conv2d(im[None], w, b, m, padding=2, groups=groups, padding_mode="reflect", out=im[None].clone())
        assert_close(r, single[0])
        assert r.data_ptr() == o.data_ptr()
    fresh = roi_conv2d_batch(images, w, b, masks, padding=2, groups=groups, padding_mode="reflect")
    for im, m, r in zip(images, masks, fresh):
        assert_close(r, roi_conv2d(im[None], w, b, m, padding=2, groups=groups, padding_mode="reflect")[0])


@pytest.mark.parametrize("quantum", [1, 16])
def test_batch_puts_same_bucket_rectangles_of_different_images_through_one_conv(quantum, device, monkeypatch):
    calls = []
    real = F.conv2d

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr("convcore.functional.F.conv2d", counting)
    monkeypatch.setattr("convcore.functional._BATCH_TILE_QUANTUM", {device.type: quantum})
    w = torch.randn(8, 8, 3, 3, device=device)
    images, masks = [], []
    boxes = [(5, 30, 7, 36), (20, 42, 3, 33), (50, 78, 40, 69)]  # 25-30 pixels: one 32×32 bucket
    if quantum == 1:
        boxes = [(5, 30, 7, 36), (20, 45, 3, 32), (50, 75, 40, 69)]  # equal sizes (25×29)
    for (h, w_), box in zip([(200, 240), (210, 150), (256, 256)], boxes):
        images.append(torch.randn(8, h, w_, device=device))
        m = torch.zeros(h, w_, dtype=torch.bool, device=device)
        m[box[0] : box[1], box[2] : box[3]] = True
        masks.append(m)
    assert {plan_roi(m, (1, *im.shape), w.shape, padding=1).strategy for im, m in zip(images, masks)} == {"tiles"}
    results = roi_conv2d_batch(images, w, None, masks, padding=1)
    assert calls == [3]  # one conv over the three images' rectangles
    for im, m, r in zip(images, masks, results):
        assert torch.allclose(r, F.conv2d(im[None], w, padding=1)[0] * m, atol=1e-4)


def test_roiconv2d_module_from_conv_shares_weights(device, assert_close):
    conv = torch.nn.Conv2d(3, 4, 3, padding="same", padding_mode="replicate").to(device)
    roi = RoIConv2d.from_conv(conv)
    assert roi.weight is conv.weight and roi.bias is conv.bias
    x = torch.randn(2, 3, 15, 15, device=device)
    mask = _masks(2, 15, 15, device)
    with torch.no_grad():
        assert_close(roi(x, mask), conv(x) * mask[:, None])
        conv.weight.mul_(2)  # shared: the module sees the change
        assert_close(roi(x, mask), conv(x) * mask[:, None])
    assert roi._plan is not None and roi(x, mask) is not None
    cached = roi._plan
    roi(x, mask)
    assert roi._plan is cached  # same mask tensor: no new plan
    mask[0, 0, 0] = not bool(mask[0, 0, 0])
    roi(x, mask)
    assert roi._plan is not cached  # mutated mask: rebuilt
    fresh = RoIConv2d(3, 4, 3, bias=False).to(device)
    assert fresh.bias is None and fresh(x).shape == (2, 4, 13, 13)


def _call(**kw):
    args = dict(input=torch.randn(1, 4, 10, 10), weight=torch.randn(2, 4, 3, 3))
    args.update(kw)
    return roi_conv2d(args.pop("input"), args.pop("weight"), **args)


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        (dict(input=torch.randn(4, 10, 10)), ValueError, "input must have 4 dimensions"),
        (dict(input=[[1.0]]), TypeError, "input must be a torch.Tensor"),
        (dict(input=torch.ones(1, 4, 10, 10, dtype=torch.int64)), TypeError, "floating-point"),
        (dict(weight=torch.randn(2, 3, 3, 3)), ValueError, "expected weight.shape\\[1\\] == 4"),
        (dict(weight=torch.randn(3, 2, 3, 3), groups=2), ValueError, "divisible by groups"),
        (dict(weight=torch.randn(2, 4, 3, 3, dtype=torch.float64)), TypeError, "weight must have the input's dtype"),
        (dict(bias=torch.randn(3)), ValueError, "bias must have shape"),
        (dict(mask=torch.ones(1, 10, 10, dtype=torch.bool)), ValueError, "mask must have shape .*\\(1, 8, 8\\)"),
        (dict(mask=torch.ones(1, 8, 8)), TypeError, "mask must be a bool tensor"),
        (dict(mask=np.ones((8, 8), bool)), TypeError, "mask must be a bool torch.Tensor"),
        (dict(weight=torch.randn(2, 4, 13, 3)), ValueError, "larger than the padded input"),
        (dict(strategy="magic"), ValueError, "strategy must be one of"),
        (dict(padding_mode="mirror"), ValueError, "padding_mode must be one of"),
        (dict(padding="full"), ValueError, "padding must be an int"),
        (dict(padding="same", stride=2), ValueError, "padding='same' needs stride 1"),
        (dict(stride=0), ValueError, "stride must be >= 1"),
        (dict(dilation=(1, 2, 3)), TypeError, "dilation must be an int or a pair"),
        (dict(padding=-1), ValueError, "padding must be >= 0"),
        (dict(padding=10, padding_mode="reflect"), ValueError, "needs padding < input size"),
        (dict(out=torch.zeros(1, 2, 10, 10)), ValueError, "out must have shape \\(1, 2, 8, 8\\)"),
        (dict(out=torch.zeros(1, 2, 8, 8, dtype=torch.float64)), TypeError, "out must have the input's dtype"),
        (dict(plan="plan"), TypeError, "plan must be a RoIPlan"),
    ],
)
def test_errors(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        _call(**kwargs)


def test_plan_for_other_shapes_is_rejected():
    plan = plan_roi(None, (1, 4, 12, 12), (2, 4, 3, 3))
    with pytest.raises(ValueError, match="build a new plan"):
        _call(plan=plan)


def test_plan_for_another_mask_is_rejected_and_the_same_mask_accepted(assert_close):
    x, w = torch.randn(1, 2, 10, 10), torch.randn(3, 2, 3, 3)
    a = torch.zeros(10, 10, dtype=torch.bool)
    a[1:4, 2:8] = True
    b = torch.zeros(10, 10, dtype=torch.bool)
    b[5:9, 0:3] = True
    plan_a = plan_roi(a, x.shape, w.shape, padding=1)
    with pytest.raises(ValueError, match="mask differs from the mask the plan was built for"):
        roi_conv2d(x, w, None, b, padding=1, plan=plan_a)
    with pytest.raises(ValueError, match="mask differs"):
        roi_conv2d(x, w, None, torch.ones(10, 10, dtype=torch.bool), padding=1, plan=plan_a)
    ref = F.conv2d(x, w, padding=1) * a
    assert_close(roi_conv2d(x, w, None, a.clone(), padding=1, plan=plan_a), ref)
    assert_close(roi_conv2d(x, w, None, padding=1, plan=plan_a), ref)


@pytest.mark.parametrize(
    "bias, exc, message",
    [
        (torch.zeros(1), ValueError, "bias must have shape \\(O,\\) = \\(3,\\)"),
        (torch.zeros(3, dtype=torch.float64), TypeError, "bias must have the input's dtype"),
        (torch.zeros(3, 1), ValueError, "bias must have 1 dimensions"),
        ([0.0, 0.0, 0.0], TypeError, "bias must be a torch.Tensor"),
    ],
)
def test_batch_checks_bias_like_roi_conv2d(bias, exc, message):
    images, w = [torch.randn(2, 6, 6), torch.randn(2, 5, 7)], torch.randn(3, 2, 3, 3)
    with pytest.raises(exc, match=message):
        roi_conv2d_batch(images, w, bias, padding=1)
    with pytest.raises(exc, match=message):
        roi_conv2d(images[0][None], w, bias, padding=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_large_fresh_output_is_zero_outside_and_differentiable(dtype, device, assert_close):
    from convcore.engine import zeros

    buf = zeros((2, 8, 256, 256), torch.empty(0, dtype=dtype, device=device))  # 2-8 MiB: the lazy path on CPU
    assert buf.dtype == dtype and buf.device.type == device.type and not buf.any()
    buf[0, 0, 0, 0] = 1  # writable, owns its memory
    assert buf.sum().item() == 1
    x = torch.randn(1, 4, 256, 256, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, device=device, dtype=dtype)
    mask = torch.zeros(256, 256, dtype=torch.bool, device=device)
    mask[40:90, 100:180] = True
    y = roi_conv2d(x, w, None, mask, padding=1)
    ref = F.conv2d(x, w, padding=1) * mask
    assert_close(y.float(), ref.float(), dtype=dtype)
    assert not y[..., ~mask].any()
    y.sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (F.conv2d(x2, w, padding=1) * mask).sum().backward()
    assert_close(x.grad.float(), x2.grad.float(), dtype=dtype)
