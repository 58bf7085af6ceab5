"""The README's snippets run as written: each ```python block as a script, and each ``roiconv apply`` line of the
```bash blocks as a command, in a fresh folder holding the files they name (photos/img001.jpg, rois.json,
photo.jpg). The client snippet talks to a real server started here; only its address (127.0.0.1:8000) is replaced
by that server's free port. Install commands (pip, apt-get) and ``roiconv serve`` are not run."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.bench.harness import serve

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(python|bash)\n(.*?)```", README, re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
APPLY = [line.split("  #")[0].strip() for lang, code in BLOCKS if lang == "bash" for line in code.splitlines()]
APPLY = [line for line in APPLY if line.startswith("roiconv apply")]
URL = "http://127.0.0.1:8000"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROICONV_")}
    return {**env, "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])}


def _photo(path: Path, seed: int = 0) -> np.ndarray:
    """A photo-like JPEG of 320×240 with the astronaut's face when scikit-image has it, else smooth noise."""
    try:
        import skimage.data

        img = cv2.resize(skimage.data.astronaut()[:, :, ::-1], (320, 320))[:240]
    except ImportError:
        img = cv2.GaussianBlur(np.random.default_rng(seed).integers(0, 256, (240, 320, 3), np.uint8), (9, 9), 0)
    cv2.imwrite(str(path), img)
    return img


def test_the_readme_has_the_snippets_this_test_runs():
    assert len(PYTHON) >= 2 and any(URL in code for code in PYTHON)
    assert len(APPLY) >= 2, APPLY


@pytest.mark.parametrize("line", APPLY)
def test_roiconv_apply_lines_run_as_written(line, tmp_path):
    (tmp_path / "photos").mkdir()
    _photo(tmp_path / "photos" / "img001.jpg")
    (tmp_path / "rois.json").write_text(json.dumps({"img001.jpg": {"boxes": [[40, 30, 200, 120]]}}))
    args = shlex.split(line)
    roiconv = shutil.which("roiconv")
    cmd = ([roiconv] if roiconv else [sys.executable, "-m", "service"]) + args[1:]
    run = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    out = cv2.imread(str(tmp_path / "anon" / "img001.jpg"))
    assert out is not None and out.shape == (240, 320, 3), run.stderr


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_blocks_run_as_written(index, tmp_path):
    code = PYTHON[index]
    _photo(tmp_path / "photo.jpg")
    original = cv2.imread(str(tmp_path / "photo.jpg"))
    with serve() if URL in code else nullcontext(URL) as url:
        (tmp_path / "snippet.py").write_text(code.replace(URL, url))
        cmd = [sys.executable, "snippet.py"]
        run = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    if "photo-anonymized.jpg" in code:
        out = cv2.imread(str(tmp_path / "photo-anonymized.jpg"))
        assert out is not None and out.shape == original.shape
        box = (slice(30, 120), slice(40, 200))
        assert np.abs(out[box].astype(int) - original[box]).mean() > 5  # pixelated inside the box
