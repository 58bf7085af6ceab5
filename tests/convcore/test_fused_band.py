"""The fused band form (convcore.compile.fused): its hand-derived backward against autograd of the unfold oracle.

The oracle is written from the definition: F.unfold of the numpy-padded input, ``fn`` on the (N, O, kh·kw·C, L)
broadcast, then sum / mean / ``max(dim)`` / ``min(dim)`` — whose gradient goes to the *first* winner in (kh, kw, C)
order, the rule the fused backward keeps (the eager morph's). The cores run uncompiled here (what the compiler is
given, with ``torch.func.vjp`` evaluated eagerly); one Inductor case compiles the max path's three kernels.
"""

from __future__ import annotations

import pytest
import torch
from oracles import GEOMETRIES, geometry_id, masks
from oracles import pair as _pair
from oracles import windows as _windows
from support import patch_run_compiled, record_compiled

import convcore.compile.cache as cc
from convcore import morph_conv2d, window_op2d


def _huber(a, c):
    d = (a - c).abs()
    return torch.where(d < 1, 0.5 * d * d, d - 0.5)


def _plus(a, c):
    return a + c


@pytest.fixture
def cores(monkeypatch):
    """Run every compiled core uncompiled and record which ran."""
    return record_compiled(monkeypatch, lambda name, core: core.__name__)


def _oracle(x, w, fn, reduce, geometry, mode):
    """reduce over the window of fn(window, w) from F.unfold; max/min by torch.max(dim), whose gradient goes to the
    first winner — in (kh, kw, C) order here, the eager morph's."""
    k, s, p, d = geometry
    cols, out_hw = _windows(x, _pair(k), s, p, d, mode)  # [N, 1, C, kh, kw, L]
    N, O = x.shape[0], w.shape[0]
    cols = cols.permute(0, 1, 3, 4, 2, 5).flatten(2, 4)  # [N, 1, kh·kw·C, L]
    v = fn(cols, w.permute(0, 2, 3, 1).reshape(1, O, -1, 1))  # [N, O, kh·kw·C, L]
    y = {"sum": lambda: v.sum(2), "mean": lambda: v.mean(2)}.get(reduce)
    y = y() if y else (v.max(2).values if reduce == "max" else v.min(2).values)
    return y.view(N, O, *out_hw)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("mask_kind", ["none", "box", "sparse"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=geometry_id)
def test_fused_gradients_equal_the_unfold_oracle(geometry, mask_kind, reduce, cores, device, assert_close):
    k, s, p, d = geometry
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 3, *_pair(k), dtype=torch.float64, device=device, requires_grad=True)
    fn = _huber if reduce in ("sum", "mean") else _plus
    mode = "reflect" if mask_kind == "box" else "zeros"
    ref = _oracle(x, w, fn, reduce, geometry, mode)
    mask = masks(mask_kind, 2, ref.shape[-2:], device)
    keep = 1 if mask is None else mask[:, None]
    y = window_op2d(x, w, fn, stride=s, padding=p, dilation=d, padding_mode=mode, reduce=reduce, mask=mask,
                    compile=True)  # fmt: skip
    assert_close(y, ref * keep)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(y, (x, w), g)
    want = torch.autograd.grad(ref * keep, (x, w), g)
    for a, e in zip(got, want):
        assert_close(a, e)
    if _pair(s) == (1, 1) and mask_kind != "sparse":  # the fused backward served it (a strided op's patch
        # gradient goes tap by tap, and so do gathered window rows, which read their patch with stride (1, kw))
        assert {"_band_grad_patch", "_band_grad_weight"} <= set(cores)
    else:
        assert "window_band" in cores


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float32: value and position packed in one key
def test_ties_take_the_gradient_at_the_first_winner(dtype, cores, device, assert_close):
    """Integer images and a flat structuring element tie everywhere: each output's gradient goes to one input, the
    first of its window in (kh, kw, C) order, as the eager morph and torch.max(dim) give it."""
    x = torch.randint(-2, 3, (2, 3, 9, 8), device=device).to(dtype).requires_grad_()
    se = torch.zeros(2, 3, 3, 3, dtype=dtype, device=device, requires_grad=True)
    for mode, reduce in (("dilation", "max"), ("erosion", "min")):
        y = morph_conv2d(x, se, mode, padding=1, compile=True)
        g = torch.rand_like(y)
        got = torch.autograd.grad(y, (x, se), g)
        eager = torch.autograd.grad(morph_conv2d(x, se, mode, padding=1, compile=False), (x, se), g)
        ref = _oracle(x, se if mode == "dilation" else -se, _plus, reduce, (3, 1, 1, 1), "zeros")
        want = torch.autograd.grad(ref, (x, se), g)
        for a, e, q in zip(got, want, eager):
            assert_close(a, e)
            assert_close(a, q)
    assert "_band_grad_patch" in cores


def test_float32_extremum_keeps_nan_and_signed_values(cores, device, assert_close):
    """The packed float32 max/min: negative, zero and NaN values come back exactly; a NaN in a window wins."""
    x = torch.randn(1, 2, 7, 6, device=device) * 1e3
    x[0, 0, 3, 3] = float("nan")
    x[0, 1, 0, :] = -0.0
    x.requires_grad_()
    se = torch.randn(3, 2, 3, 3, device=device, requires_grad=True)
    for mode in ("dilation", "erosion"):
        y = morph_conv2d(x, se, mode, padding=1, compile=True)
        ye = morph_conv2d(x.detach(), se.detach(), mode, padding=1, compile=False)
        assert torch.equal(y.isnan(), ye.isnan()) and y.isnan()[0, :, 2:5, 2:5].all()
        assert torch.equal(torch.nan_to_num(y.detach()), torch.nan_to_num(ye))
        y.nan_to_num().sum().backward()
    assert "_band_grad_patch" in cores


def test_grouped_and_keep_window(cores, device, assert_close):
    x = torch.randn(2, 4, 8, 9, dtype=torch.float64, device=device, requires_grad=True)
    se = torch.randn(6, 2, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    args = dict(padding=1, groups=2, padding_mode="replicate")
    y, ye = (morph_conv2d(x, se, "erosion", compile=c, **args) for c in (True, False))
    assert_close(y, ye)
    g = torch.randn_like(y)
    for a, e in zip(torch.autograd.grad(y, (x, se), g), torch.autograd.grad(ye, (x, se), g)):
        assert_close(a, e)
    assert "_band_grad_patch" in cores
    w = torch.randn(5, 4, 3, 2, dtype=torch.float64, device=device)
    with torch.no_grad():  # keep_window has a fused forward only
        args = dict(padding=1, keep_window=True, reduce="max")
        assert_close(window_op2d(x, w, _huber, compile=True, **args), window_op2d(x, w, _huber, compile=False, **args))
    assert "_band_forward" in cores


def test_backward_saves_nothing_of_the_window_product(cores, device):
    """Saved for backward: the band's patch, the weight and the winners' index — never P·O·C·kh·kw."""
    x = torch.randn(2, 8, 20, 20, device=device, requires_grad=True)
    w = torch.randn(8, 8, 3, 3, device=device, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = morph_conv2d(x, w, "dilation", padding=1, compile=True)
    product = y.numel() * 8 * 9
    assert sizes and max(sizes) <= 2 * 8 * 22 * 22 < product // 8
    y.sum().backward()
    assert x.grad is not None and w.grad is not None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_inductor_max_path_equals_the_oracle(dtype, device, assert_close):
    """The three compiled kernels of a max reduction (forward with winners — two passes in float64, one packed pass
    in float32 —, patch and weight gradients)."""
    if cc.compiler_missing(torch.device(device)) is not None:
        pytest.fail(f"needs a compiler: {cc.compiler_missing(torch.device(device))}")
    try:
        x = torch.randn(2, 3, 12, 11, dtype=dtype, device=device, requires_grad=True)
        se = torch.randn(4, 3, 3, 3, dtype=dtype, device=device, requires_grad=True)
        ref = _oracle(x, se, _plus, "max", (3, 1, 1, (1, 2)), "reflect")
        mask = masks("box", 2, ref.shape[-2:], device)
        ref = ref * mask[:, None]
        y = morph_conv2d(x, se, "dilation", padding=1, dilation=(1, 2), padding_mode="reflect", mask=mask,
                         compile=True)  # fmt: skip
        assert_close(y, ref)
        g = torch.randn_like(y)
        for a, e in zip(torch.autograd.grad(y, (x, se), g), torch.autograd.grad(ref, (x, se), g)):
            assert_close(a, e)
        stats = cc.compile_stats()
        assert len(stats) == 3 and not any(s["failed"] for s in stats), stats
    finally:
        cc._reset()


def test_a_backward_that_cannot_compile_runs_eagerly(monkeypatch, device, assert_close):
    """The forward compiled, its backward kernels unavailable (run_compiled raises CannotCompile for them): the
    gradients come from eager autograd of the tap-by-tap form, equal to the eager op's."""

    def run(name, core, key, args, dynamic=()):
        if core.__name__ in ("_band_grad_patch", "_band_grad_weight"):
            raise cc.CannotCompile(name, "a test")
        return core(*args)

    patch_run_compiled(monkeypatch, run)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    for reduce in ("mean", "max"):
        ys = [window_op2d(x, w, _huber, padding=1, reduce=reduce, compile=c) for c in (True, False)]
        g = torch.randn_like(ys[0])
        for a, e in zip(*(torch.autograd.grad(y, (x, w), g) for y in ys)):
            assert_close(a, e)


def test_a_function_with_its_own_parameter_gets_its_gradient(cores, device, assert_close):
    """fn closing over a tensor that needs a gradient: the fused backward would return gradients for x and w only,
    so the call takes the tap-by-tap form, and the parameter's gradient equals eager's — with and without x and w
    needing gradients."""
    scale = torch.tensor(1.5, dtype=torch.float64, device=device, requires_grad=True)

    def fn(a, c):
        return (a - c).abs() * scale

    for needs in (True, False):
        x = torch.randn(2, 3, 8, 7, dtype=torch.float64, device=device, requires_grad=needs)
        w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=needs)
        grads = []
        for c in (True, False):
            y = window_op2d(x, w, fn, padding=1, compile=c)
            grads.append(torch.autograd.grad(y.square().sum(), [scale, *((x, w) if needs else ())]))
        for a, e in zip(*grads):
            assert_close(a, e)
    assert "window_band" in cores and "_band_grad_patch" not in cores
