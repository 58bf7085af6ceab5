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


def record_compiled(monkeypatch: pytest.MonkeyPatch, label: Callable = lambda name, core: name) -> list:
    """Run every compiled core uncompiled (called directly) and return the list, filled as they run, of
    ``label(name, core)`` for each."""
    ran = []

    def run(name, core, key, args, dynamic=()):
        ran.append(label(name, core))
        return core(*args)

    patch_run_compiled(monkeypatch, run)
    return ran
