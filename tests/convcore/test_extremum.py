"""morph_conv2d's compiled tap form (convcore.compile.extremum): the max/min of x + w as one elementwise chain with
the winner's index, and its gather (stride 1) / scatter (strided) backward, against the definition — F.unfold windows
of the numpy-padded input reduced by amax/amin (oracles.morph) — forward and both gradients, over geometries,
groups (depthwise, with a channel multiplier, several channels a group), padding modes (geodesic included) and
masks. The computes run uncompiled (which ran is recorded); one case goes through Inductor."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from oracles import GEOMETRIES, geometry_id, masked, masks
from oracles import morph as oracle_morph
from oracles import pair as _pair
from support import record_compiled

import convcore.compile.cache as cc
from convcore import morph_conv2d
from convcore.compile.extremum import TAP_FORM_MAX_ELEMENTS, pad_zeros

# (C, O, groups): depthwise, depthwise with two outputs a channel, two channels a group
GROUPINGS = [(4, 4, 4), (4, 8, 4), (4, 6, 2)]


@pytest.fixture
def ran(monkeypatch):
    """Run every compiled core uncompiled; the list of (module, core) that ran."""
    return record_compiled(monkeypatch, lambda name, core: (core.__module__.rsplit(".", 1)[-1], core.__name__))


def _check(x, w, mode, assert_close, **kwargs):
    """morph_conv2d compiled against the oracle: value and the gradients of input and weight."""
    mask = kwargs.pop("mask", None)
    ref = masked(oracle_morph(x, w, mode, **kwargs), mask)
    y = morph_conv2d(x, w, mode, mask=mask, compile=True, **kwargs)
    assert_close(y, ref)
    g = torch.randn_like(ref)
    for a, e in zip(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(ref, (x, w), g), strict=True):
        assert_close(a, e)


@pytest.mark.parametrize("mask_kind", ["none", "box"])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
@pytest.mark.parametrize("grouping", GROUPINGS, ids=lambda g: f"C{g[0]}O{g[1]}G{g[2]}")
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=geometry_id)
def test_tap_form_equals_the_definition(geometry, grouping, padding_mode, mask_kind, ran, device, assert_close):
    k, s, p, d = geometry
    C, O, G = grouping
    x = torch.randn(2, C, 9, 10, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(O, C // G, *_pair(k), dtype=torch.float64, device=device, requires_grad=True)
    mask = masks(mask_kind, 2, oracle_morph(x, w, stride=s, padding=p, dilation=d, groups=G).shape[2:], device)
    for mode in ("dilation", "erosion"):
        geo = dict(stride=s, padding=p, dilation=d, groups=G, padding_mode=padding_mode)
        _check(x, w, mode, assert_close, mask=mask, **geo)
    cores = {name for module, name in ran if module == "extremum"}
    assert "_band_forward" in cores and not {name for module, name in ran if module != "extremum"}
    if _pair(s) == (1, 1):  # the gathered patch gradient (strided calls scatter it eagerly)
        assert "_band_grad_patch" in cores


@pytest.mark.parametrize("mode", ["dilation", "erosion"])
def test_geodesic_border_never_wins(mode, ran, device, assert_close):
    """padding_mode="geodesic": the definition over the input padded with −inf (dilation) / +inf (erosion)."""
    x = torch.randn(2, 3, 8, 7, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(3, 1, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    y = morph_conv2d(x, w, mode, padding="same", groups=3, padding_mode="geodesic", compile=True)
    fill = -math.inf if mode == "dilation" else math.inf
    ref = oracle_morph(F.pad(x, (0, 1, 1, 1), value=fill), w, mode, groups=3)  # "same" for (3, 2): rows 1+1, cols 0+1
    assert_close(y, ref)
    g = torch.randn_like(ref)
    for a, e in zip(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(ref, (x, w), g), strict=True):
        assert_close(a, e)
    assert ("extremum", "_band_grad_patch") in ran


def test_many_window_elements_take_the_fused_band(ran, device, assert_close):
    """Beyond TAP_FORM_MAX_ELEMENTS elements per window the unrolled chain would be too long: the fused band runs."""
    C = TAP_FORM_MAX_ELEMENTS // 9 + 1
    x = torch.randn(1, C, 7, 7, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(2, C, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    _check(x, w, "dilation", assert_close, padding=1)
    assert {module for module, _ in ran} == {"fused"}


def test_pad_zeros_equals_f_pad(device):
    x = torch.randn(2, 3, 5, 4, device=device)
    for pad in ((1, 1, 1, 1), (0, 2, 3, 0), (0, 0, 0, 0)):
        top, bottom, left, right = pad
        assert torch.equal(pad_zeros(x, pad), F.pad(x, (left, right, top, bottom)))
    assert torch.equal(pad_zeros(x, (1, 0, 0, 1), value=-1), F.pad(x, (0, 1, 1, 0), value=-1))


def test_inductor_depthwise_forward_and_backward(device, assert_close):
    """The three kernels compiled by Inductor (forward with winners, gathered patch gradient, weight gradient)."""
    if cc.compiler_missing(torch.device(device)) is not None:
        pytest.fail(f"needs a compiler: {cc.compiler_missing(torch.device(device))}")
    try:
        x = torch.randn(2, 4, 12, 11, dtype=torch.float64, device=device, requires_grad=True)
        w = torch.randn(4, 1, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
        _check(x, w, "dilation", assert_close, padding=1, groups=4)
        assert not any(e["failed"] for e in cc.compile_stats())
    finally:
        cc._reset()
