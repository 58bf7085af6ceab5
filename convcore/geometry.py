"""Convolution geometry: padding resolution, output size, and the resolved :class:`ConvGeometry` of a call.

Everything here follows ``F.conv2d``: an int or a pair pads both sides equally, ``"valid"`` pads nothing and
``"same"`` (stride 1 only) pads ``dilation·(k − 1)`` in total, the extra pixel of an odd total at the bottom / right.
``padding_mode`` names the border rule of the padded pixels: "zeros", "reflect", "replicate" and "circular" as in
``nn.Conv2d`` / ``F.pad``, plus "symmetric". The names map onto OpenCV's border types as::

    convcore / PyTorch      OpenCV                   pixels left of  a b c d
    "zeros"                 BORDER_CONSTANT (0)      0 0 | a b c d
    "reflect"               BORDER_REFLECT_101       c b | a b c d      (the edge pixel is not repeated)
    "symmetric"             BORDER_REFLECT           b a | a b c d      (the edge pixel is repeated; numpy's name)
    "replicate"             BORDER_REPLICATE         a a | a b c d
    "circular"              BORDER_WRAP              c d | a b c d

Example:
    >>> g = conv_geometry((5, 6), (2, 3), padding="same", padding_mode="symmetric")
    >>> g.pad, g.out_hw
    ((0, 1, 1, 1), (5, 6))
    >>> conv_output_size((5, 6), (3, 3), stride=2, padding=(1, 1, 1, 1))
    (3, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PADDING_MODES", "ConvGeometry", "conv_geometry", "conv_output_size", "pair", "resolve_padding"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular", "symmetric")


def pair(name: str, value: int | Sequence[int], *, minimum: int) -> tuple[int, int]:
    """Turn an int or a pair of ints into a pair, checking each is an int ``>= minimum``.

    Example:
        >>> pair("stride", 2, minimum=1)
        (2, 2)
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum} in each dimension, got {tuple(value)}")
    return int(value[0]), int(value[1])


def resolve_padding(
    padding: int | Sequence[int] | str,
    kernel: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
) -> tuple[int, int, int, int]:
    """``padding`` as F.conv2d takes it → (top, bottom, left, right).

    Example:
        >>> resolve_padding("same", (4, 3), dilation=1)
        (1, 2, 1, 1)
    """
    stride = pair("stride", stride, minimum=1)
    dilation = pair("dilation", dilation, minimum=1)
    span_h, span_w = dilation[0] * (int(kernel[0]) - 1), dilation[1] * (int(kernel[1]) - 1)
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1 (as in F.conv2d), got stride {stride}")
            return (span_h // 2, span_h - span_h // 2, span_w // 2, span_w - span_w // 2)
        raise ValueError(f"padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    ph, pw = pair("padding", padding, minimum=0)
    return (ph, ph, pw, pw)


def conv_output_size(
    in_hw: Sequence[int],
    kernel: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: Sequence[int] = (0, 0, 0, 0),
    dilation: int | Sequence[int] = 1,
) -> tuple[int, int]:
    """(H_out, W_out) of a convolution over ``in_hw`` with resolved ``padding`` (top, bottom, left, right).

    Example:
        >>> conv_output_size((10, 10), (3, 3), padding=(1, 1, 1, 1))
        (10, 10)
    """
    stride = pair("stride", stride, minimum=1)
    dilation = pair("dilation", dilation, minimum=1)
    span_h, span_w = dilation[0] * (int(kernel[0]) - 1), dilation[1] * (int(kernel[1]) - 1)
    padded_h = int(in_hw[0]) + padding[0] + padding[1]
    padded_w = int(in_hw[1]) + padding[2] + padding[3]
    if padded_h < span_h + 1 or padded_w < span_w + 1:
        raise ValueError(
            f"kernel (with dilation) spans {(span_h + 1, span_w + 1)}, larger than the padded input "
            f"{(padded_h, padded_w)}; use a smaller kernel or more padding"
        )
    return (padded_h - span_h - 1) // stride[0] + 1, (padded_w - span_w - 1) // stride[1] + 1


@dataclass(frozen=True)
class ConvGeometry:
    """Resolved geometry of a 2-D sliding-window op over an input of spatial size ``in_hw`` = (H, W).

    ``pad`` is (top, bottom, left, right): "same" with an even kernel pads more at the bottom/right, exactly as
    ``F.conv2d(padding="same")`` does. Build it with :func:`conv_geometry`.

    Example:
        >>> conv_geometry((7, 7), (3, 3), dilation=2, padding="same").pad
        (2, 2, 2, 2)
    """

    in_hw: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int, int, int]
    dilation: tuple[int, int]
    out_hw: tuple[int, int]
    padding_mode: str

    @property
    def window(self) -> int:
        """Taps per window: kh·kw."""
        return self.kernel[0] * self.kernel[1]

    def input_span(self, y0: int, y1: int, x0: int, x1: int) -> tuple[int, int, int, int]:
        """Input rows/cols [iy0, iy1) × [ix0, ix1) (input coordinates, may be < 0 or past the edge: padding)
        read by the outputs [y0, y1) × [x0, x1)."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        top, left = self.pad[0], self.pad[2]
        iy0, ix0 = y0 * sh - top, x0 * sw - left
        return iy0, (y1 - 1) * sh - top + (kh - 1) * dh + 1, ix0, (x1 - 1) * sw - left + (kw - 1) * dw + 1


def conv_geometry(
    in_hw: Sequence[int],
    kernel: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    padding_mode: str = "zeros",
) -> ConvGeometry:
    """Validate stride/padding/dilation/padding_mode and compute the output size, as ``F.conv2d`` would.

    Example:
        >>> conv_geometry((8, 8), (3, 3), stride=2, padding=1).out_hw
        (4, 4)
    """
    kh, kw = int(kernel[0]), int(kernel[1])
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel size must be >= 1 in each dimension, got {(kh, kw)}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    stride = pair("stride", stride, minimum=1)
    dilation = pair("dilation", dilation, minimum=1)
    pad = resolve_padding(padding, (kh, kw), stride=stride, dilation=dilation)
    H, W = int(in_hw[0]), int(in_hw[1])
    if padding_mode == "reflect" and (max(pad[:2]) >= H or max(pad[2:]) >= W):
        raise ValueError(f"padding_mode='reflect' needs padding < input size, got padding {pad} for input {(H, W)}")
    if padding_mode in ("circular", "symmetric") and (max(pad[:2]) > H or max(pad[2:]) > W):
        raise ValueError(
            f"padding_mode={padding_mode!r} needs padding <= input size, got padding {pad} for input {(H, W)}"
        )
    out_hw = conv_output_size((H, W), (kh, kw), stride=stride, padding=pad, dilation=dilation)
    return ConvGeometry((H, W), (kh, kw), stride, pad, dilation, out_hw, padding_mode)
