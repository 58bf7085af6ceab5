"""The tap-by-tap form of the window ops: for each kernel tap, the user's elementwise ``fn`` on the shifted view of a
band's patch, reduced over channels and accumulated (traceable: it is what gets compiled where the fused band does
not serve, and the dense form under an outer ``torch.compile``). AOTAutograd traces its backward."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["plus_bias", "window_band"]

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def window_band(
    patch: torch.Tensor,
    weight: torch.Tensor,
    fn: Fn,
    bias: torch.Tensor | None,
    reduce: str,
    keep_window: bool,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int = 1,
) -> torch.Tensor:
    """``reduce`` of ``fn(x, w)`` over every window of ``patch``, tap by tap (traceable; what gets compiled).

    ``fn`` is called once per tap (m, q) with ``x`` (Tensor[B, 1, C, h, w]), the tap's shifted view, and ``w``
    (Tensor[1, O, C, 1, 1]), the tap's weights (with ``groups`` > 1, per group: C/G and O/G channels), so it must
    be elementwise (broadcasting), as the eager contract says.

    Args:
        patch (Tensor[B, C, h_in, w_in]): the band's input with its halo, borders already resolved.
        weight (Tensor[O, C/groups, kh, kw]).
        bias (Tensor[O], optional).
        reduce: "sum" | "mean" | "max" | "min" | "logsumexp"; over (C, kh, kw), or C only with ``keep_window``.

    Returns:
        Tensor[B, O, h, w], or Tensor[B, O·kh·kw, h, w] with ``keep_window``.
    """
    B, C, h_in, w_in = patch.shape
    O, Cg, kh, kw = weight.shape
    (sh, sw), (dh, dw) = stride, dilation
    h, w = (h_in - dh * (kh - 1) - 1) // sh + 1, (w_in - dw * (kw - 1) - 1) // sw + 1
    if groups > 1:  # one group at a time (a 6-D grouped layout tripped Inductor's range analysis, torch 2.13)

        def one_group(p: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return window_band(p, w, fn, None, reduce, keep_window, stride, dilation)

        return plus_bias(_by_group(patch, weight, groups, one_group), bias, keep_window, kh * kw)
    x = patch.unsqueeze(1)  # [B, 1, C, h_in, w_in]
    wt = weight[None, :, :, :, :, None, None]  # [1, O, C, kh, kw, 1, 1]

    def tap(m: int, q: int) -> torch.Tensor:  # fn at tap (m, q): [B, (G,) O', Cg, h, w]
        xs = x[..., m * dh : m * dh + (h - 1) * sh + 1 : sh, q * dw : q * dw + (w - 1) * sw + 1 : sw]
        return fn(xs, wt[..., m, q, :, :])

    taps = [(m, q) for m in range(kh) for q in range(kw)]
    if keep_window:
        parts = [_reduce_channels(tap(m, q), reduce).reshape(B, O, h, w) for m, q in taps]  # each [B, O, h, w]
        if bias is not None:
            parts = [p + bias[:, None, None] for p in parts]
        return torch.stack(parts, dim=2).view(B, O * kh * kw, h, w)  # [B, O*kh*kw, h, w], (O, kh, kw) order
    if reduce == "logsumexp":  # two passes: the running max, then Σ exp(v − max) — fn is recomputed, not stored
        top = _accumulate([tap(m, q).amax(-3) for m, q in taps], torch.maximum).detach()
        top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
        y = _accumulate([torch.exp(tap(m, q) - top.unsqueeze(-3)).sum(-3) for m, q in taps], torch.add)
        y = torch.log(y) + top
    elif reduce in ("max", "min"):
        pick = torch.maximum if reduce == "max" else torch.minimum
        y = _accumulate([_reduce_channels(tap(m, q), reduce) for m, q in taps], pick)
    else:
        y = _accumulate([tap(m, q).sum(-3) for m, q in taps], torch.add)
        if reduce == "mean":
            y = y / (Cg * kh * kw)
    return y if bias is None else y + bias[:, None, None]  # [B, O, h, w]


def _reduce_channels(v: torch.Tensor, reduce: str) -> torch.Tensor:
    if reduce == "sum":
        return v.sum(-3)
    if reduce == "mean":
        return v.mean(-3)
    if reduce == "logsumexp":
        return torch.logsumexp(v, -3)
    return v.amax(-3) if reduce == "max" else v.amin(-3)


def _accumulate(parts: list[torch.Tensor], op: Callable) -> torch.Tensor:
    acc = parts[0]
    for p in parts[1:]:
        acc = op(acc, p)
    return acc


def _by_group(patch: torch.Tensor, weight: torch.Tensor, groups: int, run: Callable) -> torch.Tensor:
    """``run(patch_g, weight_g)`` per group, concatenated over channels: Tensor[B, O(·kh·kw), h, w]."""
    if groups == 1:
        return run(patch, weight)
    O, Cg = weight.shape[:2]
    Og = O // groups
    parts = [run(patch[:, k * Cg : (k + 1) * Cg], weight[k * Og : (k + 1) * Og]) for k in range(groups)]
    return torch.cat(parts, dim=1)  # each part [B, O/G(·kh·kw), h, w]


def plus_bias(y: torch.Tensor, bias: torch.Tensor | None, keep_window: bool, taps: int) -> torch.Tensor:
    """y (Tensor[B, O, h, w], or Tensor[B, O·taps, h, w] with ``keep_window``) plus the bias per output channel."""
    if bias is None:
        return y
    return y + (bias if not keep_window else bias.repeat_interleave(taps))[:, None, None]
