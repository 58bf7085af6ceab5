"""The peers' layers in convcore's terms: ``groups=`` (as nn.Conv2d defines it) and custom gradients (``grad=``),
against oracles written from the definitions — F.unfold windows reduced per group, and AdderNet's gradient
(HardTanh(w − x) for the input, x − w for the weight) summed by hand and folded back by F.fold — in the eager path,
the compiled route (its computes run uncompiled, traced by aot_eager, and one Inductor case) and under an outer
torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from oracles import GEOMETRIES, geometry_id, masks
from oracles import conv as oracle_conv
from oracles import pair as _pair
from oracles import windows as _windows
from support import patch_run_compiled, record_compiled

import convcore.compile.cache as cc
from convcore import ADDERNET_GRAD, DistanceConv2d, distance_conv2d, window_op2d


def _neg_abs(x, w):
    return -(x - w).abs()


def _ht_dx(x, w):
    return F.hardtanh(w - x)


def _full_dw(x, w):
    return x - w


def _close_all(assert_close, actual, expected) -> None:
    for a, e in zip(actual, expected, strict=True):
        assert_close(a, e)


def _grouped_oracle(x, w, fn, reduce, groups, geometry, padding_mode="zeros"):
    """reduce over each window of fn(window, w), the windows of output channel o limited to o's group."""
    k, s, p, d = geometry
    cols, out_hw = _windows(x, _pair(k), s, p, d, padding_mode)  # [N, 1, C, kh, kw, L]
    O, Cg = w.shape[:2]
    Og = O // groups
    parts = []
    for g in range(groups):
        v = fn(cols[:, :, g * Cg : (g + 1) * Cg], w[g * Og : (g + 1) * Og, :, :, :, None])  # [N, O/G, Cg, kh, kw, L]
        parts.append(v.sum((2, 3, 4)) if reduce == "sum" else v.amax((2, 3, 4)))
    return torch.cat(parts, 1).view(x.shape[0], O, *out_hw)


def _adder_oracle_grads(x, w, g, padding):
    """AdderNet's backward from its paper, by hand on F.unfold columns (zero padding, stride 1):
    ∂L/∂w[o, k] = Σ_{n, l} g[n, o, l]·(x[n, k, l] − w[o, k]);
    ∂L/∂x = fold(Σ_o g[n, o, l]·HardTanh(w[o, k] − x[n, k, l]))."""
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    cols = F.unfold(x, (kh, kw), padding=padding)  # [N, C*kh*kw, L]
    wf = w.reshape(O, -1)  # [O, C*kh*kw]
    gl = g.reshape(N, O, -1)  # [N, O, L]
    diff = cols[:, None] - wf[None, :, :, None]  # [N, O, C*kh*kw, L]: x − w
    gw = (gl[:, :, None] * diff).sum((0, 3)).view_as(w)
    gcols = (gl[:, :, None] * F.hardtanh(-diff)).sum(1)  # [N, C*kh*kw, L]
    gx = F.fold(gcols, (H, W), (kh, kw), padding=padding)
    return gx, gw


@pytest.fixture
def direct(monkeypatch):
    """The compiled route with its computes called uncompiled."""
    patch_run_compiled(monkeypatch, lambda name, core, key, args, dynamic=(): core(*args))


@pytest.mark.parametrize("route", ["eager", "compiled"])
@pytest.mark.parametrize("reduce", ["sum", "max"])
@pytest.mark.parametrize("groups", [2, 4])
@pytest.mark.parametrize("geometry", GEOMETRIES[:4], ids=geometry_id)
def test_groups_equal_the_per_group_unfold_oracle(geometry, groups, reduce, route, device, assert_close, request):
    if route == "compiled":
        request.getfixturevalue("direct")
    k, s, p, d = geometry
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(8, 4 // groups, *_pair(k), dtype=torch.float64, device=device, requires_grad=True)

    def fn(a, c):
        return torch.exp(-((a - c) ** 2)) + 0.1 * a * c

    ref = _grouped_oracle(x, w, fn, reduce, groups, geometry, "reflect")
    kwargs = dict(stride=s, padding=p, dilation=d, padding_mode="reflect", groups=groups)
    y = window_op2d(x, w, fn, reduce=reduce, compile=route == "compiled", **kwargs)
    assert_close(y, ref)
    g = torch.randn_like(ref)
    _close_all(assert_close, torch.autograd.grad(y, (x, w), g), torch.autograd.grad(ref, (x, w), g))


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_grouped_product_is_grouped_conv2d(groups, device, assert_close):
    x = torch.randn(2, 6, 8, 9, dtype=torch.float64, device=device)
    w = torch.randn(6, 6 // groups, 3, 3, dtype=torch.float64, device=device)
    b = torch.randn(6, dtype=torch.float64, device=device)
    ref = oracle_conv(x, w, b, 1, 1, 1, groups, "replicate")
    mask = masks("box", 2, ref.shape[2:], device)
    y = window_op2d(x, w, lambda a, c: a * c, bias=b, padding=1, padding_mode="replicate", groups=groups, mask=mask)
    assert_close(y, ref * mask[:, None])


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("groups", [2, 4])
def test_distance_groups_equal_the_oracle(p, groups, device, assert_close):
    x = torch.randn(2, 4, 7, 8, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(8, 4 // groups, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    ref = _grouped_oracle(x, w, lambda a, c: -((a - c).abs() ** p), "sum", groups, (3, 1, 1, 1))
    y = distance_conv2d(x, w, p, padding=1, groups=groups, compile=False)
    assert_close(y, ref)
    g = torch.randn_like(ref)
    _close_all(assert_close, torch.autograd.grad(y, (x, w), g), torch.autograd.grad(ref, (x, w), g))
    layer = DistanceConv2d(4, 8, 3, padding=1, groups=groups, p=p).double().to(device)
    assert layer.weight.shape == (8, 4 // groups, 3, 3)
    assert_close(
        layer(x), _grouped_oracle(x, layer.weight, lambda a, c: -((a - c).abs() ** p), "sum", groups, (3, 1, 1, 1))
    )


@pytest.mark.parametrize("route", ["eager", "compiled"])
@pytest.mark.parametrize("mask_kind", ["none", "box", "sparse"])
def test_adder_gradient_equals_the_papers(mask_kind, route, device, assert_close, request):
    """window_op2d(fn=−|x − w|, grad=AdderNet's) and distance_conv2d(p=1, grad=...) against the paper's backward."""
    if route == "compiled":
        request.getfixturevalue("direct")
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    mask = masks(mask_kind, 2, (9, 10), device)
    g = torch.randn(2, 4, 9, 10, dtype=torch.float64, device=device)
    g = g if mask is None else g * mask[:, None]
    gx, gw = _adder_oracle_grads(x.detach(), w.detach(), g, 1)
    ref = -(F.unfold(x, 3, padding=1)[:, None] - w.reshape(4, -1, 1)).abs().sum(2).view(2, 4, 9, 10)
    for op in (
        lambda: window_op2d(x, w, _neg_abs, padding=1, mask=mask, grad=(_ht_dx, _full_dw), compile=route == "compiled"),
        lambda: distance_conv2d(x, w, 1, padding=1, mask=mask, grad=ADDERNET_GRAD, compile=route == "compiled"),
    ):
        y = op()
        assert_close(y, ref if mask is None else ref * mask[:, None])
        _close_all(assert_close, torch.autograd.grad(y, (x, w), g), (gx, gw))


def _adder_traced_oracle(x, w, groups, geometry, padding_mode):
    """−Σ|x − w| over each group's F.unfold windows whose backward is AdderNet's by construction: the detached value
    plus HardTanh(w̄ − x̄)·(x − x̄) + (x̄ − w̄)·(w − w̄) (zero, with those partial derivatives); F.unfold's backward
    folds the windows' input gradients back."""

    def fn(a, c):
        ad, cd = a.detach(), c.detach()
        return -(ad - cd).abs() + F.hardtanh(cd - ad) * (a - ad) + (ad - cd) * (c - cd)

    return _grouped_oracle(x, w, fn, "sum", groups, geometry, padding_mode)


@pytest.mark.parametrize("route", ["eager", "compiled"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("geometry", [(3, 1, 1, 1), (3, 2, 1, 1), ((2, 3), 1, "same", (2, 1))], ids=geometry_id)
def test_adder_weight_gradient_as_a_convolution(geometry, groups, route, ran_cores, device, assert_close):
    """AdderNet's weight gradient Σ g·(x − w) computed as a convolution's weight gradient minus w·Σ g (x − w is
    declared affine): exact against the oracle, with groups, stride, dilation and a reflected border; the fused
    band's weight reduction never runs."""
    if route == "eager":
        ran_cores.clear()
    k, s, p, d = geometry
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(6, 4 // groups, *_pair(k), dtype=torch.float64, device=device, requires_grad=True)
    ref = _adder_traced_oracle(x, w, groups, geometry, "reflect")
    kwargs = dict(stride=s, padding=p, dilation=d, groups=groups, padding_mode="reflect")
    y = distance_conv2d(x, w, 1, grad=ADDERNET_GRAD, compile=route == "compiled", **kwargs)
    assert_close(y, ref)
    g = torch.randn_like(ref)
    _close_all(assert_close, torch.autograd.grad(y, (x, w), g), torch.autograd.grad(ref, (x, w), g))
    assert "_band_grad_weight" not in ran_cores
    if route == "compiled" and _pair(s) == (1, 1):
        assert "_band_forward" in ran_cores  # the fused band ran (strided gradients take the tap form)


@pytest.fixture
def ran_cores(monkeypatch):
    """The compiled route with its computes called uncompiled; the names of those that ran."""
    return record_compiled(monkeypatch, lambda name, core: core.__name__)


@pytest.mark.parametrize("form", ["strided", "keep_window", "logsumexp"])
def test_custom_gradient_in_the_tap_form(form, direct, device, assert_close):
    """Where the fused band does not serve (strided patch gradients, keep_window, logsumexp), the tap form carries
    the custom gradient: against autograd of an fn whose own derivatives are the custom ones."""
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    kwargs = dict(stride=2) if form == "strided" else dict(keep_window=True) if form == "keep_window" else {}
    kwargs["reduce"] = "logsumexp" if form == "logsumexp" else "sum"
    # x·w has derivatives (w, x); declared through grad= on an fn whose own derivatives differ (x·w + x − x)
    y = window_op2d(
        x, w, lambda a, c: a * c + a.sin() - a.sin(), grad=(lambda a, c: c, lambda a, c: a), compile=True, **kwargs
    )
    ref = window_op2d(x, w, lambda a, c: a * c, compile=False, **kwargs)
    assert_close(y, ref)
    g = torch.randn_like(ref)
    _close_all(assert_close, torch.autograd.grad(y, (x, w), g), torch.autograd.grad(ref, (x, w), g))


def test_custom_gradient_under_an_outer_compile(monkeypatch, device, assert_close):
    """The dense form (an outer torch.compile, aot_eager backend) keeps the custom gradient."""
    monkeypatch.setattr(cc, "_BACKEND", "aot_eager")
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)

    def layer(x, w):
        return window_op2d(x, w, _neg_abs, padding=1, grad=(_ht_dx, _full_dw))

    y = torch.compile(layer, backend="aot_eager", fullgraph=True)(x, w)
    g = torch.randn_like(y)
    gx, gw = _adder_oracle_grads(x.detach(), w.detach(), g, 1)
    _close_all(assert_close, torch.autograd.grad(y, (x, w), g), (gx, gw))
    torch._dynamo.reset()


def test_custom_gradient_traced_and_inductor(monkeypatch, device, assert_close):
    """The fused band's derived backward with AdderNet's gradient, traced by aot_eager and compiled by Inductor,
    against the paper's backward; groups in the same call."""
    x = torch.randn(2, 4, 8, 9, device=device, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, device=device, requires_grad=True)
    g = torch.randn(2, 4, 8, 9, device=device)
    ref = _grouped_oracle(x, w, _neg_abs, "sum", 2, (3, 1, 1, 1))
    gx = torch.cat(
        [
            _adder_oracle_grads(
                x[:, 2 * k : 2 * k + 2].detach(), w[2 * k : 2 * k + 2].detach(), g[:, 2 * k : 2 * k + 2], 1
            )[0]
            for k in range(2)
        ],
        1,
    )
    gw = torch.cat(
        [
            _adder_oracle_grads(
                x[:, 2 * k : 2 * k + 2].detach(), w[2 * k : 2 * k + 2].detach(), g[:, 2 * k : 2 * k + 2], 1
            )[1]
            for k in range(2)
        ],
        0,
    )
    for backend in ("aot_eager", "inductor"):
        monkeypatch.setattr(cc, "_BACKEND", backend)
        try:
            y = window_op2d(x, w, _neg_abs, padding=1, groups=2, grad=(_ht_dx, _full_dw), compile=True)
            assert not [s for s in cc.compile_stats() if s["failed"]]
            assert_close(y, ref)
            _close_all(assert_close, torch.autograd.grad(y, (x, w), g), (gx, gw))
        finally:
            cc._reset()


def test_grad_must_be_a_pair_of_callables():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    for bad in (_ht_dx, (_ht_dx,), (_ht_dx, 1), "adder"):
        with pytest.raises(TypeError, match="grad must be None or a pair of callables"):
            window_op2d(x, w, _neg_abs, grad=bad)
    with pytest.raises(ValueError, match="divisible by groups"):
        window_op2d(torch.randn(1, 3, 5, 5), torch.randn(4, 1, 3, 3), _neg_abs, groups=2)


def _kornia_style(x, se, mode, border):
    """kornia's morphology by its definition, per channel with explicit loops over the element: dilation max over
    the window of x + se reflected, erosion min of x − se; the border ``geodesic`` (never wins) or replicated."""
    N, C, H, W = x.shape
    kh, kw = se.shape
    top, left = kh // 2, kw // 2
    fill = -torch.inf if mode == "dilation" else torch.inf
    if border == "geodesic":
        xp = F.pad(x, (left, kw - 1 - left, top, kh - 1 - top), value=fill)
    else:
        xp = F.pad(x, (left, kw - 1 - left, top, kh - 1 - top), mode="replicate")
    best = torch.full_like(x, fill)
    for m in range(kh):
        for q in range(kw):
            view = xp[:, :, m : m + H, q : q + W]
            if mode == "dilation":
                best = torch.maximum(best, view + se[kh - 1 - m, kw - 1 - q])
            else:
                best = torch.minimum(best, view - se[m, q])
    return best


@pytest.mark.parametrize("route", ["eager", "compiled"])
@pytest.mark.parametrize("border", ["geodesic", "replicate"])
@pytest.mark.parametrize("mode", ["dilation", "erosion"])
def test_kornia_style_morphology(mode, border, route, device, assert_close, request):
    """One element for all channels (a 2-D weight), kornia's reflected element for dilation (se.flip), and the
    geodesic border, against the definition with explicit loops; gradients reach the input and the element."""
    from convcore import morph_conv2d

    if route == "compiled":
        request.getfixturevalue("direct")
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, device=device, requires_grad=True)
    se = torch.rand(3, 3, dtype=torch.float64, device=device, requires_grad=True)
    ref = _kornia_style(x, se, mode, border)
    element = se.flip(0, 1) if mode == "dilation" else se
    y = morph_conv2d(x, element, mode, padding="same", padding_mode=border, compile=route == "compiled")
    assert_close(y, ref)
    g = torch.randn_like(ref)
    _close_all(assert_close, torch.autograd.grad(y, (x, se), g), torch.autograd.grad(ref, (x, se), g))


def test_morph_2d_weight_takes_groups_1_or_c():
    from convcore import morph_conv2d

    with pytest.raises(ValueError, match="2-D weight"):
        morph_conv2d(torch.randn(1, 4, 5, 5), torch.zeros(3, 3), groups=2)


def test_kervolution_recipes_equal_the_unfold_definition(device, assert_close):
    """Kervolution's polynomial (xᵀw + c)^d and Gaussian exp(−γ‖x − w‖²) kernels over each window, as the
    documented convcore one-liners, against F.unfold columns; with a mask, inside it."""
    from convcore import roi_conv2d

    x = torch.randn(2, 3, 8, 9, dtype=torch.float64, device=device)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device)
    cols = F.unfold(x, 3, padding=1)  # [N, C*9, L]
    wf = w.reshape(4, -1)
    poly = ((wf @ cols + 1.0) ** 3).view(2, 4, 8, 9)
    gauss = torch.exp(-0.5 * (cols[:, None] - wf[None, :, :, None]).square().sum(2)).view(2, 4, 8, 9)
    mask = masks("box", 2, (8, 9), device)
    assert_close((roi_conv2d(x, w, padding=1) + 1.0) ** 3, poly)
    assert_close(torch.exp(0.5 * distance_conv2d(x, w, 2, padding=1)), gauss)
    assert_close(torch.exp(0.5 * distance_conv2d(x, w, 2, padding=1, mask=mask)) * mask[:, None], gauss * mask[:, None])
