"""The one ladder every op climbs: traced → dense, compiled → eager.

* Under an outer ``torch.compile`` (:func:`convcore.compile.cache.tracing`) the op is one traceable expression over
  the whole input (``dense``): no engine loop, the outer graph owns the computation.
* Otherwise the op's setup (geometry, checked mask, output: :func:`convcore.engine.prepare_op`) is made once; an
  empty mask returns at once; then the compiled path runs where :func:`convcore.compile.cache.use_compiled` says
  so, and the eager path where it does not or where it cannot (:class:`convcore.compile.cache.CannotCompile`,
  warned about once with its reason).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence

import torch

from ..checks import check_mask
from ..engine import OpSetup, prepare_op
from ..geometry import ConvGeometry, conv_geometry
from .cache import CannotCompile, compiler_missing, remember, spent_eager, tracing, use_compiled

__all__ = ["run_op"]

Dense = Callable[[ConvGeometry, "torch.Tensor | None", "torch.Tensor | None"], torch.Tensor]
Path = Callable[[OpSetup], torch.Tensor]


def run_op(
    input: torch.Tensor,
    kernel_hw: Sequence[int],
    mask: torch.Tensor | None,
    out: torch.Tensor | None,
    out_channels: int | Sequence[int],
    geometry: dict,
    *,
    compile: bool | str,
    dense: Dense,
    eager: Path,
    compiled: Path | None = None,
    work: Callable[[OpSetup], int] | None = None,
    generic: bool = False,
    key: Hashable | None = None,
    params: Sequence[torch.Tensor] = (),
    allocate: bool = True,
) -> torch.Tensor:
    """An op's result by the first path of the ladder that applies (see the module docstring).

    Args:
        input (Tensor[N, C, H, W]), kernel_hw, mask, out, out_channels, geometry, allocate: as
            :func:`convcore.engine.prepare_op` takes them (``geometry``: stride, padding, dilation, padding_mode).
        compile: the op's ``compile=`` (True | False | "auto").
        dense: ``dense(geom, mask, out)`` — the traceable form (mask checked, not dropped when full).
        eager: ``eager(setup)`` — the reference path; returns the result.
        compiled: ``compiled(setup)`` — the compiled path (raises ``CannotCompile`` where unavailable); returns the
            result. None: the op has none.
        params: the op's weights (a call under autograd whose input or weights need a gradient is training).
        work: ``work(setup)`` — how many times one call evaluates the op's elementwise function, for "auto".
        generic, key: as :func:`convcore.compile.cache.use_compiled` takes them; a generic function that ran
            compiled is remembered under ``key``. Under compile="auto" the eager calls of a generic op are timed
            and counted per layer (``key``, channels, kernel, dtype, device) until it compiles.
    """
    if tracing():
        N, _, H, W = input.shape
        geom = conv_geometry((H, W), kernel_hw, **geometry)
        return dense(geom, check_mask(mask, N, geom.out_hw), out)
    setup = prepare_op(input, kernel_hw, mask, out, out_channels, allocate=allocate, **geometry)
    if setup.done:
        return setup.out
    amount = 0 if work is None else work(setup)
    layer = (key, input.shape[1], tuple(kernel_hw), out_channels, input.dtype, input.device.type)
    if compiled is not None and use_compiled(compile, input.device, amount, generic=generic, key=key, layer=layer):
        try:
            result = compiled(setup)
            if generic and key is not None:
                remember(key)
            return result
        except CannotCompile:
            pass
    timed = compile == "auto" and generic and compiled is not None and compiler_missing(input.device) is None
    t0 = time.perf_counter()
    result = eager(setup)
    if timed:
        training = torch.is_grad_enabled() and (input.requires_grad or any(p.requires_grad for p in params))
        spent_eager(layer, (time.perf_counter() - t0) * (3 if training else 1))
    return result
