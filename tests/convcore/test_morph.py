"""morph_conv2d against the unfold recipe, window_op2d, a naive loop and OpenCV; masks, out=, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracles import MODES, masks
from oracles import morph as morph_reference
from oracles import pair as _kernel

from convcore import morph_conv2d, window_op2d

# (in_ch, out_ch, groups, kernel, stride, padding, dilation)
GEOMETRIES = [
    (3, 4, 1, 3, 1, 1, 1),
    (4, 4, 4, 3, 1, "same", 1),  # depthwise: per-channel dilate/erode
    (4, 6, 2, (2, 3), (2, 1), (1, 2), (1, 2)),
    (2, 3, 1, 5, 2, "valid", 1),
    (3, 4, 1, (2, 3), 1, "same", 1),  # uneven same: rows padded (0, 1)
    (2, 2, 2, (4, 2), 1, "same", (1, 2)),  # uneven same rows (1, 2), grouped
]


@pytest.mark.parametrize("mask_kind", ["none", "random", "sparse", "box"])
@pytest.mark.parametrize("padding_mode", MODES)
@pytest.mark.parametrize("mode", ["dilation", "erosion"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"g{g[2]}k{g[3]}s{g[4]}p{g[5]}d{g[6]}")
def test_matches_unfold_recipe(geometry, mode, padding_mode, mask_kind, device, assert_close):
    cin, cout, groups, k, s, p, d = geometry
    x = torch.randn(2, cin, 13, 17, dtype=torch.float64, device=device)
    w = torch.randn(cout, cin // groups, *_kernel(k), dtype=torch.float64, device=device)
    kw = dict(stride=s, padding=p, dilation=d, groups=groups, padding_mode=padding_mode)
    ref = morph_reference(x, w, mode, **kw)
    mask = masks(mask_kind, 2, ref.shape[2:], device)
    y = morph_conv2d(x, w, mode, mask=mask, **kw)
    if mask is not None:
        ref = ref * mask[:, None]
    assert_close(y, ref)


@pytest.mark.parametrize("mode", ["dilation", "erosion"])
def test_equals_window_op2d_and_naive_loop(mode, device, assert_close):
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, device=device)
    w = torch.randn(2, 3, 3, 2, dtype=torch.float64, device=device)
    y = morph_conv2d(x, w, mode, padding=1, stride=(1, 2), padding_mode="replicate")
    if mode == "dilation":
        via_fn = window_op2d(x, w, lambda a, b: a + b, reduce="max", padding=1, stride=(1, 2), padding_mode="replicate")
    else:
        via_fn = window_op2d(x, w, lambda a, b: a - b, reduce="min", padding=1, stride=(1, 2), padding_mode="replicate")
    assert_close(y, via_fn)
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    naive = torch.empty_like(y)
    for n in range(2):
        for o in range(2):
            for i in range(y.shape[2]):
                for j in range(y.shape[3]):
                    win = xp[n, :, i : i + 3, 2 * j : 2 * j + 2]
                    naive[n, o, i, j] = (win + w[o]).max() if mode == "dilation" else (win - w[o]).min()
    assert_close(y, naive)


@pytest.mark.parametrize("mode", ["dilation", "erosion"])
@pytest.mark.parametrize("border", ["replicate", "symmetric", "reflect"])
def test_depthwise_flat_element_equals_opencv(mode, border):
    cv2 = pytest.importorskip("cv2")
    flags = {"replicate": cv2.BORDER_REPLICATE, "symmetric": cv2.BORDER_REFLECT, "reflect": cv2.BORDER_REFLECT_101}
    img = np.random.default_rng(0).random((3, 20, 26), dtype=np.float32)
    se = np.array([[0, 1, 0, 0, 0], [1, 1, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=np.uint8)  # 3x5, asymmetric
    w = torch.where(torch.from_numpy(se).bool(), 0.0, float("-inf")).expand(3, 1, 3, 5).contiguous()
    y = morph_conv2d(torch.from_numpy(img)[None], w, mode, padding="same", groups=3, padding_mode=border)
    op = cv2.dilate if mode == "dilation" else cv2.erode
    ref = np.stack([op(c, se, borderType=flags[border]) for c in img])
    np.testing.assert_array_equal(y[0].numpy(), ref)


@pytest.mark.parametrize("kind", ["empty", "full"])
def test_empty_and_full_masks(kind, device, assert_close):
    x = torch.randn(2, 3, 9, 9, device=device)
    w = torch.randn(3, 1, 3, 3, device=device)
    mask = masks(kind, 2, (9, 9), device)
    out = torch.full((2, 3, 9, 9), 7.0, device=device)
    y = morph_conv2d(x, w, padding=1, groups=3, padding_mode="symmetric", mask=mask, out=out)
    assert y is out
    if kind == "empty":
        assert bool((out == 7.0).all())
    else:
        assert_close(out, morph_reference(x, w, padding=1, groups=3, padding_mode="symmetric"))


def test_out_written_only_inside_mask(device, assert_close):
    x = torch.randn(2, 2, 11, 10, device=device)
    w = torch.randn(2, 2, 3, 3, device=device)
    mask = masks("random", 2, (11, 10), device)
    out = torch.full((2, 2, 11, 10), -3.0, device=device)
    morph_conv2d(x, w, "erosion", padding="same", padding_mode="symmetric", mask=mask, out=out)
    ref = morph_reference(x, w, "erosion", padding="same", padding_mode="symmetric")
    m = mask[:, None].expand_as(out)
    assert_close(out[m], ref[m])
    assert bool((out[~m] == -3.0).all())


def test_mask_shared_by_batch(device, assert_close):
    x = torch.randn(3, 2, 8, 8, device=device)
    w = torch.randn(2, 2, 3, 3, device=device)
    mask2d = masks("box", 1, (8, 8), device)[0]
    y = morph_conv2d(x, w, padding=1, mask=mask2d)
    assert_close(y, morph_reference(x, w, padding=1) * mask2d)


def test_small_workspace_gives_the_same_result(device, assert_close, monkeypatch):
    import convcore.engine.policy as policy
    import convcore.engine.tiles as tiles

    monkeypatch.setitem(policy.CHUNK_BYTES, "cpu", 4096)
    monkeypatch.setitem(policy.CHUNK_BYTES, "cuda", 4096)
    x = torch.randn(2, 3, 20, 15, device=device)
    w = torch.randn(4, 3, 3, 3, device=device)
    assert len(tiles.plan_bands([None], [(2, 20, 15)], 3 * 4 * 4, policy.chunk_bytes(x.device), 16)) > 2
    assert_close(
        morph_conv2d(x, w, padding=1, padding_mode="reflect"), morph_reference(x, w, padding=1, padding_mode="reflect")
    )


@pytest.mark.parametrize("groups,stride,dilation", [(1, 1, 1), (2, (2, 1), (1, 2))])
@pytest.mark.parametrize("mode", ["dilation", "erosion"])
def test_gradcheck(mode, groups, stride, dilation, device):
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(2, 2 // groups, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    kw = dict(stride=stride, dilation=dilation, groups=groups, padding=(1, 0), padding_mode="reflect")
    out_hw = morph_reference(x, w, mode, **kw).shape[2:]
    mask = masks("random", 1, out_hw, device)

    def f(x, w):
        return morph_conv2d(x, w, mode, mask=mask, **kw)

    assert torch.autograd.gradcheck(f, (x, w))


def test_gradients_equal_the_recipe(device, assert_close):
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.randn(2, 4, 9, 8, dtype=torch.float64, device=device)
    gx, gw = torch.autograd.grad((morph_conv2d(x, w, padding=1, padding_mode="symmetric") * g).sum(), (x, w))
    rx, rw = torch.autograd.grad((morph_reference(x, w, padding=1, padding_mode="symmetric") * g).sum(), (x, w))
    assert_close(gx, rx)
    assert_close(gw, rw)


def test_sparse_mask_gathers_windows_and_differentiates(device, assert_close, monkeypatch):
    import convcore.engine.tiles as tiles

    calls = []
    real = tiles.run_window_rows
    monkeypatch.setattr(tiles, "run_window_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 4, 12, 11, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 2, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    kw = dict(stride=(1, 2), dilation=(2, 1), groups=2, padding=2, padding_mode="symmetric")
    ref = morph_reference(x, w, "erosion", **kw)
    mask = masks("sparse", 2, ref.shape[2:], device)
    y = morph_conv2d(x, w, "erosion", mask=mask, **kw)
    assert calls, "a 4% scattered mask should take the gathered-windows path"
    assert_close(y, ref * mask[:, None])
    g = torch.randn_like(y)
    assert_close(
        torch.autograd.grad((y * g).sum(), (x, w))[0], torch.autograd.grad((ref * mask[:, None] * g).sum(), (x, w))[0]
    )
    assert torch.autograd.gradcheck(lambda x, w: morph_conv2d(x, w, mask=mask, **kw), (x, w), fast_mode=True)


def test_errors():
    x = torch.randn(1, 4, 8, 8)
    w = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="mode must be one of"):
        morph_conv2d(x, w, "opening")
    with pytest.raises(ValueError, match="4 dimensions"):
        morph_conv2d(x, w[0])
    with pytest.raises(ValueError, match="groups"):
        morph_conv2d(x, torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match="divisible by groups"):
        morph_conv2d(x, torch.randn(3, 2, 3, 3), groups=2)
    with pytest.raises(TypeError, match="dtype and device"):
        morph_conv2d(x, w.double())
    with pytest.raises(ValueError, match="mask must have shape"):
        morph_conv2d(x, w, mask=torch.ones(1, 8, 8, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        morph_conv2d(x, w, mask=torch.ones(1, 6, 6))
    with pytest.raises(ValueError, match="out must have shape"):
        morph_conv2d(x, w, out=torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="padding_mode"):
        morph_conv2d(x, w, padding_mode="mirror")
    with pytest.raises(TypeError, match="torch.Tensor"):
        morph_conv2d(x.numpy(), w)
