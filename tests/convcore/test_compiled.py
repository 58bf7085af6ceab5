"""compile=True: the compiled band reduction against the oracles, the eager ops and itself; fallbacks; recompiles.

Three tiers, to keep compile time (tens of seconds per function on the 2-core machine) out of the suite's budget:

* the grid (geometries × padding modes × mask kinds, every op family) runs the compiled route — the band form the
  compiler gets, the tiles engine's bands and window rows, the fallbacks' plumbing — with the compute called as is
  (``direct``), against the oracles;
* a few ``aot_eager`` cases trace it as Inductor would (Dynamo with ``fullgraph=True``, AOTAutograd's forward and
  backward) without generating code: gradients of every compiled family, an untraceable function;
* a few Inductor cases (one function, reused through the cache) check the generated kernels themselves: values and
  float64 gradients against eager, a closure over a tensor, no recompilation across sizes, a fullgraph model.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from oracles import GEOMETRIES, MODES, geometry_id, masks
from oracles import pair as _pair
from oracles import windows as _windows
from support import patch_run_compiled, record_compiled

import convcore.compile.cache as cc
import convcore.compile.dispatch as dispatch_mod
from convcore import (
    DistanceConv2d,
    MorphConv2d,
    adaptive_conv2d,
    adaptive_gaussian_blur2d,
    distance_conv2d,
    dynamic_conv2d,
    morph_conv2d,
    quadratic_conv2d,
    window_op2d,
)


def _rbf(a, c):
    return torch.exp(-((a - c) ** 2)) + 0.1 * a * c


def _huber(a, c):
    d = (a - c).abs()
    return torch.where(d < 1, 0.5 * d * d, d - 0.5)


@pytest.fixture
def direct(monkeypatch):
    """The compiled route with the compute called uncompiled (what the compiler is given, through the engines)."""
    run = lambda name, core, key, args, dynamic=(): core(*args)  # noqa: E731
    patch_run_compiled(monkeypatch, run)


@pytest.fixture
def traced(monkeypatch):
    """The compiled path with the aot_eager backend (tracing + AOTAutograd, no code generation)."""
    monkeypatch.setattr(cc, "_BACKEND", "aot_eager")
    yield
    cc._reset()


@pytest.fixture(scope="module")
def inductor():
    """The compiled path with Inductor; entries stay cached across this module's Inductor tests."""
    if cc.compiler_missing(torch.device("cpu")) is not None:
        pytest.fail(f"the compiled tests need a C++ compiler: {cc.compiler_missing(torch.device('cpu'))}")
    yield
    cc._reset()


def _no_fallback() -> None:
    failed = [s for s in cc.compile_stats() if s["failed"]]
    assert not failed, failed


@pytest.mark.parametrize("mask_kind", ["none", "box", "sparse"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=geometry_id)
def test_compiled_form_window_op_equals_the_unfold_oracle(geometry, mask_kind, direct, device, assert_close):
    k, s, p, d = geometry
    x = torch.randn(2, 3, 10, 11, dtype=torch.float64, device=device)
    w = torch.randn(4, 3, *_pair(k), dtype=torch.float64, device=device)
    b = torch.randn(4, dtype=torch.float64, device=device)
    for mode in MODES:
        cols, out_hw = _windows(x, _pair(k), s, p, d, mode)  # [N, 1, C, kh, kw, L]
        v = _rbf(cols, w[None, :, :, :, :, None])  # [N, O, C, kh, kw, L]
        mask = masks(mask_kind, 2, out_hw, device)
        for reduce, ref in (("sum", v.sum((2, 3, 4))), ("max", v.amax((2, 3, 4)))):
            ref = (ref + b[:, None]).view(2, 4, *out_hw)
            y = window_op2d(x, w, _rbf, reduce=reduce, bias=b, mask=mask, stride=s, padding=p, dilation=d,
                            padding_mode=mode, compile=True)  # fmt: skip
            assert_close(y, ref if mask is None else ref * mask[:, None])
    _no_fallback()


@pytest.mark.parametrize("reduce", ["mean", "min", "logsumexp"])
@pytest.mark.parametrize("keep_window", [False, True])
def test_compiled_form_reductions_and_keep_window_equal_eager(reduce, keep_window, direct, device, assert_close):
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64, device=device)
    w = torch.randn(2, 3, 3, 2, dtype=torch.float64, device=device)
    b = torch.randn(2, dtype=torch.float64, device=device)
    for kind in ("none", "mixed"):
        mask = masks(kind, 2, (9, 11), device)
        args = dict(reduce=reduce, keep_window=keep_window, bias=b, mask=mask, padding=(1, 1), padding_mode="reflect")
        assert_close(window_op2d(x, w, _rbf, compile=True, **args), window_op2d(x, w, _rbf, compile=False, **args))
    _no_fallback()


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=geometry_id)
def test_compiled_form_op_families_equal_oracles(geometry, direct, device, assert_close):
    k, s, p, d = geometry
    x = torch.randn(2, 4, 10, 9, dtype=torch.float64, device=device)
    w = torch.randn(4, 4, *_pair(k), dtype=torch.float64, device=device)
    se = torch.randn(4, 2, *_pair(k), dtype=torch.float64, device=device)
    geo = dict(stride=s, padding=p, dilation=d)
    for mode in MODES:
        cols, out_hw = _windows(x, _pair(k), s, p, d, mode)  # [N, 1, C, kh, kw, L]
        adder = -(cols - w[None, :, :, :, :, None]).abs().sum((2, 3, 4)).view(2, 4, *out_hw)
        xg = cols.view(2, 2, 1, 2, *_pair(k), -1)  # [N, G, 1, Cg, kh, kw, L]
        sg = se.view(2, 2, 2, *_pair(k))[None, ..., None]  # [1, G, O/G, Cg, kh, kw, 1]
        dil = (xg + sg).amax((3, 4, 5)).reshape(2, 4, *out_hw)  # [N, O, H_out, W_out] (o = g·O/G + j)
        for kind in ("none", "box", "sparse"):
            m = masks(kind, 2, out_hw, device)
            keep = 1 if m is None else m[:, None]
            y = distance_conv2d(x, w, 1, mask=m, padding_mode=mode, compile=True, **geo)
            assert_close(y, adder * keep)
            y = morph_conv2d(x, se, "dilation", mask=m, groups=2, padding_mode=mode, compile=True, **geo)
            assert_close(y, dil * keep)
    _no_fallback()


@pytest.mark.parametrize("mask_kind", ["none", "box", "sparse"])
def test_compiled_form_per_location_ops_equal_eager(mask_kind, direct, device, assert_close):
    x = torch.randn(2, 4, 10, 9, dtype=torch.float64, device=device)
    kernel = torch.randn(2, 2, 3, 3, 10, 9, dtype=torch.float64, device=device)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64, device=device)
    sigma = torch.rand(2, 1, 10, 9, dtype=torch.float64, device=device) + 0.2
    lin = torch.randn(36, 3 * 36, dtype=torch.float64, device=device) / 6
    m = masks(mask_kind, 2, (10, 9), device)
    for c in (True, False):
        got = [
            adaptive_conv2d(x, kernel, w, mask=m, padding=1, padding_mode="reflect", compile=c),
            adaptive_conv2d(x, kernel, mask=m, padding=1, compile=c),
            adaptive_gaussian_blur2d(x, sigma, 3, "symmetric", mask=m, compile=c),
            dynamic_conv2d(x, lambda p: torch.tanh(p @ lin).view(-1, 3, 36), 3, 3, mask=m, padding=1, compile=c),
        ]
        if c:
            compiled = got
    for a, b in zip(compiled, got):
        assert_close(a, b)
    _no_fallback()


def test_traced_gradients_equal_eager(traced, device, assert_close):
    x = torch.randn(2, 3, 8, 7, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    mask = masks("mixed", 2, (8, 7), device)
    for op in (
        lambda c: window_op2d(x, w, _huber, bias=b, mask=mask, padding=1, padding_mode="replicate", compile=c),
        lambda c: window_op2d(x, w, _rbf, reduce="logsumexp", keep_window=True, mask=mask, padding=1, compile=c),
        lambda c: distance_conv2d(x, w, 1, b, mask=mask, padding=1, compile=c),
        lambda c: morph_conv2d(x, w, "erosion", mask=mask, padding=1, compile=c),
    ):
        grads = [torch.autograd.grad(op(c).square().sum(), (x, w)) for c in (True, False)]
        for a, e in zip(*grads):
            assert_close(a, e)
    _no_fallback()


def test_use_compiled_rule_and_bad_values():
    cpu = torch.device("cpu")
    assert cc.use_compiled(True, cpu, 0) and not cc.use_compiled(False, cpu, 10**12)
    assert cc.use_compiled("auto", cpu, cc.AUTO_MIN_WORK) == (cc.compiler_missing(cpu) is None)
    assert not cc.use_compiled("auto", cpu, cc.AUTO_MIN_WORK - 1)
    assert not cc.use_compiled("auto", cpu, 10**12, generic=False)
    x, w = torch.randn(1, 2, 5, 5), torch.randn(2, 2, 3, 3)
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="compile must be True, False or 'auto'"):
            window_op2d(x, w, _huber, compile=bad)
    with pytest.raises(ValueError, match="compile must be"):
        MorphConv2d(2, 2, 3, compile="on")


def test_auto_keeps_a_function_compiled_once_it_was(monkeypatch, device, assert_close):
    """compile="auto": a small call runs eagerly until the same function was compiled by a large one; from then on
    its small calls (a 10% ROI) take the compiled path too."""
    if cc.compiler_missing(torch.device(device)) is not None:
        pytest.fail("needs a compiler so that compile='auto' may take the compiled route")
    ran = record_compiled(monkeypatch)
    monkeypatch.setattr(cc, "AUTO_MIN_WORK", 2 * 3 * 16 * 16 * 3 * 9)  # the large call below, not the small one
    try:
        x, w = torch.randn(2, 3, 16, 16, device=device), torch.randn(3, 3, 3, 3, device=device)
        small = masks("box", 2, (16, 16), device)

        def fn(a, c):  # a fresh function: nothing in the process compiled it before
            return (a - c).abs()

        window_op2d(x, w, fn, padding=1, mask=small)
        assert ran == []
        window_op2d(x, w, fn, padding=1)
        assert ran and set(ran) == {"window_op2d"}
        ran.clear()
        y = window_op2d(x, w, fn, padding=1, mask=small)
        assert ran
        assert_close(y, window_op2d(x, w, fn, padding=1, mask=small, compile=False))
    finally:
        cc._reset()


def test_function_key_follows_code_and_closure():
    s1, s2 = torch.ones(3), torch.zeros(3)
    make = lambda t, p: lambda a, c: (a - c * t).abs() ** p  # noqa: E731
    assert cc.function_key(make(s1, 2)) == cc.function_key(make(s2, 2))  # tensor values are graph inputs
    assert cc.function_key(make(s1, 2)) != cc.function_key(make(s1, 3))  # constants are traced in
    assert cc.function_key(make(s1, 2)) != cc.function_key(_huber)


def test_untraceable_function_falls_back_and_warns(traced, device, assert_close):
    def fn(a, c):
        return a * c if float((a * c).sum()) > 0 else a - c  # data-dependent control flow

    x, w = torch.randn(1, 2, 6, 6, device=device), torch.randn(2, 2, 3, 3, device=device)
    with pytest.warns(RuntimeWarning, match="window_op2d: Dynamo cannot trace it"):
        y = window_op2d(x, w, fn, padding=1, compile=True)
    assert_close(y, window_op2d(x, w, fn, padding=1, compile=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call falls back silently
        window_op2d(x, w, fn, padding=1, compile=True)


def test_missing_compiler_falls_back_and_warns_once(monkeypatch, device, assert_close):
    if device.type != "cpu":
        pytest.skip("the C++ compiler is the CPU backend's")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    x, w = torch.randn(2, 2, 7, 6), torch.randn(3, 2, 3, 3)
    try:
        with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler: CXX='/nonexistent/c\\+\\+'") as record:
            ys = [
                window_op2d(x, w, _huber, padding=1, compile=True),
                morph_conv2d(x, w, padding=1, compile=True),
                distance_conv2d(x, w, 1, padding=1, compile=True),
            ]
        assert len([r for r in record if "C++" in str(r.message)]) == 1
        assert_close(ys[0], window_op2d(x, w, _huber, padding=1, compile=False))
        assert_close(ys[1], morph_conv2d(x, w, padding=1, compile=False))
        assert_close(ys[2], distance_conv2d(x, w, 1, padding=1, compile=False))
        assert cc.compile_stats() == []  # nothing was even traced
    finally:
        cc._reset()


def test_inductor_values_and_float64_gradients_equal_eager(inductor, device, assert_close):
    x = torch.randn(2, 3, 12, 11, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    for kind in ("box",):  # whole and partial bands (an Inductor compile costs tens of seconds here: one kind)
        mask = masks(kind, 2, (12, 11), device)
        res = []
        for c in (True, False):
            y = window_op2d(x, w, _huber, bias=b, mask=mask, padding=1, padding_mode="reflect", compile=c)
            res.append((y, *torch.autograd.grad(y.square().sum(), (x, w, b))))
        for a, e in zip(*res):
            assert_close(a, e)
    _no_fallback()
    assert any(s["calls"] > 0 and s["compile_seconds"] for s in cc.compile_stats())


def test_inductor_no_recompile_across_chunk_and_image_sizes(inductor, device, assert_close):
    from torch._dynamo.utils import counters

    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)

    def run(h: int, wd: int) -> None:
        x = torch.randn(2, 3, h, wd, dtype=torch.float64, device=device, requires_grad=True)
        window_op2d(x, w, _huber, bias=b, padding=1, padding_mode="reflect", compile=True).sum().backward()

    run(12, 11)
    run(20, 17)  # sizes beyond the first are dynamic from the start: no recompilation from here on
    graphs = counters["stats"]["unique_graphs"]
    for h, wd in ((33, 9), (7, 40), (64, 64)):
        run(h, wd)
    assert counters["stats"]["unique_graphs"] == graphs
    _no_fallback()


def test_inductor_closure_over_a_tensor_follows_its_value(inductor, device, assert_close):
    x, w = torch.randn(2, 3, 9, 9, device=device), torch.randn(2, 3, 3, 3, device=device)
    entries = None

    def scaled(t: torch.Tensor):
        return lambda a, c: (a - c * t).abs()  # closes over a tensor

    for scale in (0.5, 2.0):
        fn = scaled(torch.tensor(scale, device=device))
        y = window_op2d(x, w, fn, padding=1, compile=True)
        assert_close(y, window_op2d(x, w, fn, padding=1, compile=False))
        entries = entries or len(cc.compile_stats())
    assert len(cc.compile_stats()) == entries  # the second closure hit the first one's entry
    _no_fallback()


class _SmallNet(torch.nn.Module):
    def __init__(self, compile: bool) -> None:
        super().__init__()
        self.compile_ops = compile
        self.w = torch.nn.Parameter(torch.randn(4, 3, 3, 3) / 5)
        self.adder = DistanceConv2d(4, 4, 3, padding=1, compile=compile)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = window_op2d(x, self.w, _huber, padding=1, mask=mask, compile=self.compile_ops)
        y = F.relu(self.adder(y) / 10)
        a = self.w.transpose(0, 1)[:2]  # [2, 4, 3, 3]
        return quadratic_conv2d(y, a, a, padding=1, padding_mode="reflect")


def test_fullgraph_model_equals_eager(inductor, device, assert_close):
    """A model of convcore ops on the compiled path under torch.compile(fullgraph=True): no graph break, the eager
    model's values, and gradients reach every parameter. (Morph's compiled form is covered by the mutations and the
    traced tier; one more compiled op family here would double this test's compile time.)"""
    torch.manual_seed(0)
    net = _SmallNet(compile=True).to(device)
    ref_net = _SmallNet(compile=False).to(device)
    ref_net.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 16, 14, device=device)
    mask = masks("box", 2, (16, 14), device)
    ref = ref_net(x, mask)
    y = torch.compile(net, fullgraph=True)(x, mask)  # raises on any graph break
    assert_close(y, ref)
    y.sum().backward()
    ref.sum().backward()
    assert_close(net.w.grad, ref_net.w.grad)
    assert_close(net.adder.weight.grad, ref_net.adder.weight.grad)


def test_a_compiled_pass_that_falls_back_is_rerun_eagerly(monkeypatch, device, assert_close):
    """A compiled band compute that falls back (CannotCompile inside the engine pass): the pass runs again eagerly
    and writes every position."""
    import convcore.adaptive as adaptive_mod

    if cc.compiler_missing(torch.device(device)) is not None:
        pytest.fail("needs a compiler so that compile=True takes the compiled route")
    calls = []

    def fall_back(name, core, key, args, dynamic=()):
        calls.append(name)
        raise cc.CannotCompile(name, "a test")

    monkeypatch.setattr(adaptive_mod, "run_compiled", fall_back)
    x = torch.randn(1, 2, 30, 40, device=device)
    sigma = torch.rand(1, 1, 30, 40, device=device) * 2
    y = adaptive_gaussian_blur2d(x, sigma, 3, "reflect", compile=True)
    assert calls == ["adaptive_gaussian_blur2d"]  # the compiled route was taken once, then eager
    assert_close(y, adaptive_gaussian_blur2d(x, sigma, 3, "reflect", compile=False))


def test_auto_compiles_a_layer_once_its_eager_calls_paid_for_a_compile(monkeypatch, device, assert_close):
    """compile="auto" (the default) on a training layer of distance p=1: eager while the layer's eager time is below
    AUTO_EAGER_SECONDS (counted three times under autograd), compiled from then on, at any spatial size; the same
    for morphology, whose compiled forms measured faster than its eager loop."""
    if cc.compiler_missing(torch.device(device)) is not None:
        pytest.fail("needs a compiler so that compile='auto' may take the compiled route")
    ran = record_compiled(monkeypatch)
    spent = {}

    def count(layer, seconds):
        spent[layer] = seconds
        cc.spent_eager(layer, seconds)

    monkeypatch.setattr(cc, "AUTO_EAGER_SECONDS", 1e-9)  # any eager call pays for the compile
    monkeypatch.setattr(dispatch_mod, "spent_eager", count)
    try:
        layers = (
            (DistanceConv2d(3, 4, 3, padding=1).to(device), "distance_conv2d"),
            (MorphConv2d(3, 3, 3, padding=1, groups=3).to(device), "morph_conv2d"),
        )
        for layer, name in layers:
            x = torch.randn(1, 3, 8, 8, device=device)
            eager = layer(x)  # eager, and counted
            assert name not in ran and len(spent) == 1
            compiled = layer(x)
            assert ran and ran[-1] == name  # the same layer now compiled
            assert_close(compiled, eager)
            compiled.sum().backward()
            ran.clear()
            spent.clear()
            layer(torch.randn(1, 3, 9, 9, device=device))  # other spatial size: the same layer, still compiled
            assert ran
            ran.clear()
    finally:
        cc._reset()
