"""Every public op's docstring carries a runnable example, and every example in convcore runs as written."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import convcore

MODULES = sorted(m.name for m in pkgutil.walk_packages(convcore.__path__, "convcore.") if ".bench" not in m.name)


@pytest.mark.parametrize("name", convcore.__all__)
def test_public_names_have_an_example(name):
    obj = getattr(convcore, name)
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        pytest.skip(f"{name} is not a function or class")
    assert "Example:" in (obj.__doc__ or ""), f"{name}'s docstring has no Example: section"


@pytest.mark.parametrize("module", MODULES)
def test_examples_run(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {module} failed"


def test_examples_exist():
    attempted = sum(doctest.testmod(importlib.import_module(m)).attempted for m in MODULES)
    assert attempted >= 40
