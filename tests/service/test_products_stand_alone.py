"""Each product stands alone and the layers go one way: a module imports in a fresh interpreter where the packages
it must not need are blocked (``sys.modules[name] = None`` makes ``import name`` raise ImportError)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from service_support import ROOT

WEB = ["fastapi", "starlette", "uvicorn", "prometheus_client", "httpx"]
TORCH = ["torch", "convcore"]

CASES = [
    # imaging: bytes → pixels → bytes, no web framework; torch only in the torch engine and the served networks
    (
        [
            "service.imaging.pipeline",
            "service.imaging.codec",
            "service.imaging.metadata",
            "service.imaging.regions",
            "service.imaging.filters",
            "service.imaging.peak",
            "service.imaging.opencv_engine",
        ],
        WEB + TORCH,
    ),
    (["service.imaging.torch_engine", "service.imaging.networks"], WEB),
    # the device pool takes its runner injected: no engine, no torch
    (["service.server.devices", "service.server.batching"], TORCH),
    # roiconv apply in process: neither the server's framework nor torch
    (["service.cli.main", "service.cli.apply", "service.cli.sources"], ["fastapi", "starlette", "uvicorn", *TORCH]),
    # videos: no web framework, torch only where the detector runs, PyAV only where files are read and written
    (
        ["service.video", "service.video.stream", "service.video.hold", "service.video.container", "service.cli.video"],
        [*WEB, *TORCH, "av"],
    ),
]


@pytest.mark.parametrize("modules,blocked", CASES, ids=[c[0][0] for c in CASES])
def test_imports_without_what_the_layer_must_not_need(modules, blocked):
    code = (
        "import sys\n"
        f"for m in {blocked!r}: sys.modules[m] = None\n"
        f"for m in {modules!r}: __import__(m)\n"
        f"assert __import__('service').__file__.startswith({str(ROOT)!r})\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
