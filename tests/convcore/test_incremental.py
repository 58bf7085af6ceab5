"""roi_network's incremental mode against the dense model run on every frame (the oracle)."""

from __future__ import annotations

import logging
import threading

import pytest
import torch
import torch.nn.functional as F
from net_models import FPN, MobileBlock, Odd, ResNetish, UNet, randomize_bn
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import convcore
from convcore.network import cone, incremental

H, W = 33, 47
DENSE_SHARE = incremental.DENSE_SHARE


@pytest.fixture(autouse=True)
def _never_the_model_itself(monkeypatch):
    """On images this small a change reaches most of every layer, and the cost model would let the model run itself:
    the tests want the incremental path (the test of that choice sets the share back)."""
    monkeypatch.setattr(incremental, "DENSE_SHARE", float("inf"))


def _model(cls) -> nn.Module:
    torch.manual_seed(3)
    return randomize_bn(cls()).eval()


def _check(actual, expected, tolerances) -> None:
    """Same structure, every tensor equal within the float32 tolerance (reassociation only)."""
    got, spec = tree_flatten(actual)
    ref, ref_spec = tree_flatten(expected)
    assert spec == ref_spec, f"structure {spec} != {ref_spec}"
    for a, e in zip(got, ref):
        assert a.shape == e.shape
        err = (a - e).abs().max().item() if e.numel() else 0.0
        tol = tolerances[e.dtype] * max(1.0, e.abs().max().item())
        assert err <= tol, f"max error {err:.3g} > {tol:.3g}"


def _frames(n: int = 1, h: int = H, w: int = W) -> list[torch.Tensor]:
    """A sequence: a patch moving, a patch at each border, no change, a change that vanishes (back to frame 1)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, 3, h, w, generator=g)
    patch = torch.randn(n, 3, 6, 7, generator=g)
    seq = [base]
    for dy, dx in ((10, 12), (11, 15)):  # moving
        f = base.clone()
        f[:, :, dy : dy + 6, dx : dx + 7] = patch
        seq.append(f)
    for sl in ((slice(0, 3), slice(None)), (slice(h - 2, h), slice(w - 5, w)), (slice(None), slice(0, 1))):
        f = seq[-1].clone()
        f[(slice(None), slice(None), *sl)] += 1.5  # top rows, bottom-right corner, left column
        seq.append(f)
    seq.append(seq[-1].clone())  # nothing changed
    seq.append(seq[1].clone())  # back to an earlier frame: the changes vanish
    return seq


# Every layer kind roi_network supports: strided, dilated, grouped and transposed convs (Odd, UNet), max/avg pools
# (ResNetish ceil mode, UNet, Odd), nearest/bilinear upsampling (FPN, UNet, Odd), concatenation (UNet), residual adds
# (ResNetish), eval BatchNorm (everywhere), reflect/circular/replicate padding and channel slices (Odd); FPN returns
# a dict, Odd a tuple.
MODELS = [ResNetish, UNet, FPN, Odd]


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_every_frame_equals_the_dense_model(cls, tolerances):
    model = _model(cls)
    net = convcore.roi_network(model, mode="incremental")
    with torch.inference_mode():
        for i, x in enumerate(_frames()):
            _check(net(x), model(x), tolerances)
            if i == 1:
                assert net.last_plan.mac_fraction < 1.0  # the moving patch did not recompute everything


def test_a_batch_is_independent_streams(tolerances):
    model = _model(UNet)
    batched = convcore.roi_network(model, mode="incremental")
    apart = [convcore.roi_network(model, mode="incremental") for _ in range(2)]
    a, b = _frames(), _frames()[::-1]  # the two streams change in different places at each step
    with torch.inference_mode():
        for fa, fb in zip(a, b):
            out = batched(torch.cat([fa, fb]))
            _check(out, model(torch.cat([fa, fb])), tolerances)
            _check(out[:1], apart[0](fa), tolerances)
            _check(out[1:], apart[1](fb), tolerances)


def test_changed_given_equals_changed_found(tolerances):
    model = _model(FPN)
    found = convcore.roi_network(model, mode="incremental")
    given = convcore.roi_network(model, mode="incremental")
    shared = convcore.roi_network(model, mode="incremental")
    seq = _frames(n=2)
    with torch.inference_mode():
        for prev, x in zip([None, *seq], seq):
            changed = (x != prev).any(1) if prev is not None else None  # [N, H, W]
            ref = model(x)
            _check(found(x), ref, tolerances)
            _check(given(x, changed), ref, tolerances)
            _check(shared(x, changed.any(0) if changed is not None else None), ref, tolerances)


def test_changed_is_trusted_outside_it_reads_the_kept_input(tolerances):
    model = _model(ResNetish)
    net = convcore.roi_network(model, mode="incremental")
    x0 = _frames()[0]
    x1 = x0 + 1.0  # everything moved, but the caller says only a box did
    box = torch.zeros(H, W, dtype=torch.bool)
    box[5:9, 20:30] = True
    with torch.inference_mode():
        net(x0)
        expected_input = torch.where(box, x1, x0)
        _check(net(x1, box), model(expected_input), tolerances)


@pytest.mark.parametrize("bad", [torch.zeros(2, H, W, dtype=torch.bool), torch.zeros(H, W + 1, dtype=torch.bool)])
def test_wrong_shaped_changed_is_a_value_error_naming_it(bad):
    net = convcore.roi_network(_model(FPN), mode="incremental")
    x = _frames()[0]
    with pytest.raises(ValueError, match="changed"):
        net(x, bad)
    with pytest.raises(TypeError, match="changed"):
        net(x, torch.zeros(H, W))


def test_bad_arguments_are_value_errors():
    model = _model(FPN)
    for kwargs in ({"tol": -1.0}, {"tol": float("nan")}, {"refresh_every": 0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            convcore.roi_network(model, mode="incremental", **kwargs)
    with pytest.raises(ValueError, match="incremental"):
        convcore.roi_network(model, tol=0.1)


def test_reset_and_a_new_shape_or_dtype_run_densely(tolerances):
    model = _model(ResNetish)
    net = convcore.roi_network(model, mode="incremental")
    x = _frames()[1]
    small = x[:, :, :25, :31].contiguous()
    with torch.inference_mode():
        net(x)
        _check(net(small), model(small), tolerances)  # a new shape: dense, kept anew
        assert net.last_plan is None
        _check(net(x), model(x), tolerances)
        net.reset()
        assert net.kept_bytes == 0
        _check(net(x), model(x), tolerances)


def test_outputs_are_fresh_tensors():
    model = _model(ResNetish)
    net = convcore.roi_network(model, mode="incremental")
    seq = _frames()
    with torch.inference_mode():
        first = net(seq[0])
        kept = first.clone()
        first.fill_(7.0)  # the caller writes into what it got
        second = net(seq[1])
        assert torch.equal(first, torch.full_like(first, 7.0))  # the next call did not write into it
        assert torch.allclose(second, model(seq[1]), atol=1e-4) and torch.allclose(kept, model(seq[0]), atol=1e-4)


class _Activations(TorchDispatchMode):
    """Bytes of every tensor the ops of one forward produce (the activations of a dense run, all kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.bytes += sum(t.numel() * t.element_size() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        return out


def test_kept_memory_is_at_most_one_dense_forward():
    model = _model(UNet)
    net = convcore.roi_network(model, mode="incremental")
    x = _frames()[0]
    with torch.inference_mode():
        net(x)
        with _Activations() as acts:
            model(x)
    assert 0 < net.kept_bytes <= acts.bytes + x.numel() * x.element_size()


def test_plan_gives_the_regions_a_call_recomputes():
    model = _model(UNet)
    net = convcore.roi_network(model, mode="incremental")
    seq = _frames()
    changed = (seq[1] != seq[0]).any(1)
    plan = net.plan(changed, seq[0].shape)
    with torch.inference_mode():
        net(seq[0])
        net(seq[1])
    assert plan.mode == "incremental" and 0 < plan.mac_fraction < 1
    assert plan.mac_fraction == net.last_plan.mac_fraction
    first = plan.layers[0]  # the first conv: the patch grown by its 3×3 window
    assert first.rect == (9, 17, 11, 20) and first.region[0, 9:17, 11:20].all()


class _Classifier(nn.Module):
    """A conv trunk with global average pooling and a linear head: a global op and a non-map output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1))
        self.norm = nn.GroupNorm(2, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.a(x)
        return [self.head(F.adaptive_avg_pool2d(y, 1).flatten(1)), F.relu(self.norm(y))]


@pytest.mark.parametrize("cls", [MobileBlock, _Classifier], ids=lambda c: c.__name__)
def test_global_ops_stay_exact_and_warn_once(cls, tolerances, caplog):
    model = _model(cls)
    net = convcore.roi_network(model, mode="incremental")
    with torch.inference_mode(), caplog.at_level(logging.WARNING, logger="convcore.network"):
        for x in _frames(n=2):
            _check(net(x), model(x), tolerances)
    warned = [r.getMessage() for r in caplog.records if "depends on the whole map" in r.getMessage()]
    assert warned and len(warned) == len(set(warned))


def test_tol_ignores_small_changes_and_refresh_brings_them_back(tolerances):
    model = _model(ResNetish)
    net = convcore.roi_network(model, mode="incremental", tol=0.1, refresh_every=3)
    x0 = _frames()[0]
    x1 = x0 + 0.06  # below tol everywhere: nothing is recomputed
    x2 = x0 + 0.12  # above tol: everything is
    with torch.inference_mode():
        net(x0)
        _check(net(x1), model(x0), tolerances)
        _check(net(x2), model(x2), tolerances)
        x3 = x2 + 0.05
        x3[:, :, 4:8, 4:9] += 1.0  # a real change inside a box, a small one elsewhere
        inside = torch.zeros_like(x3, dtype=torch.bool)
        inside[:, :, 4:8, 4:9] = True
        _check(net(x3), model(torch.where(inside, x3, x2)), tolerances)
        _check(net(x3), model(x3), tolerances)  # after 3 incremental calls: a dense refresh


def test_streams_in_threads(tolerances):
    model = _model(FPN)
    nets = [convcore.roi_network(model, mode="incremental") for _ in range(2)]
    errors: list[BaseException] = []
    seq = _frames()
    for net in nets:  # capture the graph first: torch.export must not run while another thread runs the model
        net.plan(torch.zeros(H, W, dtype=torch.bool), seq[0].shape)

    def run(net, frames):
        try:
            with torch.inference_mode():
                for x in frames:
                    _check(net(x), model(x), tolerances)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n, f)) for n, f in zip(nets, (seq, seq[::-1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_a_cone_one_pixel_short_is_caught(monkeypatch, tolerances):
    """Break the cone on purpose: every layer's changed range loses its last row and column. The oracle notices."""
    span = cone.Reach.span

    def short(self, a, b):
        r = span(self, a, b)
        return None if r is None or r[1] - r[0] <= 1 else (r[0], r[1] - 1)

    monkeypatch.setattr(cone.Reach, "span", short)
    model = _model(UNet)
    net = convcore.roi_network(model, mode="incremental")
    with torch.inference_mode(), pytest.raises(AssertionError, match="max error"):
        for x in _frames():
            _check(net(x), model(x), tolerances)


def test_the_benchmark_runs_and_its_ideal_is_the_dense_models():
    from convcore.bench.incremental import frames, ideal_mac_fraction, run_case

    model = _model(UNet)
    seq = frames(32, 48, (8, 1), torch.device("cpu"))
    with torch.inference_mode():
        assert ideal_mac_fraction(model, seq[0], seq[0]) == 0.0
        assert 0.0 < ideal_mac_fraction(model, seq[0], seq[1]) < 1.0
        row = run_case(model, 32, 48, (8, 1), rounds=1, device=torch.device("cpu"))
    assert row["speedup"] > 0 and 0 < row["measured"] <= 1 and row["changed"] > 0
    assert row["measured"] >= row["ideal"]  # the rectangles hold every position that really changed


def test_a_change_of_everything_runs_the_model_itself_then_small_changes_are_incremental_again(tolerances, monkeypatch):
    monkeypatch.setattr(incremental, "DENSE_SHARE", DENSE_SHARE)
    model = _model(ResNetish)
    net = convcore.roi_network(model, mode="incremental")
    seq = _frames(h=256, w=320)  # large enough that a small patch is worth computing apart
    noise = [torch.randn(seq[0].shape, generator=torch.Generator().manual_seed(100 + i)) for i in range(2)]
    with torch.inference_mode():
        net(seq[0])
        for x in noise:  # every pixel changes: the model runs itself, nothing is recomputed piecewise
            _check(net(x), model(x), tolerances)
            assert net.last_plan is None
        # back to the sequence (all changed again: the model itself), a small change (one dense call keeping
        # everything), then incremental calls
        for i, x in enumerate(seq[1:5]):
            _check(net(x), model(x), tolerances)
            assert (net.last_plan is None) == (i < 2)
