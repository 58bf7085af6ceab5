"""nn.Module wrappers of the generalized window ops: each owns its parameters and ``reset_parameters()``; its
``forward(input, mask=None)`` calls the functional op (computed only inside the mask, zeros outside). Each takes
``compile=`` (True | False | "auto", kept as ``compile_mode``), passed to the op (see docs/compile.md)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .adaptive import dynamic_conv2d
from .algebraic import distance_conv2d, offset_conv2d, quadratic_conv2d
from .compile import check_compile, check_grad
from .geometry import PADDING_MODES, pair
from .morph import MODES as MORPH_MODES
from .morph import MORPH_PADDING_MODES, morph_conv2d

__all__ = ["DistanceConv2d", "DynamicConv2d", "MorphConv2d", "OffsetConv2d", "QuadraticConv2d"]


class _WindowConv(nn.Module):
    """Shared constructor arguments (as ``nn.Conv2d``) and their validation."""

    _padding_modes = PADDING_MODES

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be divisible by groups "
                f"({groups})"
            )
        if padding_mode not in self._padding_modes:
            raise ValueError(f"padding_mode must be one of {self._padding_modes}, got {padding_mode!r}")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
        else:
            padding = pair("padding", padding, minimum=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = pair("kernel_size", kernel_size, minimum=1)
        self.stride = pair("stride", stride, minimum=1)
        self.padding = padding
        self.dilation = pair("dilation", dilation, minimum=1)
        self.groups = groups
        self.padding_mode = padding_mode

    def _geometry(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, padding_mode=self.padding_mode)

    def _weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def _fan_in(self) -> int:
        return self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        s += f", padding={self.padding}, dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


def _conv_init(weight: torch.Tensor, bias: torch.Tensor | None, fan_in: int) -> None:
    """nn.Conv2d's initialization."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(bias, -bound, bound)


class OffsetConv2d(_WindowConv):
    """y = Σ A⊙(x − B) + bias with learnable A (``weight``), B (``offset``) and bias.

    See :func:`offset_conv2d`. Arguments as ``nn.Conv2d``; ``offset`` starts at zero (a plain convolution).

    Example:
        >>> layer = OffsetConv2d(2, 3, 3, padding=1)
        >>> layer(torch.randn(1, 2, 8, 8)).shape
        torch.Size([1, 3, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        compile: bool | str = "auto",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode)
        check_compile(compile)
        self.compile_mode = compile  # not self.compile: that is nn.Module.compile()
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(self._weight_shape(), **kw))
        self.offset = nn.Parameter(torch.empty(self._weight_shape(), **kw))
        self.bias = nn.Parameter(torch.empty(out_channels, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _conv_init(self.weight, self.bias, self._fan_in())
        nn.init.zeros_(self.offset)

    def forward(self, input: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return offset_conv2d(
            input,
            self.weight,
            self.offset,
            self.bias,
            mask=mask,
            groups=self.groups,
            compile=self.compile_mode,
            **self._geometry(),
        )


class QuadraticConv2d(_WindowConv):
    """y = Σ (a⊙x² + b⊙x) + c with learnable a, b and c.

    See :func:`quadratic_conv2d`. ``b`` and ``c`` start as ``nn.Conv2d``'s weight and bias, ``a`` as the same
    distribution scaled by 0.1 (a mildly quadratic start).

    Example:
        >>> layer = QuadraticConv2d(2, 3, 3, padding="same")
        >>> layer(torch.randn(1, 2, 8, 8)).shape
        torch.Size([1, 3, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        compile: bool | str = "auto",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, 1, padding_mode)
        check_compile(compile)
        self.compile_mode = compile  # not self.compile: that is nn.Module.compile()
        kw = dict(device=device, dtype=dtype)
        self.a = nn.Parameter(torch.empty(self._weight_shape(), **kw))
        self.b = nn.Parameter(torch.empty(self._weight_shape(), **kw))
        self.c = nn.Parameter(torch.empty(out_channels, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _conv_init(self.b, self.c, self._fan_in())
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        with torch.no_grad():
            self.a.mul_(0.1)

    def forward(self, input: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return quadratic_conv2d(input, self.a, self.b, self.c, mask=mask, compile=self.compile_mode, **self._geometry())


class DistanceConv2d(_WindowConv):
    """y = −Σ |x − w|^p (+ bias): AdderNet's adder layer for p = 1.

    See :func:`distance_conv2d`. ``weight`` (Tensor[O, C/groups, kh, kw]) starts as ``nn.Conv2d``'s; no bias by
    default (AdderNet follows the layer with batch norm). ``grad=convcore.ADDERNET_GRAD`` trains with AdderNet's
    gradient (HardTanh(w − x) for the input, x − w for the weight) instead of the exact one; ``groups`` as
    ``nn.Conv2d``.

    Example:
        >>> from convcore import ADDERNET_GRAD
        >>> adder = DistanceConv2d(16, 32, 3, padding=1, grad=ADDERNET_GRAD)  # AdderNet's adder2d, its gradient
        >>> adder(torch.randn(1, 16, 8, 8)).shape
        torch.Size([1, 32, 8, 8])
        >>> layer = DistanceConv2d(2, 3, 3, padding=1)
        >>> bool((layer(torch.randn(1, 2, 8, 8)) <= 0).all())  # −Σ|x − w| is never positive
        True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        p: float = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        compile: bool | str = "auto",
        groups: int = 1,
        grad: tuple[Callable, Callable] | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode)
        check_compile(compile)
        self.compile_mode = compile  # not self.compile: that is nn.Module.compile()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
            raise ValueError(f"p must be a number > 0, got {p!r}")
        self.p = p
        self.grad = check_grad(grad)
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(self._weight_shape(), **kw))
        self.bias = nn.Parameter(torch.empty(out_channels, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _conv_init(self.weight, self.bias, self._fan_in())

    def forward(self, input: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return distance_conv2d(
            input,
            self.weight,
            self.p,
            self.bias,
            mask=mask,
            groups=self.groups,
            grad=self.grad,
            compile=self.compile_mode,
            **self._geometry(),
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", p={self.p}"


class MorphConv2d(_WindowConv):
    """Learnable grayscale dilation (max(x + w)) or erosion (min(x − w)).

    See :func:`morph_conv2d`. The structuring elements start near flat: uniform in [-0.1, 0.1].

    Example:
        >>> layer = MorphConv2d(2, 2, 3, mode="erosion", padding=1, groups=2, padding_mode="replicate")
        >>> mask = torch.zeros(8, 8, dtype=torch.bool); mask[:4] = True
        >>> y = layer(torch.randn(1, 2, 8, 8), mask)
        >>> y.shape, bool(y[..., 4:, :].any())
        (torch.Size([1, 2, 8, 8]), False)
    """

    _padding_modes = MORPH_PADDING_MODES

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        mode: str = "dilation",
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        compile: bool | str = "auto",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode)
        check_compile(compile)
        self.compile_mode = compile  # not self.compile: that is nn.Module.compile()
        if mode not in MORPH_MODES:
            raise ValueError(f"mode must be one of {MORPH_MODES}, got {mode!r}")
        self.mode = mode
        self.weight = nn.Parameter(torch.empty(self._weight_shape(), device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.weight, -0.1, 0.1)

    def forward(self, input: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return morph_conv2d(
            input, self.weight, self.mode, mask=mask, groups=self.groups, compile=self.compile_mode, **self._geometry()
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mode={self.mode!r}"


class DynamicConv2d(_WindowConv):
    """A convolution whose weights a small MLP computes from each patch.

    See :func:`dynamic_conv2d`. The module owns ``kernel_net``: Linear(C·kh·kw → hidden) → ReLU →
    Linear(hidden → O·C·kh·kw). Its last bias starts as a ``nn.Conv2d`` weight and its last weight small, so the layer
    starts close to an ordinary convolution and learns how the kernel should depend on the patch.

    Example:
        >>> layer = DynamicConv2d(2, 3, 3, padding=1, hidden=4)
        >>> layer(torch.randn(1, 2, 8, 8)).shape
        torch.Size([1, 3, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        hidden: int = 16,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        compile: bool | str = "auto",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, 1, padding_mode)
        check_compile(compile)
        self.compile_mode = compile  # not self.compile: that is nn.Module.compile()
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        kw = dict(device=device, dtype=dtype)
        ck = self._fan_in()
        self.hidden = hidden
        self.kernel_net = nn.Sequential(
            nn.Linear(ck, hidden, **kw), nn.ReLU(), nn.Linear(hidden, out_channels * ck, **kw)
        )
        self.bias = nn.Parameter(torch.empty(out_channels, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        first, last = self.kernel_net[0], self.kernel_net[2]
        first.reset_parameters()
        last.reset_parameters()
        with torch.no_grad():
            base = torch.empty(self._weight_shape(), dtype=last.bias.dtype, device=last.bias.device)
            _conv_init(base, self.bias, self._fan_in())
            last.bias.copy_(base.reshape(-1))
            last.weight.mul_(0.1 / math.sqrt(self._fan_in()))

    def kernel_fn(self, patches: torch.Tensor) -> torch.Tensor:
        """Per-window weights (Tensor[P, O, C·kh·kw]) of patches (Tensor[P, C·kh·kw])."""
        return self.kernel_net(patches).view(patches.shape[0], self.out_channels, -1)

    def forward(self, input: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return dynamic_conv2d(
            input,
            self.kernel_fn,
            self.out_channels,
            self.kernel_size,
            self.bias,
            mask=mask,
            compile=self.compile_mode,
            **self._geometry(),
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", hidden={self.hidden}"
