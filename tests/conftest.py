"""Shared fixtures: the device under test and one table of per-dtype tolerances.

Run the same suite on a GPU with ``python -m pytest --device cuda`` or ``ROICONV_TEST_DEVICE=cuda``.
"""

from __future__ import annotations

import os

import pytest
import torch

# Relative tolerance per dtype: max |actual - expected| <= TOL * max(1, max |expected|).
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 6e-2,
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default=os.environ.get("ROICONV_TEST_DEVICE", "cpu"),
        help="torch device the convcore tests run on (cpu, cuda, cuda:1); env ROICONV_TEST_DEVICE",
    )


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA requested but not available")
    return dev


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    tol = TOLERANCES[dtype or expected.dtype]
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    expected = expected.to(actual.dtype)
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    scale = max(1.0, expected.double().abs().max().item() if expected.numel() else 0.0)
    assert err <= tol * scale, f"max abs error {err:.3g} > {tol:g} x {scale:.3g}"


@pytest.fixture(scope="session")
def tolerances() -> dict:
    """The per-dtype relative tolerances (:data:`TOLERANCES`), for tests that compare with their own helper."""
    return TOLERANCES


@pytest.fixture(scope="session")
def assert_close():
    """``assert_close(actual, expected, dtype=None)`` with the tolerance of ``dtype`` (default: expected's)."""
    return _assert_close
