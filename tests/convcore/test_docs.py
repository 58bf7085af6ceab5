"""Every public op's docstring carries a runnable example, and every example in convcore runs as written."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import convcore

MODULES = sorted(m.name for m in pkgutil.walk_packages(convcore.__path__, "convcore.") if ".bench" not in m.name)


OPS = [n for n in convcore.__all__ if inspect.isfunction(getattr(convcore, n)) or inspect.isclass(getattr(convcore, n))]


@pytest.mark.parametrize("name", OPS)
def test_public_names_have_an_example(name):
    assert "Example:" in (getattr(convcore, name).__doc__ or ""), f"{name}'s docstring has no Example: section"


def test_public_constants_are_shown_in_an_example():
    """A public name that is neither a function nor a class (``ADDERNET_GRAD``) is used in some op's example."""
    constants = sorted(set(convcore.__all__) - set(OPS))
    examples = " ".join(getattr(convcore, n).__doc__ or "" for n in OPS)
    assert constants and all(n in examples for n in constants), constants


@pytest.mark.parametrize("module", MODULES)
def test_examples_run(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {module} failed"


def test_examples_exist():
    attempted = sum(doctest.testmod(importlib.import_module(m)).attempted for m in MODULES)
    assert attempted >= 40
