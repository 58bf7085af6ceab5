"""Fixtures for the service tests (helpers live in service_support.py)."""

from __future__ import annotations

import os

import pytest
from service_support import ServerProcess


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ROICONV_") and name not in ("ROICONV_TEST_DEVICE", "ROICONV_SCREENSHOT"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def server():
    """One real server process (default settings, loopback) shared by a test module."""
    p = ServerProcess()
    try:
        p.wait_ready()
        yield p
    finally:
        p.stop()


@pytest.fixture
def server_process():
    started: list[ServerProcess] = []

    def start(env: dict[str, str] | None = None) -> ServerProcess:
        p = ServerProcess(env)
        started.append(p)
        p.wait_ready()
        return p

    yield start
    for p in started:
        p.stop()
