"""offset_conv2d, quadratic_conv2d and distance_conv2d against window_op2d with the matching fn and an unfold
recipe, over geometries, padding modes and masks; gradients; errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from oracles import GEOMETRIES, MODES, geometry_id, masks
from oracles import pair as _pair
from oracles import windows as oracle_windows

from convcore import distance_conv2d, offset_conv2d, quadratic_conv2d, window_op2d


def recipe(x, w, fn, geometry, padding_mode):
    """The forum recipe: unfold the padded input, broadcast against each filter, sum the window."""
    k, s, p, d = geometry
    cols, out_hw = oracle_windows(x, _pair(k), s, p, d, padding_mode)  # [N, 1, C, kh, kw, L]
    cols = cols.flatten(2, 4)  # [N, 1, C*K, L]
    y = fn(cols, w.reshape(1, w.shape[0], -1, 1)).sum(2)  # [N, O, L]
    return y.view(x.shape[0], w.shape[0], *out_hw)


OPS = {
    # name: (fast op, fn for window_op2d / the recipe given (A, B))
    "offset": (
        lambda x, A, B, c, **kw: offset_conv2d(x, A, B, c, **kw),
        lambda A, B: lambda x, w: w * (x - B.reshape(w.shape)),
    ),
    "quadratic": (
        lambda x, A, B, c, **kw: quadratic_conv2d(x, A, B, c, **kw),
        lambda A, B: lambda x, w: w * x * x + B.reshape(w.shape) * x,
    ),
    "distance1": (
        lambda x, A, B, c, **kw: distance_conv2d(x, A, 1, c, **kw),
        lambda A, B: lambda x, w: -(x - w).abs(),
    ),
    "distance2": (
        lambda x, A, B, c, **kw: distance_conv2d(x, A, 2, c, **kw),
        lambda A, B: lambda x, w: -((x - w) ** 2),
    ),
    "distance1.5": (
        lambda x, A, B, c, **kw: distance_conv2d(x, A, 1.5, c, **kw),
        lambda A, B: lambda x, w: -((x - w).abs() ** 1.5),
    ),
}


@pytest.mark.parametrize("mask_kind", ["none", "random", "sparse", "box"])
@pytest.mark.parametrize("padding_mode", MODES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=geometry_id)
@pytest.mark.parametrize("op", list(OPS))
def test_equals_window_op2d_and_recipe(op, geometry, padding_mode, mask_kind, device, assert_close):
    fast, make_fn = OPS[op]
    k, s, p, d = geometry
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 11, 13, dtype=torch.float64, generator=g).to(device)
    A = torch.randn(4, 3, *_pair(k), dtype=torch.float64, generator=g).to(device)
    B = torch.randn(4, 3, *_pair(k), dtype=torch.float64, generator=g).to(device)
    c = torch.randn(4, dtype=torch.float64, generator=g).to(device)
    fn = make_fn(A, B)
    ref = recipe(x, A, fn, geometry, padding_mode) + c[:, None, None]
    mask = masks(mask_kind, 2, ref.shape[2:], device)
    kw = dict(stride=s, padding=p, dilation=d, padding_mode=padding_mode, mask=mask)
    y = fast(x, A, B, c, **kw)
    via_fn = window_op2d(x, A, fn, bias=c, **kw)
    if mask is not None:
        ref = ref * mask[:, None]
    assert_close(via_fn, ref)
    assert_close(y, ref)


def test_naive_loop_offset_and_adder(device, assert_close):
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, device=device)
    A = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=device)
    B = torch.randn(2, 1, 1, dtype=torch.float64, device=device)  # a per-channel offset, broadcast
    xp = F.pad(x, (1, 1, 1, 1))
    off, add = torch.empty(1, 3, 5, 6, dtype=torch.float64), torch.empty(1, 3, 5, 6, dtype=torch.float64)
    for o in range(3):
        for i in range(5):
            for j in range(6):
                win = xp[0, :, i : i + 3, j : j + 3]
                off[0, o, i, j] = (A[o] * (win - B)).sum()
                add[0, o, i, j] = -(win - A[o]).abs().sum()
    assert_close(offset_conv2d(x, A, B, padding=1), off.to(device))
    assert_close(distance_conv2d(x, A, padding=1), add.to(device))


def test_offset_groups(device, assert_close):
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64, device=device)
    A = torch.randn(6, 2, 3, 3, dtype=torch.float64, device=device)
    B = torch.randn(6, 2, 3, 3, dtype=torch.float64, device=device)
    y = offset_conv2d(x, A, B, padding=1, groups=2)
    ref = F.conv2d(x, A, padding=1, groups=2) - (A * B).sum((1, 2, 3))[:, None, None]
    assert_close(y, ref)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("kind", ["empty", "full"])
def test_empty_and_full_masks_with_out(op, kind, device, assert_close):
    fast, _ = OPS[op]
    x = torch.randn(2, 3, 8, 9, device=device)
    A, B, c = torch.randn(2, 3, 3, 3, device=device), torch.randn(2, 3, 3, 3, device=device), torch.randn(2)
    mask = masks(kind, 2, (8, 9), device)
    out = torch.full((2, 2, 8, 9), 9.0, device=device)
    y = fast(x, A, B, c.to(device), padding=1, padding_mode="replicate", mask=mask, out=out)
    assert y is out
    if kind == "empty":
        assert bool((out == 9.0).all())
    else:
        assert_close(out, fast(x, A, B, c.to(device), padding=1, padding_mode="replicate"))


@pytest.mark.parametrize("op", list(OPS))
def test_out_written_only_inside_mask(op, device, assert_close):
    fast, _ = OPS[op]
    x = torch.randn(2, 3, 10, 12, device=device)
    A, B = torch.randn(5, 3, 3, 3, device=device), torch.randn(5, 3, 3, 3, device=device)
    mask = masks("box", 2, (10, 12), device)
    out = torch.full((2, 5, 10, 12), -1.0, device=device)
    fast(x, A, B, None, padding="same", padding_mode="reflect", mask=mask, out=out)
    ref = fast(x, A, B, None, padding="same", padding_mode="reflect")
    m = mask[:, None].expand_as(out)
    assert_close(out[m], ref[m])
    assert bool((out[~m] == -1.0).all())


@pytest.mark.parametrize("op", list(OPS))
def test_gradcheck(op, device):
    fast, _ = OPS[op]
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    A = torch.randn(2, 2, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    B = torch.randn(2, 2, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    c = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)
    mask = masks("box", 1, (6, 4), device)

    def f(x, A, B, c):
        return fast(x, A, B, c, padding=(1, 1), stride=(1, 1), padding_mode="symmetric", mask=mask)

    assert torch.autograd.gradcheck(f, (x, A, B, c))


def test_adder_gradients_equal_the_recipe(device, assert_close):
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.randn(2, 4, 5, 8, dtype=torch.float64, device=device)
    kw = dict(stride=(2, 1), padding=1, padding_mode="circular")
    y = distance_conv2d(x, w, 1, **kw)
    ref = recipe(x, w, lambda a, b: -(a - b).abs(), (3, (2, 1), 1, 1), "circular")
    assert_close(y, ref)
    gx, gw = torch.autograd.grad((y * g).sum(), (x, w))
    rx, rw = torch.autograd.grad((ref * g).sum(), (x, w))
    assert_close(gx, rx)
    assert_close(gw, rw)


def test_adder_sparse_mask_gathers_windows_and_differentiates(device, assert_close, monkeypatch):
    import convcore.engine.tiles as tiles

    calls = []
    real = tiles.run_window_rows
    monkeypatch.setattr(tiles, "run_window_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 3, 11, 10, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    ref = recipe(x, w, lambda a, b: -(a - b).abs(), (3, 1, 1, (2, 1)), "reflect")
    mask = masks("sparse", 2, ref.shape[2:], device)
    y = distance_conv2d(x, w, 1, padding=1, dilation=(2, 1), padding_mode="reflect", mask=mask)
    assert calls
    assert_close(y, ref * mask[:, None])
    f = lambda x, w: distance_conv2d(x, w, 1, padding=1, dilation=(2, 1), padding_mode="reflect", mask=mask)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w), fast_mode=True)


def test_errors():
    x = torch.randn(1, 3, 8, 8)
    A = torch.randn(2, 3, 3, 3)
    with pytest.raises(ValueError, match="offset must be broadcastable"):
        offset_conv2d(x, A, torch.randn(4, 3, 3, 3))
    with pytest.raises(TypeError, match="offset must be a torch.Tensor"):
        offset_conv2d(x, A, 0.5)
    with pytest.raises(ValueError, match="a and b must both have shape"):
        quadratic_conv2d(x, A, torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="bias must have shape"):
        quadratic_conv2d(x, A, A, torch.randn(3))
    with pytest.raises(ValueError, match="p must be a number > 0"):
        distance_conv2d(x, A, p=0)
    with pytest.raises(ValueError, match="p must be a number > 0"):
        distance_conv2d(x, A, p="l1")
    with pytest.raises(ValueError, match=r"expected weight.shape\[1\] == 3"):
        distance_conv2d(x, torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="mask must have shape"):
        distance_conv2d(x, A, mask=torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must have shape"):
        quadratic_conv2d(x, A, A, mask=torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(TypeError, match="dtype and device"):
        quadratic_conv2d(x, A.double(), A)
