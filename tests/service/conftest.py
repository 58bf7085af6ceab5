"""Fixtures for the service tests (helpers live in service_support.py)."""

from __future__ import annotations

import os
import shutil

import pytest
from service_support import ServerProcess


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ROICONV_") and name != "ROICONV_TEST_DEVICE":
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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _need_browser() -> None:
    missing = [n for n, p in (("chromium", CHROMIUM), ("chromedriver", DRIVER)) if p is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        message = f"needs {', '.join(missing)}: apt-get install -y chromium chromium-driver; pip install selenium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def chromium_driver(profile):
    """A headless Chromium driven by selenium, its profile in the folder ``profile``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,800",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture
def browser(tmp_path):
    _need_browser()
    driver = chromium_driver(tmp_path / "profile")
    try:
        yield driver
    finally:
        driver.quit()
