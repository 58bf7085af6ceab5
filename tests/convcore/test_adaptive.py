"""Per-location kernels: adaptive_conv2d, adaptive_gaussian_blur2d and dynamic_conv2d against unfold recipes,
OpenCV, window_op2d and F.conv2d; masks, out=, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracles import GEOMETRIES, MODES, geometry_id, masks
from oracles import conv as oracle_conv
from oracles import pad as oracle_pad
from oracles import pair as _pair
from oracles import windows as oracle_windows

from convcore import adaptive_conv2d, adaptive_gaussian_blur2d, dynamic_conv2d, window_op2d


def _unfold(x, kernel, stride, padding, dilation, padding_mode):
    """The forum recipe's first step: (N, C, kh*kw, H_out, W_out) windows of the padded input."""
    cols, out_hw = oracle_windows(x, kernel, stride, padding, dilation, padding_mode)  # [N, 1, C, kh, kw, L]
    return cols.view(x.shape[0], x.shape[1], kernel[0] * kernel[1], *out_hw), out_hw


# ------------------------------------------------------------------------------------------------- adaptive_conv2d


@pytest.mark.parametrize("mask_kind", ["none", "random", "sparse", "box"])
@pytest.mark.parametrize("padding_mode", MODES)
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=geometry_id)
def test_adaptive_matches_unfold_formula(geometry, groups, padding_mode, mask_kind, device, assert_close):
    k, s, p, d = geometry
    kh, kw = _pair(k)
    x = torch.randn(2, 4, 11, 13, dtype=torch.float64, device=device)
    cols, (Ho, Wo) = _unfold(x, (kh, kw), s, p, d, padding_mode)  # [N, C, K, Ho, Wo]
    kernel = torch.randn(2, groups, kh, kw, Ho, Wo, dtype=torch.float64, device=device)
    weight = torch.randn(3, 4, kh, kw, dtype=torch.float64, device=device)
    mask = masks(mask_kind, 2, (Ho, Wo), device)
    kw_ = dict(stride=s, padding=p, dilation=d, padding_mode=padding_mode, mask=mask)
    modulated = cols.view(2, groups, 4 // groups, kh * kw, Ho, Wo) * kernel.view(2, groups, 1, kh * kw, Ho, Wo)
    modulated = modulated.view(2, 4, kh * kw, Ho, Wo)
    ref_plain = modulated.sum(2)  # [N, C, Ho, Wo]
    ref_mod = torch.einsum("ock,nckij->noij", weight.view(3, 4, -1), modulated)  # [N, O, Ho, Wo]
    if mask is not None:
        ref_plain, ref_mod = ref_plain * mask[:, None], ref_mod * mask[:, None]
    kern = kernel[:, 0] if groups == 1 else kernel
    assert_close(adaptive_conv2d(x, kern, **kw_), ref_plain)
    assert_close(adaptive_conv2d(x, kern, weight, **kw_), ref_mod)


def test_adaptive_naive_loop_and_window_op2d(device, assert_close):
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, device=device)
    kernel = torch.randn(1, 3, 3, 6, 7, dtype=torch.float64, device=device)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, device=device)
    b = torch.randn(2, dtype=torch.float64, device=device)
    y = adaptive_conv2d(x, kernel, w, b, padding=1)
    xp = F.pad(x, (1, 1, 1, 1))
    naive = torch.empty_like(y)
    for o in range(2):
        for i in range(6):
            for j in range(7):
                naive[0, o, i, j] = (w[o] * kernel[0, :, :, i, j] * xp[0, :, i : i + 3, j : j + 3]).sum() + b[o]
    assert_close(y, naive)
    # A kernel that is the same at every location: the modulated convolution is a plain one with weight * kernel.
    const = torch.randn(3, 3, dtype=torch.float64, device=device)
    y = adaptive_conv2d(x, const[None, :, :, None, None].expand(1, 3, 3, 6, 7), w, padding=1, padding_mode="reflect")
    ref = window_op2d(x, w * const, lambda a, c: a * c, padding=1, padding_mode="reflect")
    assert_close(y, ref)


def test_adaptive_out_and_empty_mask(device, assert_close):
    x = torch.randn(2, 3, 8, 8, device=device)
    kernel = torch.randn(2, 3, 3, 8, 8, device=device)
    out = torch.full((2, 3, 8, 8), 5.0, device=device)
    adaptive_conv2d(x, kernel, padding=1, mask=masks("empty", 2, (8, 8), device), out=out)
    assert bool((out == 5.0).all())
    mask = masks("random", 2, (8, 8), device)
    adaptive_conv2d(x, kernel, padding=1, mask=mask, out=out)
    ref = adaptive_conv2d(x, kernel, padding=1)
    m = mask[:, None].expand_as(out)
    assert_close(out[m], ref[m])
    assert bool((out[~m] == 5.0).all())


def test_adaptive_gradcheck(device):
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    kernel = torch.randn(1, 2, 2, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(3, 2, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    mask = masks("random", 1, (3, 3), device)

    def f(x, kernel, w):
        return adaptive_conv2d(x, kernel, w, stride=(2, 1), padding=(1, 0), padding_mode="circular", mask=mask)

    assert torch.autograd.gradcheck(f, (x, kernel, w))
    per_pixel = torch.randn(1, 3, 3, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, k: adaptive_conv2d(x, k, padding=1), (x, per_pixel))


def test_adaptive_errors():
    x = torch.randn(1, 4, 8, 8)
    k = torch.randn(1, 3, 3, 8, 8)
    with pytest.raises(ValueError, match="kernel must be a tensor of shape"):
        adaptive_conv2d(x, torch.randn(3, 3))
    with pytest.raises(ValueError, match="must cover the output positions"):
        adaptive_conv2d(x, k)  # padding 0: H_out = 6
    with pytest.raises(ValueError, match="must divide the input channels"):
        adaptive_conv2d(x, torch.randn(1, 3, 3, 3, 8, 8), padding=1)
    with pytest.raises(ValueError, match="one entry per image"):
        adaptive_conv2d(x, torch.randn(2, 3, 3, 8, 8), padding=1)
    with pytest.raises(ValueError, match=r"weight must have shape \(O, C, kh, kw\)"):
        adaptive_conv2d(x, k, torch.randn(2, 4, 5, 5), padding=1)
    with pytest.raises(ValueError, match="bias must have shape"):
        adaptive_conv2d(x, k, torch.randn(2, 4, 3, 3), torch.randn(4), padding=1)
    with pytest.raises(TypeError, match="dtype and device"):
        adaptive_conv2d(x, k.double(), padding=1)


# ------------------------------------------------------------------------------------------ adaptive_gaussian_blur2d


@pytest.mark.parametrize("ksize,sigma", [(3, 0.8), (5, 1.5), ((3, 7), 2.0)])
@pytest.mark.parametrize("border", ["reflect", "replicate", "symmetric", "zeros"])
def test_blur_constant_sigma_equals_opencv(border, ksize, sigma):
    cv2 = pytest.importorskip("cv2")
    flags = {
        "reflect": cv2.BORDER_REFLECT_101,
        "replicate": cv2.BORDER_REPLICATE,
        "symmetric": cv2.BORDER_REFLECT,
        "zeros": cv2.BORDER_CONSTANT,
    }
    kh, kw = _pair(ksize)
    img = np.random.default_rng(3).random((3, 19, 24), dtype=np.float32)
    x = torch.from_numpy(img)[None]
    y = adaptive_gaussian_blur2d(x, torch.full((1, 1, 19, 24), sigma), ksize, border)
    ref = np.stack([cv2.GaussianBlur(c, (kw, kh), sigma, borderType=flags[border]) for c in img])
    np.testing.assert_allclose(y[0].numpy(), ref, atol=2e-6)


@pytest.mark.parametrize("border", ["reflect", "circular", "symmetric"])
def test_blur_per_pixel_sigma_naive(border, device, assert_close):
    x = torch.rand(2, 2, 7, 9, dtype=torch.float64, device=device)
    sigma = torch.rand(2, 1, 7, 9, dtype=torch.float64, device=device) * 2
    sigma[0, 0, 3, 4] = 0.0  # σ = 0 leaves the pixel as it is
    y = adaptive_gaussian_blur2d(x, sigma, 5, border)
    xp = oracle_pad(x, (2, 2, 2, 2), border)
    d = torch.arange(5, dtype=torch.float64, device=device) - 2
    naive = torch.empty_like(y)
    for n in range(2):
        for i in range(7):
            for j in range(9):
                s = max(sigma[n, 0, i, j].item(), 1e-3)
                k = torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * s * s))
                naive[n, :, i, j] = (xp[n, :, i : i + 5, j : j + 5] * (k / k.sum())).sum((1, 2))
    assert_close(y, naive)
    assert_close(y[0, :, 3, 4], x[0, :, 3, 4])


def test_blur_mask_and_out(device, assert_close):
    x = torch.rand(2, 3, 16, 12, device=device)
    sigma = torch.rand(2, 1, 16, 12, device=device) * 3
    mask = masks("box", 2, (16, 12), device)
    full = adaptive_gaussian_blur2d(x, sigma, 7, "replicate")
    assert_close(adaptive_gaussian_blur2d(x, sigma, 7, "replicate", mask=mask), full * mask[:, None])
    out = x.clone()
    y = adaptive_gaussian_blur2d(x, sigma, 7, "replicate", mask=mask, out=out)
    assert y is out
    assert_close(out, torch.where(mask[:, None], full, x))


def test_blur_gradcheck(device):
    x = torch.rand(1, 2, 5, 6, dtype=torch.float64, device=device, requires_grad=True)
    sigma = (torch.rand(1, 1, 5, 6, dtype=torch.float64, device=device) + 0.5).requires_grad_()
    mask = masks("random", 1, (5, 6), device)
    f = lambda x, s: adaptive_gaussian_blur2d(x, s, 3, "symmetric", mask=mask)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, sigma))


def test_sparse_masks_gather_windows_and_differentiate(device, assert_close, monkeypatch):
    import convcore.engine.tiles as tiles

    calls = []
    real = tiles.run_window_rows
    monkeypatch.setattr(tiles, "run_window_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.rand(2, 2, 10, 9, dtype=torch.float64, device=device, requires_grad=True)
    sigma = (torch.rand(2, 1, 10, 9, dtype=torch.float64, device=device) + 0.3).requires_grad_()
    kernel = torch.randn(2, 3, 3, 10, 9, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    mask = masks("sparse", 2, (10, 9), device)
    blur = adaptive_gaussian_blur2d(x, sigma, 3, "reflect", mask=mask)
    assert_close(blur, adaptive_gaussian_blur2d(x, sigma, 3, "reflect") * mask[:, None])
    mod = adaptive_conv2d(x, kernel, w, padding=1, padding_mode="replicate", mask=mask)
    assert_close(mod, adaptive_conv2d(x, kernel, w, padding=1, padding_mode="replicate") * mask[:, None])
    assert len(calls) == 2
    assert torch.autograd.gradcheck(
        lambda x, s: adaptive_gaussian_blur2d(x, s, 3, "reflect", mask=mask), (x, sigma), fast_mode=True
    )
    assert torch.autograd.gradcheck(
        lambda x, k, w: adaptive_conv2d(x, k, w, padding=1, mask=mask), (x, kernel, w), fast_mode=True
    )


def test_blur_errors():
    x = torch.rand(1, 3, 8, 8)
    s = torch.ones(1, 1, 8, 8)
    with pytest.raises(ValueError, match="odd"):
        adaptive_gaussian_blur2d(x, s, 4)
    with pytest.raises(ValueError, match="border_type must be one of"):
        adaptive_gaussian_blur2d(x, s, 3, "reflect_101")
    with pytest.raises(ValueError, match=r"sigma must have shape \(N, 1, H, W\)"):
        adaptive_gaussian_blur2d(x, torch.ones(1, 1, 8, 7), 3)
    with pytest.raises(ValueError, match="4 dimensions"):
        adaptive_gaussian_blur2d(x, torch.ones(8, 8), 3)
    with pytest.raises(ValueError, match=">= 0"):
        adaptive_gaussian_blur2d(x, -s, 3)
    with pytest.raises(ValueError, match="NaN"):
        adaptive_gaussian_blur2d(x, s * float("nan"), 3)
    with pytest.raises(TypeError, match="int or a pair"):
        adaptive_gaussian_blur2d(x, s, 3.0)
    with pytest.raises(ValueError, match="out must have shape"):
        adaptive_gaussian_blur2d(x, s, 3, out=torch.zeros(1, 3, 8, 9))


# ---------------------------------------------------------------------------------------------------- dynamic_conv2d


@pytest.mark.parametrize("mask_kind", ["none", "random", "box", "full"])
@pytest.mark.parametrize("padding_mode", MODES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=geometry_id)
def test_dynamic_constant_kernel_equals_conv2d(geometry, padding_mode, mask_kind, device, assert_close):
    k, s, p, d = geometry
    x = torch.randn(2, 3, 10, 12, dtype=torch.float64, device=device)
    w = torch.randn(4, 3, *_pair(k), dtype=torch.float64, device=device)
    b = torch.randn(4, dtype=torch.float64, device=device)
    ref = oracle_conv(x, w, b, s, p, d, 1, padding_mode)
    mask = masks(mask_kind, 2, ref.shape[2:], device)
    y = dynamic_conv2d(
        x,
        lambda patches: w.reshape(1, 4, -1).expand(patches.shape[0], -1, -1),
        4,
        k,
        b,
        mask=mask,
        stride=s,
        padding=p,
        dilation=d,
        padding_mode=padding_mode,
    )
    assert_close(y, ref if mask is None else ref * mask[:, None])


def _mlp(c_k: int, out: int, device) -> torch.nn.Module:
    torch.manual_seed(0)
    return (
        torch.nn.Sequential(torch.nn.Linear(c_k, 6), torch.nn.Tanh(), torch.nn.Linear(6, out * c_k)).double().to(device)
    )


def test_dynamic_mlp_equals_forum_recipe(device, assert_close, monkeypatch):
    import convcore.engine.policy as policy

    x = torch.randn(2, 3, 9, 11, dtype=torch.float64, device=device)
    mlp = _mlp(27, 2, device)
    cols = F.unfold(x, 3, padding=1).transpose(1, 2)  # [N, L, C*K]
    wts = mlp(cols).view(2, -1, 2, 27)  # [N, L, O, C*K]
    ref = (wts * cols[:, :, None]).sum(-1).transpose(1, 2).reshape(2, 2, 9, 11)
    assert_close(dynamic_conv2d(x, mlp, 2, 3, padding=1), ref)
    monkeypatch.setitem(policy.CHUNK_BYTES, "cpu", 4096)  # many chunks, each calling the MLP
    monkeypatch.setitem(policy.CHUNK_BYTES, "cuda", 4096)
    calls = []
    fn = lambda p: calls.append(p.shape[0]) or mlp(p)  # noqa: E731
    assert_close(dynamic_conv2d(x, fn, 2, 3, padding=1), ref)
    assert len(calls) > 2 * 2 and sum(calls) == 2 * 9 * 11


def test_dynamic_gradcheck_reaches_kernel_fn_params(device):
    mlp = _mlp(2 * 4, 2, device)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    params = list(mlp.parameters())
    mask = masks("random", 1, (4, 5), device)

    def f(x, *ps):
        names = ["0.weight", "0.bias", "2.weight", "2.bias"]

        def fn(p):
            return torch.func.functional_call(mlp, dict(zip(names, ps)), (p,))

        return dynamic_conv2d(x, fn, 2, (2, 2), padding="same", padding_mode="replicate", mask=mask)

    assert torch.autograd.gradcheck(f, (x, *[p.detach().requires_grad_() for p in params]))
    dynamic_conv2d(x, mlp, 2, 2, padding="same").sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)


def test_dynamic_backward_recomputes_weights_chunk_by_chunk(device, assert_close, monkeypatch):
    import convcore.engine.policy as policy

    monkeypatch.setitem(policy.CHUNK_BYTES, "cpu", 16384)  # several chunks
    monkeypatch.setitem(policy.CHUNK_BYTES, "cuda", 16384)
    mlp = _mlp(3 * 9, 2, device)
    x = torch.randn(1, 3, 8, 9, dtype=torch.float64, device=device, requires_grad=True)
    sizes = []

    def fn(p):
        sizes.append(p.shape[0])
        return mlp(p)

    y = dynamic_conv2d(x, fn, 2, 3, padding=1)
    forward_calls = len(sizes)
    assert forward_calls > 1 and max(sizes) < 8 * 9
    y.square().sum().backward()
    assert len(sizes) == 2 * forward_calls  # each chunk's weights rebuilt in backward, never all kept at once
    ref_x = x.detach().clone().requires_grad_()
    cols = F.unfold(ref_x, 3, padding=1).transpose(1, 2)  # [1, L, 27]
    ref = (mlp(cols).view(1, -1, 2, 27) * cols[:, :, None]).sum(-1).transpose(1, 2).reshape(1, 2, 8, 9)
    ref_grads = torch.autograd.grad(ref.square().sum(), [ref_x, *mlp.parameters()])
    assert_close(x.grad, ref_grads[0])
    assert_close(mlp[0].weight.grad, ref_grads[1])


def test_dynamic_errors():
    x = torch.randn(1, 2, 6, 6)
    good = lambda p: torch.zeros(p.shape[0], 3, 18)  # noqa: E731
    with pytest.raises(ValueError, match=r"kernel_fn must return per-window weights of shape \(P, O, C\*kh\*kw\)"):
        dynamic_conv2d(x, lambda p: torch.zeros(p.shape[0], 2, 18), 3, 3)
    with pytest.raises(TypeError, match="kernel_fn must be a callable"):
        dynamic_conv2d(x, "mlp", 3, 3)
    with pytest.raises(ValueError, match="out_channels must be a positive int"):
        dynamic_conv2d(x, good, 0, 3)
    with pytest.raises(ValueError, match="kernel size|kernel_size"):
        dynamic_conv2d(x, good, 3, 0)
    with pytest.raises(ValueError, match="bias must have shape"):
        dynamic_conv2d(x, good, 3, 3, torch.zeros(2))
    assert dynamic_conv2d(x, good, 3, 3).shape == (1, 3, 4, 4)
