"""The engine's shared parts: reused scratch memory leaves results identical, single-threaded runs give the same
numbers, and the one full-mask test."""

from __future__ import annotations

import pytest
import torch
from oracles import conv as oracle_conv
from oracles import masks

from convcore import roi_conv2d, window_op2d
from convcore.engine import drop_full, scratch, single_thread


def test_scratch_is_reused_per_slot_and_grows():
    like = torch.empty(0)
    a = scratch("test-slot", 100, like)
    b = scratch("test-slot", 50, like)
    assert a.data_ptr() == b.data_ptr() and b.numel() == 50
    c = scratch("test-slot", 10_000, like)
    assert c.numel() == 10_000 and scratch("other-slot", 10, like).data_ptr() != c.data_ptr()


def test_calls_inside_and_outside_inference_mode_share_no_scratch(device):
    """A scratch buffer made under torch.inference_mode is an inference tensor, which cannot be written outside it:
    a call there, then one outside, must both work and agree with F.conv2d."""
    x, w = torch.randn(1, 3, 40, 40, device=device), torch.randn(4, 3, 3, 3, device=device)
    mask = torch.rand(40, 40, device=device) < 0.05  # scattered: the windows engine, one image
    expected = torch.nn.functional.conv2d(x, w, padding=1) * mask
    with torch.inference_mode():
        inside = roi_conv2d(x, w, None, mask, padding=1, strategy="windows")
    outside = roi_conv2d(x, w, None, mask, padding=1, strategy="windows")
    torch.testing.assert_close(inside, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outside, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_workspace_reuse_leaves_results_identical(padding_mode, device, monkeypatch):
    """Calls that gather into the reused scratch buffer (one image, many chunks) give bit-identical results to calls
    that cannot reuse it (under autograd), match F.conv2d, and an earlier result is not overwritten by a later call."""
    import convcore.engine.policy as policy

    monkeypatch.setitem(policy.CHUNK_BYTES, device.type, 8192)  # many chunks, each gathered into the scratch
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3, device=device)
    b = torch.randn(6, device=device)
    xs = [torch.randn(1, 4, 40, 37, device=device) for _ in range(3)]
    mask = masks("random", 1, (40, 37), device)
    kw = dict(padding=1, padding_mode=padding_mode, strategy="windows")
    reused = [roi_conv2d(x, w, b, mask, **kw) for x in xs]  # scratch memory, call after call
    first = reused[0].clone()
    fresh = [roi_conv2d(x.clone().requires_grad_(), w, b, mask, **kw).detach() for x in xs]  # autograd: no reuse
    for r, f, x in zip(reused, fresh, xs):
        assert torch.equal(r, f)
        ref = oracle_conv(x, w, b, 1, 1, 1, 1, padding_mode) * mask[:, None]
        assert torch.allclose(r, ref, atol=1e-4)
    assert torch.equal(reused[0], first)
    with torch.no_grad():
        fn = lambda a, c: (a - c).abs()  # noqa: E731
        y1 = window_op2d(xs[0], w, fn, reduce="max", padding=1, padding_mode=padding_mode, mask=mask)
        y2 = window_op2d(xs[1], w, fn, reduce="max", padding=1, padding_mode=padding_mode, mask=mask)
        assert torch.equal(y1, window_op2d(xs[0], w, fn, reduce="max", padding=1, padding_mode=padding_mode, mask=mask))
    assert not torch.equal(y1, y2)


def test_single_thread_restores_the_thread_count_and_gives_the_same_numbers():
    threads = torch.get_num_threads()
    x, w = torch.randn(1, 3, 30, 30, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    mask = masks("box", 1, (30, 30), "cpu")
    y = roi_conv2d(x, w, None, mask, padding=1)
    with single_thread():
        assert torch.get_num_threads() == 1
        y1 = roi_conv2d(x, w, None, mask, padding=1)
    assert torch.get_num_threads() == threads
    assert torch.allclose(y, y1, atol=1e-12)


def test_drop_full_is_the_one_full_mask_test():
    full = torch.ones(2, 3, 4, dtype=torch.bool)
    part = full.clone()
    part[1, 2, 3] = False
    assert drop_full(None) == (None, -1)
    assert drop_full(full) == (None, 24)
    m, covered = drop_full(part)
    assert m is part and covered == 23
