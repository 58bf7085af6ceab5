"""window_op2d against F.conv2d, the unfold + broadcast + reduce recipe and the channel-only-sum recipe; masks, out=,
chunking, gradients, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from oracles import GEOMETRIES, MODES, geometry_id, masks
from oracles import conv as oracle_conv
from oracles import pair as _pair
from oracles import windows as _windows

import convcore.engine.policy as policy
from convcore import window_op2d

REDUCE = {
    "sum": lambda v, d: v.sum(d),
    "mean": lambda v, d: v.mean(d),
    "max": lambda v, d: v.amax(d),
    "min": lambda v, d: v.amin(d),
    "logsumexp": lambda v, d: torch.logsumexp(v, d),
}


@pytest.mark.parametrize("mask_kind", ["none", "random", "box", "full"])
@pytest.mark.parametrize("padding_mode", MODES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=geometry_id)
def test_product_fn_is_conv2d(geometry, padding_mode, mask_kind, device, assert_close):
    k, s, p, d = geometry
    x = torch.randn(2, 3, 10, 11, dtype=torch.float64, device=device)
    w = torch.randn(4, 3, *_pair(k), dtype=torch.float64, device=device)
    b = torch.randn(4, dtype=torch.float64, device=device)
    ref = oracle_conv(x, w, b, s, p, d, 1, padding_mode)
    mask = masks(mask_kind, 2, ref.shape[2:], device)
    y = window_op2d(
        x, w, lambda a, c: a * c, bias=b, mask=mask, stride=s, padding=p, dilation=d, padding_mode=padding_mode
    )
    assert_close(y, ref if mask is None else ref * mask[:, None])


@pytest.mark.parametrize("reduce", list(REDUCE))
@pytest.mark.parametrize("geometry", GEOMETRIES[:3], ids=geometry_id)
def test_each_reduce_equals_unfold_recipe(geometry, reduce, device, assert_close):
    k, s, p, d = geometry
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64, device=device)
    w = torch.randn(4, 3, *_pair(k), dtype=torch.float64, device=device)

    def fn(a, c):
        return torch.exp(-((a - c) ** 2)) + 0.1 * a * c

    cols, out_hw = _windows(x, _pair(k), s, p, d, "reflect")  # [N, 1, C, kh, kw, L]
    v = fn(cols, w[None, :, :, :, :, None])  # [N, O, C, kh, kw, L]
    ref = REDUCE[reduce](v, (2, 3, 4)).view(2, 4, *out_hw)
    y = window_op2d(x, w, fn, reduce=reduce, stride=s, padding=p, dilation=d, padding_mode="reflect")
    assert_close(y, ref)


@pytest.mark.parametrize("reduce", ["sum", "max"])
@pytest.mark.parametrize("mask_kind", ["none", "box"])
def test_keep_window_equals_channel_only_sum_recipe(reduce, mask_kind, device, assert_close):
    x = torch.randn(2, 5, 12, 12, dtype=torch.float64, device=device)
    filt = torch.randn(1, 5, 3, 3, dtype=torch.float64, device=device)
    # The forum recipe: non-overlapping 3x3 windows (stride 3), product with one filter, sum over channels only.
    patches = x.unfold(2, 3, 3).unfold(3, 3, 3)  # [N, C, 4, 4, 3, 3]
    prod = patches * filt[0][:, None, None]  # [N, C, 4, 4, 3, 3]
    ref = (prod.sum(1) if reduce == "sum" else prod.amax(1)).permute(0, 3, 4, 1, 2)[:, None]  # [N, 1, 3, 3, 4, 4]
    mask = masks(mask_kind, 2, (4, 4), device)
    y = window_op2d(x, filt, lambda a, c: a * c, reduce=reduce, keep_window=True, stride=3, mask=mask)
    assert y.shape == (2, 1, 3, 3, 4, 4)
    assert_close(y, ref if mask is None else ref * mask[:, None, None, None])


def test_keep_window_naive_loop_with_padding(device, assert_close):
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, device=device)
    w = torch.randn(3, 2, 3, 2, dtype=torch.float64, device=device)
    b = torch.randn(3, dtype=torch.float64, device=device)
    y = window_op2d(x, w, lambda a, c: (a - c).abs(), keep_window=True, bias=b, padding=1, padding_mode="circular")
    xp = F.pad(x, (1, 1, 1, 1), mode="circular")
    naive = torch.empty(1, 3, 3, 2, 4, 6, dtype=torch.float64)
    for o in range(3):
        for i in range(4):
            for j in range(6):
                naive[0, o, :, :, i, j] = (xp[0, :, i : i + 3, j : j + 2] - w[o]).abs().sum(0) + b[o]
    assert_close(y, naive.to(device))


def test_fn_may_ignore_an_operand(device, assert_close):
    x = torch.randn(1, 2, 6, 6, device=device)
    w = torch.randn(3, 2, 3, 3, device=device)
    y = window_op2d(x, w, lambda a, c: a * a, padding=1)  # (P, 1, C, kh, kw): broadcast over O
    ref = F.conv2d(x * x, torch.ones(1, 2, 3, 3, device=device), padding=1).expand(1, 3, 6, 6)
    assert_close(y, ref)


def test_out_and_empty_mask(device, assert_close):
    x = torch.randn(2, 2, 7, 7, device=device)
    w = torch.randn(2, 2, 3, 3, device=device)
    out = torch.full((2, 2, 7, 7), 4.0, device=device)
    window_op2d(x, w, lambda a, c: a - c, reduce="max", padding=1, mask=masks("empty", 2, (7, 7), device), out=out)
    assert bool((out == 4.0).all())
    mask = masks("random", 2, (7, 7), device)
    res = window_op2d(x, w, lambda a, c: a - c, reduce="max", padding=1, mask=mask, out=out)
    assert res is out
    ref = window_op2d(x, w, lambda a, c: a - c, reduce="max", padding=1)
    m = mask[:, None].expand_as(out)
    assert_close(out[m], ref[m])
    assert bool((out[~m] == 4.0).all())


def test_chunks_bounded_by_workspace(device, assert_close, monkeypatch):
    x = torch.randn(2, 3, 12, 13, device=device)
    w = torch.randn(4, 3, 3, 3, device=device)
    ref = window_op2d(x, w, lambda a, c: a * c, padding=1)
    monkeypatch.setitem(policy.CHUNK_BYTES, "cpu", 8192)
    monkeypatch.setitem(policy.CHUNK_BYTES, "cuda", 8192)
    sizes = []

    def fn(a, c):
        sizes.append(a.shape[0])
        return a * c

    assert_close(window_op2d(x, w, fn, padding=1), ref)
    per_window = (2 * 27 + 3 * 4 * 27 + 2 * 4) * 4
    assert max(sizes) <= 8192 // per_window and sum(sizes) == 2 * 12 * 13


@pytest.mark.parametrize("keep_window", [False, True])
@pytest.mark.parametrize("reduce", ["sum", "max", "logsumexp"])
def test_gradcheck(reduce, keep_window, device):
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(2, 2, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)
    mask = masks("random", 1, (5, 3), device)

    def f(x, w, b):
        return window_op2d(
            x,
            w,
            lambda a, c: torch.sin(a) * c,
            reduce=reduce,
            keep_window=keep_window,
            bias=b,
            padding=(1, 0),
            padding_mode="replicate",
            mask=mask,
        )

    assert torch.autograd.gradcheck(f, (x, w, b))


def test_errors():
    x = torch.randn(1, 3, 8, 8)
    w = torch.randn(2, 3, 3, 3)

    def mul(a, c):
        return a * c

    with pytest.raises(TypeError, match="fn must be a callable"):
        window_op2d(x, w, "mul")
    with pytest.raises(ValueError, match="reduce must be one of"):
        window_op2d(x, w, mul, reduce="prod")
    with pytest.raises(TypeError, match="keep_window must be a bool"):
        window_op2d(x, w, mul, keep_window=1)
    with pytest.raises(ValueError, match=r"expected weight.shape\[1\] == 3"):
        window_op2d(x, torch.randn(2, 4, 3, 3), mul)
    with pytest.raises(ValueError, match="broadcastable to"):
        window_op2d(x, w, lambda a, c: a.sum(-1))
    with pytest.raises(TypeError, match="fn must return a torch.Tensor"):
        window_op2d(x, w, lambda a, c: 1.0)
    with pytest.raises(ValueError, match="out must have shape"):
        window_op2d(x, w, mul, keep_window=True, out=torch.zeros(1, 2, 6, 6))
    with pytest.raises(ValueError, match="contiguous"):
        window_op2d(x, w, mul, keep_window=True, out=torch.zeros(1, 2, 6, 6, 3, 3).permute(0, 1, 4, 5, 2, 3))
    with pytest.raises(ValueError, match="bias must have shape"):
        window_op2d(x, w, mul, bias=torch.zeros(3))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        window_op2d(x, w, mul, stride=0)
    with pytest.raises(ValueError, match="padding_mode"):
        window_op2d(x, w, mul, padding_mode="edge")
