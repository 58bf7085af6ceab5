"""Small models for the roi_network tests and an independent oracle of the masked semantics.

The oracle, :class:`MaskEveryOp`, runs the eager model under a ``TorchFunctionMode`` that multiplies every 4-D
floating-point tensor a torch function returns by the ROI at its size: the definition of masked mode, written
without any of convcore's code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


def roi_at(mask: torch.Tensor, hw) -> torch.Tensor:
    """bool (N, h, w): a position is in when any input pixel of its cell is (the definition, via adaptive max)."""
    return F.adaptive_max_pool2d(mask[:, None].float(), tuple(hw))[:, 0] > 0


class MaskEveryOp(TorchFunctionMode):
    """Multiply every 4-D floating-point tensor that a torch function returns by the ROI at its size."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        return self._apply(out)

    def _apply(self, v):
        if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter) and v.dim() == 4 and v.is_floating_point():
            return v * roi_at(self.mask, v.shape[2:])[:, None].to(v.dtype)
        if isinstance(v, tuple) and not hasattr(v, "_fields"):
            return tuple(self._apply(x) for x in v)
        if isinstance(v, list):
            return [self._apply(x) for x in v]
        return v


def masked_oracle(model: nn.Module, x: torch.Tensor, mask: torch.Tensor):
    with MaskEveryOp(mask):
        return model(x)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that folding them is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.a = conv_bn(cin, cout, 3, stride)
        self.b = conv_bn(cout, cout, 3)
        self.relu = nn.ReLU(inplace=True)
        self.down = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        out = self.relu(self.a(x))
        out = self.b(out)
        out += self.down(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.a = conv_bn(cin, mid, 1)
        self.b = conv_bn(mid, mid, 3, stride)
        self.c = conv_bn(mid, cout, 1)
        self.down = conv_bn(cin, cout, 1, stride)

    def forward(self, x):
        out = F.relu(self.a(x))
        out = F.relu(self.b(out))
        return F.relu(self.c(out) + self.down(x))


class ResNetish(nn.Module):
    """7×7/2 stem, ceil-mode max pool, basic blocks (one downsampling) and a bottleneck that downsamples."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.layer3 = Bottleneck(16, 8, 24, stride=2)
        self.head = nn.Conv2d(24, 5, 1)

    def forward(self, x):
        return self.head(self.layer3(self.layer2(self.layer1(self.pool(self.stem(x))))))


class UNet(nn.Module):
    """Two levels: skip concatenation; bilinear upsampling at one level, a transposed conv (+ pad) at the other."""

    def __init__(self) -> None:
        super().__init__()
        self.e1 = nn.Sequential(conv_bn(3, 8), nn.ReLU())
        self.e2 = nn.Sequential(conv_bn(8, 12), nn.ReLU())
        self.mid = nn.Sequential(conv_bn(12, 16), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(16, 12, 2, 2)
        self.d2 = nn.Sequential(conv_bn(24, 12), nn.ReLU())
        self.d1 = nn.Sequential(conv_bn(20, 8), nn.ReLU())
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        s1 = self.e1(x)
        s2 = self.e2(F.max_pool2d(s1, 2))
        m = self.mid(F.avg_pool2d(s2, 2, ceil_mode=True))
        u = self.up2(m)
        u = F.pad(u, (0, s2.shape[3] - u.shape[3], 0, s2.shape[2] - u.shape[2]))
        d2 = self.d2(torch.cat([u, s2], 1))
        u1 = F.interpolate(d2, size=s1.shape[2:], mode="bilinear", align_corners=False)
        return self.out(self.d1(torch.cat([u1, s1], dim=1)))


class FPN(nn.Module):
    """Three strided stages, 1×1 laterals, nearest top-down upsampling; returns a dict of maps."""

    def __init__(self) -> None:
        super().__init__()
        self.c2 = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(8, 12, 3, 2, 1), nn.ReLU())
        self.c4 = nn.Sequential(nn.Conv2d(12, 16, 3, 2, 1), nn.ReLU())
        self.l2, self.l3, self.l4 = nn.Conv2d(8, 6, 1), nn.Conv2d(12, 6, 1), nn.Conv2d(16, 6, 1)
        self.o2, self.o3 = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)

    def forward(self, x):
        c2 = self.c2(x)
        c3 = self.c3(c2)
        c4 = self.c4(c3)
        p4 = self.l4(c4)
        p3 = self.l3(c3) + F.interpolate(p4, size=c3.shape[2:], mode="nearest")
        p2 = self.l2(c2) + F.interpolate(p3, size=c2.shape[2:], mode="nearest")
        return {"p2": self.o2(p2), "p3": self.o3(p3), "p4": p4}


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, 4, 1)
        self.fc2 = nn.Conv2d(4, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class MobileBlock(nn.Module):
    """Inverted residual: 1×1 expand, 3×3 depthwise, squeeze-excitation, 1×1 project, residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 8, 3, 2), nn.Hardswish())
        self.expand = nn.Sequential(conv_bn(8, 16, 1), nn.Hardswish())
        self.dw = nn.Sequential(conv_bn(16, 16, 3, groups=16), nn.Hardswish())
        self.se = SqueezeExcite(16)
        self.project = conv_bn(16, 8, 1)

    def forward(self, x):
        y = self.stem(x)
        return y + self.project(self.se(self.dw(self.expand(y))))


class InstanceNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.InstanceNorm2d(6, affine=True)
        self.b = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x):
        return self.b(F.relu(self.norm(self.a(x))))


class Odd(nn.Module):
    """Geometry corner cases: reflect/circular padding, dilation, groups, "same" even kernels, strided transposed
    conv with output_padding, avg pool without pad counting, non-integer sizes and scale factors, channel slice,
    dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, stride=2, padding=2, dilation=2, padding_mode="reflect")
        self.b = nn.Conv2d(6, 6, 4, padding="same", groups=3, padding_mode="circular")
        self.c = nn.Conv2d(6, 4, (3, 5), stride=(2, 1), padding=(1, 0), padding_mode="replicate")
        self.t = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=1)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        y = F.leaky_relu(self.a(x), 0.1)
        y = self.b(y)
        z = F.avg_pool2d(y, 3, 2, 1, ceil_mode=True, count_include_pad=False)
        z = F.interpolate(z, size=(y.shape[2] + 3, y.shape[3] - 2), mode="nearest")
        w = self.t(self.c(y))
        w = F.interpolate(w, size=y.shape[2:], mode="bilinear", align_corners=True)
        up = F.interpolate(y, scale_factor=1.7, mode="nearest") + F.interpolate(y, scale_factor=1.7, mode="bilinear")
        return torch.sigmoid(self.drop(w[:, :3])) * 2 + y[:, 1:4], z, up


class IsInstanceBranch(nn.Module):
    """A branch that ``torch.fx.symbolic_trace`` decides wrongly: a Proxy is not a Tensor, so it traces ``b``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 5, padding=2)

    def forward(self, x):
        if torch.jit.isinstance(x, torch.Tensor):
            return self.a(x)
        return self.b(x)


class ValueBranch(nn.Module):
    """A branch on a tensor's value: one fixed graph cannot follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        if x.mean() > 0:
            return self.a(x)
        return -self.a(x)


class Flip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.flip(self.a(x), [3])
