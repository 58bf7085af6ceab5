"""The nn.Module wrappers: forward equals the functional op with the module's parameters, masks, initialization,
gradients reach every parameter, constructor errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convcore import (
    DistanceConv2d,
    DynamicConv2d,
    MorphConv2d,
    OffsetConv2d,
    QuadraticConv2d,
    distance_conv2d,
    dynamic_conv2d,
    morph_conv2d,
    offset_conv2d,
    quadratic_conv2d,
)

GEOM = dict(stride=(1, 2), padding=1, dilation=1, padding_mode="reflect")


def _modules(device):
    torch.manual_seed(0)
    kw = dict(device=device, dtype=torch.float64)
    return {
        "offset": OffsetConv2d(4, 6, 3, groups=2, **GEOM, **kw),
        "quadratic": QuadraticConv2d(4, 6, 3, **GEOM, **kw),
        "distance": DistanceConv2d(4, 6, 3, p=1, bias=True, **GEOM, **kw),
        "distance2": DistanceConv2d(4, 6, 3, p=2, **GEOM, **kw),
        "morph": MorphConv2d(4, 6, 3, mode="erosion", groups=2, **GEOM, **kw),
        "dynamic": DynamicConv2d(4, 6, 3, hidden=5, **GEOM, **kw),
    }


def _functional(name, m, x, mask):
    g = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, padding_mode=m.padding_mode, mask=mask)
    if name == "offset":
        return offset_conv2d(x, m.weight, m.offset, m.bias, groups=m.groups, **g)
    if name == "quadratic":
        return quadratic_conv2d(x, m.a, m.b, m.c, **g)
    if name.startswith("distance"):
        return distance_conv2d(x, m.weight, m.p, m.bias, **g)
    if name == "morph":
        return morph_conv2d(x, m.weight, m.mode, groups=m.groups, **g)
    net = m.kernel_net
    return dynamic_conv2d(x, lambda p: net(p).view(p.shape[0], 6, -1), 6, 3, m.bias, **g)


NAMES = ["offset", "quadratic", "distance", "distance2", "morph", "dynamic"]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_forward_equals_functional(name, masked, device, assert_close):
    m = _modules(device)[name]
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, device=device)
    mask = (torch.rand(2, 9, 5) < 0.4).to(device) if masked else None
    y = m(x, mask)
    assert y.shape == (2, 6, 9, 5)
    assert_close(y, _functional(name, m, x, mask))
    if masked:
        assert_close(y, m(x) * mask[:, None])


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name, device):
    m = _modules(device)[name]
    x = torch.randn(1, 4, 7, 8, dtype=torch.float64, device=device, requires_grad=True)
    m(x).square().sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    for pname, p in m.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), pname


@pytest.mark.parametrize("name", NAMES)
def test_docstring_and_reset_parameters(name, device):
    m = _modules(device)[name]
    fn = {"distance2": "distance"}.get(name, name)
    assert f"See :func:`{fn}_conv2d`" in type(m).__doc__
    before = [p.detach().clone() for p in m.parameters()]
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(3.0)
    m.reset_parameters()
    after = list(m.parameters())
    assert not any(bool((p == 3.0).all()) for p in after), "reset_parameters left a parameter untouched"
    assert [p.shape for p in after] == [p.shape for p in before]


def test_initial_offset_layer_is_a_convolution(device, assert_close):
    m = OffsetConv2d(3, 5, 3, padding=1, device=device, dtype=torch.float64)
    assert bool((m.offset == 0).all())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device=device)
    assert_close(m(x), F.conv2d(x, m.weight, m.bias, padding=1))


def test_dynamic_layer_with_flat_last_layer_is_a_convolution(device, assert_close):
    m = DynamicConv2d(3, 5, 3, padding=1, device=device, dtype=torch.float64)
    with torch.no_grad():
        m.kernel_net[2].weight.zero_()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device=device)
    w = m.kernel_net[2].bias.view(5, 3, 3, 3)
    assert_close(m(x), F.conv2d(x, w, m.bias, padding=1))


def test_constructor_errors():
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        OffsetConv2d(0, 4, 3)
    with pytest.raises(ValueError, match="divisible by groups"):
        MorphConv2d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        QuadraticConv2d(4, 4, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="padding must be"):
        DistanceConv2d(4, 4, 3, padding="full")
    with pytest.raises(ValueError, match="p must be a number > 0"):
        DistanceConv2d(4, 4, 3, p=-1)
    with pytest.raises(ValueError, match="mode must be one of"):
        MorphConv2d(4, 4, 3, mode="open")
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        DynamicConv2d(4, 4, 3, hidden=0)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        OffsetConv2d(4, 4, 0)


def _uniform_ok(t: torch.Tensor, bound: float) -> None:
    """t looks like U(-bound, bound): inside the bound, std near bound/√3 and mean near 0 (within the sampling
    error of t's size)."""
    t = t.detach().double().flatten()
    n = t.numel()
    assert t.abs().max().item() <= bound * (1 + 1e-9), f"max |t| {t.abs().max().item():.4g} > bound {bound:.4g}"
    std, expected = t.std().item(), bound / 3**0.5
    assert abs(std - expected) <= (0.1 + 2.5 / (2 * n) ** 0.5) * expected, f"std {std:.4g}, expected {expected:.4g}"
    assert abs(t.mean().item()) <= 4 * expected / n**0.5


@pytest.mark.parametrize("shape", [(16, 32, 3), (8, 64, 5), (32, 16, 3)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ["offset", "quadratic", "distance", "morph", "dynamic"])
def test_initialization_follows_its_distribution(name, shape):
    """After reset_parameters every parameter has the documented distribution (nn.Conv2d's bounds written out)."""
    torch.manual_seed(1)
    cin, cout, k = shape
    fan_in = cin * k * k
    bound = 1 / fan_in**0.5  # kaiming_uniform_(a=√5) and nn.Conv2d's bias: U(±1/√fan_in)
    m = {
        "offset": lambda: OffsetConv2d(cin, cout, k),
        "quadratic": lambda: QuadraticConv2d(cin, cout, k),
        "distance": lambda: DistanceConv2d(cin, cout, k, bias=True),
        "morph": lambda: MorphConv2d(cin, cout, k),
        "dynamic": lambda: DynamicConv2d(cin, cout, k, hidden=8),
    }[name]()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 100)  # whatever was there before must not survive
    m.reset_parameters()
    if name == "offset":
        _uniform_ok(m.weight, bound)
        _uniform_ok(m.bias, bound)
        assert not m.offset.any(), "offset starts at zero (a plain convolution)"
    elif name == "quadratic":
        _uniform_ok(m.b, bound)
        _uniform_ok(m.c, bound)
        _uniform_ok(m.a, 0.1 * bound)
    elif name == "distance":
        _uniform_ok(m.weight, bound)
        _uniform_ok(m.bias, bound)
    elif name == "morph":
        _uniform_ok(m.weight, 0.1)
    else:
        first, last = m.kernel_net[0], m.kernel_net[2]
        _uniform_ok(first.weight, 1 / fan_in**0.5)  # nn.Linear's own initialization
        _uniform_ok(last.bias, bound)  # a conv weight, flattened
        _uniform_ok(last.weight, 0.1 / fan_in**0.5 / 8**0.5)  # Linear(8 → ...) scaled by 0.1/√fan_in
        _uniform_ok(m.bias, bound)
