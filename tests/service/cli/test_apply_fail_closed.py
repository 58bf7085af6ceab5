"""``roiconv apply`` fails closed (issues #18 and #20), through the real CLI (``python -m service apply``) in a
subprocess on a temporary folder: bad ROI entries stop the run before anything is written, inputs without a ROI are
left out, unused entries are listed, outputs are written atomically, sizes are checked from the header, the output
folder is never read back as input, and links out of an input folder are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import pytest
from service_support import ROOT, rand_image


def apply(*args, env: dict | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    """``python -m service apply ARGS`` (or ``python -c CODE ARGS``), one worker, ROICONV_* from ``env``."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    head = ["-c", code, "apply"] if code else ["-m", "service", "apply"]
    argv = [sys.executable, *head, *map(str, args), "--workers", "1"]
    return subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=120)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.png", "sub/c.png"]):
        cv2.imwrite(str(folder / name), rand_image(40, 60, seed=i))
    return folder


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def files(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_a_misspelt_key_stops_the_run_naming_file_entry_key_and_the_fix(photos, tmp_path):
    rois = write_json(tmp_path / "rois.json", {"a.png": {"boxes": [[0, 0, 9, 9]]}, "b.png": {"box": [[1, 1, 5, 5]]}})
    r = apply(photos, "--out", tmp_path / "out", "--roi", rois)
    assert r.returncode == 2, r.stderr
    assert f"{rois}: entry 'b.png': spec.roi.box: box: unknown field; did you mean boxes?" in r.stderr
    assert files(tmp_path / "out") == []  # nothing written, not even a.png


def test_bad_sidecars_and_coco_entries_stop_the_run(photos, tmp_path):
    write_json(photos / "a.json", {"boxes": [[0, 0, 9, 9]]})
    write_json(photos / "sub" / "c.json", {"boxes": [[5, 5, 1, 9]]})  # x1 < x0
    r = apply(photos, "--out", tmp_path / "out", "--filter", '{"name": "box", "kernel_size": 5}')
    assert r.returncode == 2 and "--filter: spec.filter.kernel_size" in r.stderr and "did you mean ksize?" in r.stderr
    r = apply(photos, "--out", tmp_path / "out", "--copy-unmatched")
    assert r.returncode == 2 and f"{photos / 'sub' / 'c.json'}: spec.roi.boxes" in r.stderr and "empty" in r.stderr
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "annotations": [{"image_id": 1, "bbox": [1, 1, 4, 4]}, {"image_id": 9, "bbox": [1, 1, 4, 4]}],
    }
    r = apply(photos, "--out", tmp_path / "out", "--coco", write_json(tmp_path / "coco.json", coco))
    assert r.returncode == 2 and "annotations[1]: image_id 9 is not in 'images'" in r.stderr
    assert files(tmp_path / "out") == []


def test_inputs_without_roi_are_left_out_and_unused_entries_listed(photos, tmp_path):
    rois = {"A.png": {"boxes": [[0, 0, 9, 9]]}, "sub/c.png": {"boxes": []}, "d.png": {"boxes": []}}
    r = apply(photos, "--out", tmp_path / "out", "--roi", write_json(tmp_path / "rois.json", rois))
    assert r.returncode == 1, r.stderr
    assert "did you mean" in r.stderr and "entry 'A.png'" in r.stderr  # the near miss: another case
    assert "LEFT OUT" in r.stderr and "UNUSED entry 'A.png'" in r.stderr and "UNUSED entry 'd.png'" in r.stderr
    assert files(tmp_path / "out") == ["sub/c.png"]  # a.png and b.png are not copied unblurred
    rois = {"a.png": {"boxes": []}}  # an entry without shapes: nothing to hide, copied
    r = apply(photos, "--out", tmp_path / "out2", "--roi", write_json(tmp_path / "rois.json", rois), "--copy-unmatched")
    assert r.returncode == 0, r.stderr
    for name in ("a.png", "b.png", "sub/c.png"):
        assert (tmp_path / "out2" / name).read_bytes() == (photos / name).read_bytes()


def test_no_roi_source_at_all_is_an_error_with_the_fix(photos, tmp_path):
    r = apply(photos, "--out", tmp_path / "out")
    assert r.returncode == 2 and "no ROI source" in r.stderr and "--roi" in r.stderr and "--coco" in r.stderr
    assert files(tmp_path / "out") == []


INTERRUPT = """
import pathlib, sys
from service.cli import main
def half_then_ctrl_c(path, data):
    open(path, "wb").write(data[: len(data) // 2])
    raise KeyboardInterrupt
pathlib.Path.write_bytes = half_then_ctrl_c
try:
    main(sys.argv[1:])
except KeyboardInterrupt:
    print("interrupted")
"""


def test_an_interrupted_copy_leaves_nothing_that_a_later_run_skips(photos, tmp_path):
    rois = write_json(tmp_path / "rois.json", {"a.png": {"boxes": []}})
    out = tmp_path / "out"
    r = apply(photos / "a.png", "--out", out, "--roi", rois, code=INTERRUPT)
    assert "interrupted" in r.stdout and files(out) == []  # no partial a.png, no temporary left behind
    r = apply(photos / "a.png", "--out", out, "--roi", rois)
    assert r.returncode == 0 and (out / "a.png").read_bytes() == (photos / "a.png").read_bytes()


def test_the_size_is_checked_from_the_header_before_decoding(photos, tmp_path):
    rois = write_json(tmp_path / "rois.json", {"a.png": {"boxes": [[0, 0, 9, 9]]}})
    r = apply(photos / "a.png", "--out", tmp_path / "out", "--roi", rois, env={"ROICONV_MAX_PIXELS": "1000"})
    assert (
        r.returncode == 1
        and "60x40 = 2400 pixels, more than the limit 1000" in r.stderr
        and files(tmp_path / "out") == []
    )


def test_an_output_folder_inside_the_input_is_never_read_back(photos, tmp_path):
    rois = write_json(tmp_path / "rois.json", {n: {"boxes": []} for n in ("a.png", "b.png", "c.png")})
    out = photos / "anon"
    for _ in range(2):
        r = apply(photos, "--out", out, "--roi", rois, "--overwrite")
        assert r.returncode == 0, r.stderr
    assert files(out) == ["a.png", "b.png", "sub/c.png"]  # no anon/anon/...
    r = apply(photos, "--out", photos, "--roi", rois)
    assert r.returncode == 2 and "the outputs would replace the originals" in r.stderr


def test_a_link_out_of_the_input_folder_is_refused_unless_asked(photos, tmp_path):
    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    cv2.imwrite(str(secret), rand_image(40, 60, seed=9))
    (photos / "sub" / "link.png").symlink_to(secret)
    rois = write_json(tmp_path / "rois.json", {n: {"boxes": [[0, 0, 9, 9]]} for n in ("a.png", "b.png", "c.png")})
    r = apply(photos, "--out", tmp_path / "out", "--roi", rois)
    assert r.returncode == 2 and "link.png is a link to" in r.stderr and "--follow-symlinks" in r.stderr
    assert files(tmp_path / "out") == []
    rois = write_json(tmp_path / "rois.json", {n: {"boxes": []} for n in ("a.png", "b.png", "c.png", "link.png")})
    r = apply(photos, "--out", tmp_path / "out", "--roi", rois, "--follow-symlinks")
    assert r.returncode == 0 and files(tmp_path / "out") == ["a.png", "b.png", "sub/c.png", "sub/link.png"]
