"""roi_network: exact mode against the dense model at the ROI, masked mode against an independent masked oracle."""

from __future__ import annotations

import pytest
import torch
from net_models import (
    FPN,
    Flip,
    InstanceNormNet,
    IsInstanceBranch,
    MobileBlock,
    Odd,
    ResNetish,
    UNet,
    ValueBranch,
    masked_oracle,
    randomize_bn,
    roi_at,
)
from torch.utils._pytree import tree_flatten

import convcore

H, W = 33, 47


def _masks(n: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    box = torch.zeros(n, H, W, dtype=torch.bool)
    box[:, 10:19, 14:30] = True
    per_image = torch.zeros(n, H, W, dtype=torch.bool)
    per_image[0, 2:9, 30:41] = True
    per_image[1, 20:33, 0:6] = True  # touches the bottom and left borders
    corner = torch.zeros(n, H, W, dtype=torch.bool)
    corner[:, 28:, 40:] = True
    scattered = torch.rand(n, H, W, generator=g) < 0.02
    return {
        "box": box,
        "per_image": per_image,
        "corner": corner,
        "scattered": scattered,
        "full": torch.ones(n, H, W, dtype=torch.bool),
        "empty": torch.zeros(n, H, W, dtype=torch.bool),
    }


MASKS = _masks()


def _input(n: int = 2, c: int = 3, h: int = H, w: int = W, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(2), dtype=dtype)


def _model(cls) -> torch.nn.Module:
    torch.manual_seed(3)
    return randomize_bn(cls())


def _assert_close_at_roi(actual, expected, mask: torch.Tensor, tol: float = 1e-4, what: str = "") -> None:
    """Each 4-D map equal inside its ROI (tol × max(1, |ref|max)) and zero outside it."""
    got, spec = tree_flatten(actual)
    ref, ref_spec = tree_flatten(expected)
    assert spec == ref_spec
    for a, e in zip(got, ref):
        assert a.shape == e.shape
        roi = roi_at(mask, e.shape[2:])[:, None]
        err = ((a - e).abs() * roi).max().item() if e.numel() else 0.0
        scale = max(1.0, e.abs().max().item())
        assert err <= tol * scale, f"{what}: max error {err:.3g} inside the ROI > {tol} x {scale:.3g}"
        assert not (a * ~roi).any(), f"{what}: values outside the ROI must be zero"


def _assert_close(actual, expected, tol: float = 1e-4) -> None:
    got, spec = tree_flatten(actual)
    ref, ref_spec = tree_flatten(expected)
    assert spec == ref_spec
    for a, e in zip(got, ref):
        assert a.shape == e.shape
        err = (a - e).abs().max().item() if e.numel() else 0.0
        assert err <= tol * max(1.0, e.abs().max().item()), f"max error {err:.3g}"


MODELS = [ResNetish, UNet, FPN, Odd]


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_exact_equals_dense_model_at_the_roi(cls):
    model = _model(cls)
    x = _input()
    net = convcore.roi_network(model)
    with torch.inference_mode():
        ref = model(x)
        for name, mask in MASKS.items():
            _assert_close_at_roi(net(x, mask), ref, mask, what=name)


@pytest.mark.parametrize("cls", [ResNetish, UNet, FPN, Odd, MobileBlock, InstanceNormNet], ids=lambda c: c.__name__)
def test_masked_equals_the_masked_oracle(cls):
    model = _model(cls)
    x = _input()
    net = convcore.roi_network(model, mode="masked")
    with torch.inference_mode():
        for name in ("box", "per_image", "scattered", "empty", "full"):
            mask = MASKS[name]
            _assert_close(net(x, mask), masked_oracle(model, x, mask))


def test_masked_full_mask_is_the_dense_model_and_oracle_is_not_trivial():
    model = _model(ResNetish)
    x = _input()
    with torch.inference_mode():
        ref = model(x)
        _assert_close(convcore.roi_network(model, mode="masked")(x, MASKS["full"]), ref)
        # the masked semantics differ from exact inside a small ROI: zeros outside feed the borders of the ROI
        exact = convcore.roi_network(model)(x, MASKS["box"])
        masked = convcore.roi_network(model, mode="masked")(x, MASKS["box"])
    assert (exact - masked).abs().max() > 1e-3


def test_stride_two_on_odd_sizes_and_single_images():
    model = _model(ResNetish)
    net = convcore.roi_network(model)
    for h, w in ((17, 17), (31, 9), (8, 45)):
        x = _input(1, 3, h, w)
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[h // 2 :, : w // 3 + 1] = True
        with torch.inference_mode():
            _assert_close_at_roi(net(x, mask), model(x), mask.expand(1, h, w))


def test_exact_float64_and_autograd_in_masked_mode():
    model = _model(UNet).double()
    x = _input(dtype=torch.float64).requires_grad_()
    mask = MASKS["per_image"]
    with torch.inference_mode():
        _assert_close_at_roi(convcore.roi_network(model)(x.detach(), mask), model(x.detach()), mask, tol=1e-10)
    net = convcore.roi_network(model, mode="masked")
    y = net(x, mask)
    gx, gw = torch.autograd.grad(y.square().sum(), (x, model.e1[0][0].weight))
    x2 = x.detach().clone().requires_grad_()
    ref = masked_oracle(model, x2, mask)
    rx, rw = torch.autograd.grad(ref.square().sum(), (x2, model.e1[0][0].weight))
    _assert_close(y.detach(), ref.detach(), tol=1e-10)
    _assert_close(gx, rx, tol=1e-9)
    _assert_close(gw, rw, tol=1e-9)


def test_plan_regions_and_mac_fraction():
    model = _model(ResNetish)
    net = convcore.roi_network(model)
    shape = (2, 3, H, W)
    full, box, empty = (net.plan(MASKS[k], shape) for k in ("full", "box", "empty"))
    assert full.mac_fraction == pytest.approx(1.0)
    assert empty.mac_fraction == 0.0
    assert 0.0 < box.mac_fraction < 1.0
    convs = [layer for layer in box.layers if layer.dense_macs]
    assert len(convs) == 11  # stem, 2 + 3 in the basic blocks, 3 + 1 in the bottleneck, head (BNs folded)
    # the last layer computes exactly the output ROI; earlier layers compute more (their receptive fields)
    last = box.layers[-1]
    assert torch.equal(last.region, roi_at(MASKS["box"], last.size))
    first = box.layers[0]
    assert first.region.sum() > roi_at(MASKS["box"], first.size).sum()
    masked = convcore.roi_network(model, mode="masked").plan(MASKS["box"], shape)
    assert masked.mac_fraction < box.mac_fraction


def test_exact_refuses_global_layers_naming_them():
    x = _input()
    with pytest.raises(ValueError, match=r"(?s)se.*masked"):
        convcore.roi_network(_model(MobileBlock))(x, MASKS["box"])
    with pytest.raises(ValueError, match=r"(?s)instance_norm.*norm.*masked"):
        convcore.roi_network(_model(InstanceNormNet))(x, MASKS["box"])
    with pytest.raises(ValueError, match="masked"):  # refused for an empty mask too: no answer depends on the mask
        convcore.roi_network(_model(InstanceNormNet)).plan(MASKS["empty"], x.shape)


def test_branch_that_symbolic_trace_gets_wrong_is_captured_as_eager_runs_it():
    model = _model(IsInstanceBranch)
    traced = torch.fx.symbolic_trace(model)
    x = _input()
    with torch.inference_mode():
        assert (traced(x) - model(x)).abs().max() > 1e-3  # fx took the other branch
        _assert_close_at_roi(convcore.roi_network(model)(x, MASKS["box"]), model(x), MASKS["box"])


def test_branch_on_a_tensor_value_is_refused():
    with pytest.raises(TypeError, match="value"):
        convcore.roi_network(_model(ValueBranch))(_input(), MASKS["box"])


def test_unsupported_op_raises_type_error_naming_it():
    for mode in ("exact", "masked"):
        with pytest.raises(TypeError, match="flip"):
            convcore.roi_network(_model(Flip), mode=mode)(_input(), MASKS["box"])


def test_weights_changed_after_a_call_are_used():
    model = _model(ResNetish)
    net = convcore.roi_network(model)
    x, mask = _input(), MASKS["box"]
    with torch.inference_mode():
        net(x, mask)
    with torch.no_grad():
        model.stem[0].weight.mul_(-1.5)
        model.stem[1].running_mean.add_(0.3)
    with torch.inference_mode():
        _assert_close_at_roi(net(x, mask), model(x), mask)


def test_exported_program_and_shared_2d_mask():
    model = _model(FPN)
    x = _input()
    ep = torch.export.export(model, (x,), strict=False)
    mask = MASKS["box"][0]
    with torch.inference_mode():
        _assert_close_at_roi(convcore.roi_network(ep)(x, mask), model(x), mask.expand(2, H, W))


def test_bad_arguments():
    net = convcore.roi_network(_model(FPN))
    x = _input()
    with pytest.raises(ValueError, match="mode"):
        convcore.roi_network(_model(FPN), mode="sparse")
    with pytest.raises(TypeError, match="nn.Module"):
        convcore.roi_network(lambda t: t)
    with pytest.raises(ValueError, match=r"\(2, 33, 47\)"):
        net(x, torch.ones(2, 32, 47, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        net(x, torch.ones(2, H, W))
    with pytest.raises(ValueError, match="N, C, H, W"):
        net(x[0], MASKS["box"][0])


def test_docstring_example_runs():
    import doctest

    from convcore.network import module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
