"""Helpers shared by the convcore tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import convcore.adaptive
import convcore.compile.bands
import convcore.compile.extremum
import convcore.compile.fused

# every module that calls the compile cache's run_compiled
_CALLERS = (convcore.compile.bands, convcore.compile.extremum, convcore.compile.fused, convcore.adaptive)


def patch_run_compiled(monkeypatch: pytest.MonkeyPatch, run: Callable) -> None:
    """Replace ``run_compiled(name, core, key, args, dynamic=())`` wherever an op calls it."""
    for module in _CALLERS:
        monkeypatch.setattr(module, "run_compiled", run)
