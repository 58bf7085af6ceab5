"""Output allocation.

A fresh ROI output is mostly zeros that are never written. ``torch.zeros`` fills every page up front, which on the
CPU costs more than computing a small ROI; memory from ``calloc`` (what NumPy's ``zeros`` asks for) is zeroed by the
OS lazily, page by page, so only the pages the ROI writes are ever touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}
_LAZY_MIN_BYTES = 1 << 20  # below this the allocator's cached blocks are cheaper


def zeros(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """A zero tensor of ``shape`` with ``like``'s dtype and device (lazily zeroed pages for large CPU buffers)."""
    dtype = _NUMPY_DTYPES.get(like.dtype)
    if like.device.type != "cpu" or dtype is None or int(np.prod(shape)) * like.element_size() < _LAZY_MIN_BYTES:
        return like.new_zeros(shape)
    return torch.from_numpy(np.zeros(tuple(shape), dtype=dtype))
