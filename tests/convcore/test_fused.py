"""The fused Triton kernel against F.pad + F.conv2d (numpy's pad for "symmetric"), masked.

On the CPU the kernel runs under Triton's interpreter: the ``interpreter`` fixture sets ``TRITON_INTERPRET=1`` for
this module (the kernel is jitted on its first call, so setting it after ``import triton`` is enough). With
``--device cuda`` the same tests run the compiled kernel. Shapes are tiny: the interpreter runs each program in
Python. Without triton installed the module is skipped, except under CI=true, where that is an error.
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convcore

try:
    import triton  # noqa: F401
except ImportError:
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip("triton is not installed (pip install triton): the fused kernel is untested", allow_module_level=True)

from convcore.kernels import fused_available, fused_conv2d_active, fused_roi_conv2d
from convcore.kernels import roi_conv as roi_conv_module

MODES = ("zeros", "reflect", "replicate", "circular", "symmetric")


@pytest.fixture(scope="module", autouse=True)
def interpreter(request: pytest.FixtureRequest):
    """TRITON_INTERPRET=1 while this module runs on the CPU (on a GPU: no TF32, to hold float32 tolerances)."""
    on_cpu = torch.device(request.config.getoption("--device")).type == "cpu"
    old = os.environ.get("TRITON_INTERPRET")
    tf32 = torch.backends.cudnn.allow_tf32
    if on_cpu:
        os.environ["TRITON_INTERPRET"] = "1"
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = tf32
    if old is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = old


def reference(x, w, b, mask, *, stride=1, pad=(0, 0, 0, 0), dilation=1, groups=1, mode="zeros"):
    """Dense oracle in float64: pad by ``mode`` (numpy for "symmetric"), F.conv2d with padding 0, zero outside."""
    top, bottom, left, right = pad
    x64 = x.detach().double()
    if mode == "symmetric":
        padded = np.pad(x64.cpu().numpy(), ((0, 0), (0, 0), (top, bottom), (left, right)), mode="symmetric")
        xp = torch.from_numpy(padded).to(x.device)
    elif mode == "zeros":
        xp = F.pad(x64, (left, right, top, bottom))
    else:
        xp = F.pad(x64, (left, right, top, bottom), mode=mode)
    bias = None if b is None else b.detach().double()
    y = F.conv2d(xp, w.detach().double(), bias, stride, 0, dilation, groups)
    return y * mask[:, None]


def check(actual, expected, tol):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual.double() - expected).abs().max().item() if actual.numel() else 0.0
    scale = max(1.0, expected.abs().max().item() if expected.numel() else 0.0)
    assert err <= tol * scale, f"max abs error {err:.3g} > {tol} x {scale:.3g}"


# (N, C, O, H, W, kernel, stride, pad (top, bottom, left, right), dilation, groups)
CONFIGS = {
    "plain": (2, 3, 4, 6, 7, (3, 3), 1, (1, 1, 1, 1), 1, 1),
    "stride2-groups2": (1, 4, 6, 7, 6, (3, 3), 2, (1, 1, 1, 1), 1, 2),
    "depthwise-dilated": (1, 3, 3, 7, 7, (3, 2), (1, 2), (2, 2, 1, 1), (2, 1), 3),
    "dot-path": (1, 16, 16, 5, 5, (3, 3), 1, (1, 1, 1, 1), 1, 1),
    "even-kernel-asymmetric": (1, 2, 3, 5, 6, (2, 2), 1, (0, 1, 0, 1), 1, 1),
    "padding-at-the-limit": (1, 2, 2, 4, 5, (3, 3), 1, (3, 3, 4, 4), 1, 1),  # reflect's limit: pad = size - 1
}


def make(config, dtype, device, seed=0):
    N, C, O, H, W, k, stride, pad, dilation, groups = config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=gen).to(device, dtype)
    w = torch.randn(O, C // groups, *k, generator=gen).to(device, dtype)
    b = torch.randn(O, generator=gen).to(device, dtype)
    s = (stride, stride) if isinstance(stride, int) else stride
    d = (dilation, dilation) if isinstance(dilation, int) else dilation
    Ho = (H + pad[0] + pad[1] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    Wo = (W + pad[2] + pad[3] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    mask = (torch.rand(N, Ho, Wo, generator=gen) < 0.5).to(device)
    kwargs = dict(stride=stride, pad=pad, dilation=dilation, groups=groups)
    return x, w, b, mask, kwargs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_padded_conv(name, mode, device, tolerances):
    x, w, b, mask, kw = make(CONFIGS[name], torch.float32, device)
    y = fused_roi_conv2d(x, w, b, mask, padding_mode=mode, **kw)
    check(y, reference(x, w, b, mask, mode=mode, **kw), tolerances[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", ["dot-path", "stride2-groups2"])
def test_dtypes_match_reference(name, dtype, device, tolerances):
    x, w, b, mask, kw = make(CONFIGS[name], dtype, device)
    y = fused_roi_conv2d(x, w, b, mask, padding_mode="reflect", **kw)
    assert y.dtype == dtype
    # The oracle convolves the same rounded inputs in float64: what is left is the output rounding.
    check(y, reference(x, w, b, mask, mode="reflect", **kw), tolerances[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels", [16, 2])  # tl.dot path, rank-1 update path
def test_accumulates_in_fp32_not_in_the_input_dtype(channels, dtype, device):
    """One big tap and many ones: accumulated in the input dtype the ones vanish against the big value."""
    big = 2048.0 if dtype == torch.float16 else 256.0  # where the dtype's spacing becomes 2
    x = torch.ones(1, channels, 3, 3, dtype=dtype, device=device)
    x[0, 0, 0, 0] = big
    w = torch.ones(channels, channels, 3, 3, dtype=dtype, device=device)
    mask = torch.ones(1, 1, 1, dtype=torch.bool, device=device)
    y = fused_roi_conv2d(x, w, None, mask)
    exact = big + channels * 9 - 1
    assert y.dtype == dtype
    # fp32 sum, one rounding at the store: within the spacing (2) of exact; a sum in the input dtype stays near big.
    assert (y.double() - exact).abs().max().item() <= 2


def _masks(n, ho, wo, device):
    border = torch.ones(n, ho, wo, dtype=torch.bool)
    border[:, 1:-1, 1:-1] = False
    single = torch.zeros(n, ho, wo, dtype=torch.bool)
    single[-1, -1, 0] = True
    return {
        "empty": torch.zeros(n, ho, wo, dtype=torch.bool, device=device),
        "full": torch.ones(n, ho, wo, dtype=torch.bool, device=device),
        "border": border.to(device),
        "single": single.to(device),
    }


@pytest.mark.parametrize("kind", ["empty", "full", "border", "single"])
def test_mask_kinds_and_out_untouched_outside(kind, device):
    x, w, b, _, kw = make(CONFIGS["plain"], torch.float32, device, seed=1)
    mask = _masks(2, 6, 7, device)[kind]
    fresh = fused_roi_conv2d(x, w, b, mask, padding_mode="symmetric", **kw)
    expected = reference(x, w, b, mask, mode="symmetric", **kw)
    check(fresh, expected, 1e-4)
    before = torch.randn(2, 4, 6, 7, device=device)
    out = before.clone()
    returned = fused_roi_conv2d(x, w, b, mask, padding_mode="symmetric", out=out, **kw)
    assert returned is out
    keep = ~mask[:, None].expand_as(out)
    assert torch.equal(out[keep], before[keep])  # bit-identical outside the mask
    check(out * mask[:, None], expected, 1e-4)
    if kind == "full":
        dense = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, b)  # a different mode must not match
        assert not torch.allclose(fresh, dense, atol=1e-3)


def test_active_list_any_order_and_strided_tensors(device):
    """The low-level op: unsorted active indices, a channels-last input, a non-contiguous out."""
    x, w, b, mask, kw = make(CONFIGS["stride2-groups2"], torch.float32, device, seed=2)
    active = torch.nonzero(mask.reshape(-1)).reshape(-1).flip(0)
    Ho, Wo = mask.shape[1:]
    base = torch.full((1, Wo, 6, Ho), 7.0, device=device)
    out = base.permute(0, 2, 3, 1)  # [N, O, Ho, Wo], not contiguous
    x_cl = x.contiguous(memory_format=torch.channels_last)
    top, _, left, _ = kw.pop("pad")
    fused_conv2d_active(x_cl, w, b, active, out, pad=(top, left), padding_mode="circular", **kw)
    expected = reference(x, w, b, mask, mode="circular", pad=(top, 1, left, 1), **kw)
    check(out * mask[:, None], expected, 1e-4)
    assert bool((out[~mask[:, None].expand_as(out)] == 7.0).all())


@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_dense_masked_reference(mode, device):
    x, w, b, mask, kw = make(CONFIGS["stride2-groups2"], torch.float64, device, seed=3)
    kw["pad"] = (2, 1, 1, 2)  # input 7×6, 3×3 kernel, stride 2: output 4×4
    Ho, Wo = 4, 4
    mask = (torch.rand(1, Ho, Wo, generator=torch.Generator().manual_seed(4)) < 0.5).to(device)
    gy = torch.randn(1, 6, Ho, Wo, dtype=torch.float64).to(device)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    fused_roi_conv2d(*leaves, mask, padding_mode=mode, **kw).backward(gy)
    ref_leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    top, bottom, left, right = kw.pop("pad")
    xr, wr, br = ref_leaves
    if mode == "symmetric":  # numpy's symmetric pad as an index map, so autograd folds the padding back
        rows = torch.from_numpy(np.pad(np.arange(7), (top, bottom), mode="symmetric")).to(device)
        cols = torch.from_numpy(np.pad(np.arange(6), (left, right), mode="symmetric")).to(device)
        xp = xr[:, :, rows][:, :, :, cols]
    else:
        xp = F.pad(xr, (left, right, top, bottom), mode="constant" if mode == "zeros" else mode)
    (F.conv2d(xp, wr, br, **kw) * mask[:, None]).backward(gy)
    for got, want in zip(leaves, ref_leaves):
        check(got.grad, want.grad.double(), 1e-10)


def test_gradcheck_tiny(device):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, generator=gen).to(device).requires_grad_()
    w = torch.randn(2, 1, 2, 3, dtype=torch.float64, generator=gen).to(device).requires_grad_()
    b = torch.randn(2, dtype=torch.float64, generator=gen).to(device).requires_grad_()
    mask = torch.tensor([[[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 1], [0, 0, 1, 1]]], dtype=torch.bool, device=device)

    def fn(x, w, b):
        return fused_roi_conv2d(x, w, b, mask, pad=(1, 0, 1, 1), groups=2, padding_mode="reflect")

    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=True)


def test_out_with_autograd(device):
    x, w, b, mask, kw = make(CONFIGS["plain"], torch.float64, device, seed=6)
    w.requires_grad_()
    out = torch.full((2, 4, 6, 7), 3.0, dtype=torch.float64, device=device)
    fused_roi_conv2d(x, w, b, mask, out=out, **kw).sum().backward()
    assert bool((out[~mask[:, None].expand_as(out)] == 3.0).all())
    wr = w.detach().clone().requires_grad_()
    (F.conv2d(x, wr, b, padding=1) * mask[:, None]).sum().backward()
    check(w.grad, wr.grad, 1e-10)


def test_docstring_example():
    result = doctest.testmod(roi_conv_module, raise_on_error=False, verbose=False)
    assert result.attempted >= 10 and result.failed == 0


def test_errors(device, monkeypatch):
    x, w, b, mask, kw = make(CONFIGS["plain"], torch.float32, device)
    out = torch.zeros(2, 4, 6, 7, device=device)
    act = torch.tensor([0, 3], device=device)
    cases = [
        (
            ValueError,
            "reflects or wraps",
            dict(pad=(6, 6, 1, 1), mask=torch.ones(2, 16, 7, dtype=torch.bool), padding_mode="reflect"),
        ),
        (ValueError, "padding_mode must be", dict(padding_mode="mirror")),
        (ValueError, "groups=2 needs", dict(groups=2)),
        (ValueError, "mask must have shape", dict(mask=mask[:, :-1])),
        (TypeError, "mask must be a bool", dict(mask=mask.float())),
        (TypeError, "weight must have the input's dtype", dict(w=w.double())),
        (TypeError, "input must be float16", dict(x=x.int(), w=w.int(), b=b.int())),
        (ValueError, "out must have shape", dict(out=out[:, :, :-1])),
        (ValueError, "stride must be >= 1", dict(stride=0)),
    ]
    for exc, text, change in cases:
        args = dict(x=x, w=w, b=b, mask=mask, **kw)
        args.update(change)
        args["mask"] = args["mask"].to(device)
        with pytest.raises(exc, match=text):
            fused_roi_conv2d(args.pop("x"), args.pop("w"), args.pop("b"), args.pop("mask"), **args)
    with pytest.raises(ValueError, match=r"active indices must lie in .* = \[0, 84\), got \[82, 85\]"):
        fused_conv2d_active(x, w, b, act + 82, out, pad=1)
    with pytest.raises(TypeError, match="active must be an int64"):
        fused_conv2d_active(x, w, b, act.int(), out, pad=1)
    with pytest.raises(ValueError, match="does not record autograd"):
        fused_conv2d_active(x, w.clone().requires_grad_(), b, act, out, pad=1)
    with pytest.raises(ValueError, match="must not share memory"):
        fused_conv2d_active(x, w[:3, :, :1, :1].contiguous(), None, act, x)
    with pytest.raises(ValueError, match="spans more than the padded input"):
        fused_roi_conv2d(x, w, b, mask, dilation=4)
    with pytest.raises(ValueError, match="does not fit"):
        fused_conv2d_active(x, w, b, act, torch.zeros(2, 4, 9, 7, device=device), pad=1)
    if torch.device(device).type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        assert not fused_available("cpu")
        with pytest.raises(ValueError, match="set TRITON_INTERPRET=1"):
            fused_roi_conv2d(x, w, b, mask, **kw)


def test_import_without_triton():
    """convcore imports without triton; the fused call then says what to install."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import os; os.environ['TRITON_INTERPRET'] = '1'\n"
        "import torch, convcore, convcore.kernels as k\n"
        "assert not k.fused_available('cpu')\n"
        "try:\n"
        "    k.fused_roi_conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1), None, torch.ones(1, 3, 3).bool())\n"
        "except ImportError as e:\n"
        "    assert 'pip install triton' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_compiles_for_hopper_without_a_gpu(monkeypatch):
    """The compiled (not interpreted) kernel type-checks and lowers to sm_90 machine code, tensor cores on fp16.

    No GPU needed: Triton compiles ahead of time for a named target. This checks compilation only, not results.
    """
    import inspect

    from triton.compiler import ASTSource

    if "constexprs" not in inspect.signature(ASTSource).parameters:
        pytest.skip("ahead-of-time check written for the ASTSource API of triton >= 3.3")
    from triton.backends.compiler import GPUTarget

    from convcore.kernels import triton_conv

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    kernel = triton_conv.get_kernel()
    for dtype, cg, og, mode in [(torch.float16, 16, 16, "symmetric"), (torch.float32, 1, 1, "zeros")]:
        cfg = triton_conv.kernel_config(cg, og, dtype)
        const = dict(CG=cg, KH=3, KW=3, MODE=triton_conv.MODE_IDS[mode], HAS_BIAS=True, USE_DOT=cfg.use_dot)
        const.update(IEEE=False, UPCAST=False, ACC=triton.language.float32)
        const.update(BLOCK_P=cfg.block_p, BLOCK_C=cfg.block_c, BLOCK_O=cfg.block_o)
        elem = "fp16" if dtype == torch.float16 else "fp32"
        sig = {
            n: "constexpr" if n in const else "*i64" if n == "act_ptr" else f"*{elem}" if n.endswith("_ptr") else "i32"
            for n in kernel.arg_names
        }
        compiled = triton.compile(
            ASTSource(fn=kernel, signature=sig, constexprs=const), target=GPUTarget("cuda", 90, 32)
        )
        assert len(compiled.asm["cubin"]) > 0
        assert ("mma" in compiled.asm["ptx"]) == cfg.use_dot  # tl.dot on fp16 blocks uses tensor cores


def test_bench_smoke_under_interpreter(device, capsys):
    if torch.device(device).type != "cpu":
        pytest.skip("on CUDA the bench runs the 4K table: run python -m convcore.bench fused instead")
    from convcore.bench import fused as bench

    assert bench.main(["--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "timings mean nothing" in text
    for case in ("box 0.1%", "box 1%", "box 10%", "box 30%", "scattered 1%"):
        assert case in text


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(padding=1),
        dict(padding="same", padding_mode="reflect", dilation=2),
        dict(stride=2, padding=1, groups=2, padding_mode="circular"),
        dict(padding="same", padding_mode="replicate"),
    ],
)
def test_roi_conv2d_strategy_fused_matches_nn_conv2d(kwargs, device):
    """roi_conv2d(strategy="fused") against nn.Conv2d, inside a per-image mask and with out= outside."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, (3, 2) if "stride" not in kwargs else 3, bias=True, **kwargs).to(device)
    x = torch.randn(2, 4, 9, 11, device=device)
    with torch.no_grad():
        expected = conv(x)
        mask = torch.rand(expected.shape[0], *expected.shape[2:], device=device) < 0.3
        out = torch.full_like(expected, 7.0)
        geometry = dict((k, v) for k, v in kwargs.items())
        y = convcore.roi_conv2d(x, conv.weight, conv.bias, mask, strategy="fused", out=out, **geometry)
    m = mask[:, None].expand_as(expected)
    torch.testing.assert_close(y[m], expected[m], atol=1e-4, rtol=1e-4)
    assert bool((y[~m] == 7.0).all())


def test_roi_conv2d_strategy_fused_refuses_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, w = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match="strategy='fused'"):
        convcore.roi_conv2d(x, w, None, torch.ones(6, 6, dtype=torch.bool), padding=1, strategy="fused")
