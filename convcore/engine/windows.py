"""The windows engine: gather the receptive windows of in-mask positions chunk by chunk, compute, scatter back.

The per-chunk compute is the seam every op plugs into::

    compute(cols: Tensor[C, kh*kw, P]) -> Tensor[O, P]

``cols[:, :, p]`` is the window of the p-th position of the chunk (borders resolved per padding mode, zero
padding read as 0), channels-major as ``F.unfold`` orders them; the result's column p is written at that position.
roi_conv2d's compute is one grouped matmul; the window ops reduce their own function over the window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from ..gather import as_plane, gather_windows, scatter_windows, window_index
from ..geometry import ConvGeometry
from .policy import chunk_count, scratch

__all__ = ["WindowJob", "WindowsCompute", "run_windows"]

WindowsCompute = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, eq=False)
class WindowJob:
    """The windows of positions (oy, ox) (long Tensor[P] each) of one ``image`` (Tensor[C, H, W]), written into
    ``out`` (Tensor[O, H_out, W_out]); ``geom`` is the image's resolved geometry."""

    image: torch.Tensor
    out: torch.Tensor
    oy: torch.Tensor
    ox: torch.Tensor
    geom: ConvGeometry


def run_windows(
    jobs: Sequence[WindowJob],
    compute: WindowsCompute,
    *,
    window_bytes: int,
    recompute: bool = False,
    reuse: bool = True,
) -> None:
    """Run ``compute`` over the windows of every job, one call per chunk of at most :func:`chunk_count` windows.

    Windows of several jobs (images) share a chunk, so their compute is one call. A chunk of one job is gathered
    into the thread's reused scratch buffer (``reuse``; never under autograd, whose saved tensors must stay
    intact); with ``recompute`` each chunk's compute is checkpointed, so autograd keeps only the chunk's windows
    and recomputes the intermediates in the backward pass (``compute`` must then be deterministic).

    Args:
        jobs: what to compute where (see :class:`WindowJob`).
        compute: ``compute(cols)`` with cols (Tensor[C, kh*kw, P]) → Tensor[O, P].
        window_bytes: working memory one window costs (gathered values and the compute's intermediates).
    """
    if not jobs:
        return
    first = jobs[0].image
    chunk = chunk_count(window_bytes, first.device)
    pending: list[tuple[WindowJob, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    count = 0

    def flush() -> None:
        nonlocal pending, count
        if len(pending) == 1:
            job, oy, ox, idx, valid = pending[0]
            C, K, p = job.image.shape[0], idx.shape[0], idx.shape[1]
            buf = scratch("windows", C * K * p, first).view(C, K, p) if reuse else None
            cols = gather_windows(as_plane(job.image), idx, valid, out=buf)  # [C, K, p]
        else:
            cols = torch.cat([gather_windows(as_plane(j.image), i, v) for j, _, _, i, v in pending], dim=2)
        values = checkpoint(compute, cols, use_reentrant=False) if recompute else compute(cols)  # [O, P]
        start = 0
        for job, oy, ox, _, _ in pending:
            p = oy.shape[0]
            scatter_windows(job.out, oy, ox, values[:, start : start + p])  # out[:, oy, ox] = [O, p]
            start += p
        pending, count = [], 0

    for job in jobs:
        start, total = 0, job.oy.shape[0]
        while start < total:
            take = min(chunk - count, total - start)
            oy, ox = job.oy[start : start + take], job.ox[start : start + take]
            idx, valid = window_index(oy, ox, job.geom)  # [K, p]
            pending.append((job, oy, ox, idx, valid))
            count += take
            start += take
            if count >= chunk:
                flush()
    if pending:
        flush()
