"""Where the fused kernels can run: no triton import here, so every module of the package may use it."""

from __future__ import annotations

import os


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` is set to a true value: kernels then run on CPU tensors, slowly (tests).

    Read at each call, as Triton reads it when a kernel is jitted (the fused kernel is jitted on its first call).
    """
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")
