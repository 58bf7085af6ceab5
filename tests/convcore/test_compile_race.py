"""A first compiled call in a fresh process never fails, however many processes start compiling at once."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FIRST_CALL = """
import torch
from convcore import window_op2d
torch.set_num_threads(1)
x, w = torch.randn(1, 1, 6, 6), torch.randn(1, 1, 3, 3)
y = window_op2d(x, w, lambda a, b: (a - b).abs(), compile=True)
assert y.shape == (1, 1, 4, 4), y.shape
"""


def _fresh_process(_: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-W", "error::RuntimeWarning", "-c", FIRST_CALL]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_first_compiled_calls_of_concurrent_fresh_processes_all_succeed():
    """8 fresh processes, 4 at a time, each compiling its first function (a warning of a fallback is an error:
    an import race that the fallback swallowed would pass unseen otherwise)."""
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(_fresh_process, range(8)))
    failed = [r.stderr.strip().splitlines()[-3:] for r in runs if r.returncode != 0]
    assert not failed, failed
