"""``roiconv apply`` over a temporary folder: sidecars, a mapping file, COCO, a corrupt file among good ones, resume,
dry run, metadata, ``--server``; and the ``roiconv`` entry point (no subcommand, port in use)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest
from crafted import exif_app1, icc_app2
from service_support import ROOT, ServerProcess, smooth

from service.cli import main

FILTER = '{"name": "gaussian", "ksize": 15}'


def expected(img: np.ndarray, boxes: list[list[int]]) -> np.ndarray:
    """cv2.GaussianBlur of the whole image, written back only inside the boxes."""
    blurred = cv2.GaussianBlur(img, (15, 15), 0, borderType=cv2.BORDER_REFLECT_101)
    out = img.copy()
    for x0, y0, x1, y1 in boxes:
        out[max(y0, 0) : y1, max(x0, 0) : x1] = blurred[max(y0, 0) : y1, max(x0, 0) : x1]
    return out


def assert_filtered(path, img, boxes):
    got = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    want = expected(img, boxes)
    assert got is not None and got.shape == img.shape
    assert np.abs(got.astype(int) - want).max() <= 1  # OpenCV within its ±1 rounding
    outside = np.ones(img.shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        outside[max(y0, 0) : y1, max(x0, 0) : x1] = False
    np.testing.assert_array_equal(got[outside], img[outside])
    assert (got != img).any()


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    imgs = {"a.png": smooth(60, 80, seed=0), "b.png": smooth(50, 70, seed=1), "sub/c.png": smooth(40, 64, seed=2)}
    for name, img in imgs.items():
        cv2.imwrite(str(folder / name), img)
    boxes = {"a.png": [[5, 5, 30, 25]], "b.png": [[-3, 20, 20, 60]], "sub/c.png": [[40, 10, 64, 30]]}
    return folder, imgs, boxes


def test_sidecars_corrupt_file_resume_and_overwrite(photos, tmp_path, capsys):
    folder, imgs, boxes = photos
    for name, b in boxes.items():
        (folder / name).with_suffix(".json").write_text(json.dumps({"boxes": b}))
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "bad.json").write_text('{"boxes": [[0, 0, 5, 5]]}')
    out = tmp_path / "out"
    assert main(["apply", str(folder), "--out", str(out), "--filter", FILTER, "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "done 3" in err and "failed 1" in err and "FAILED" in err and "bad.png" in err
    assert "[4/4]" in err and "ETA" in err  # plain progress lines off a terminal
    for name, img in imgs.items():
        assert_filtered(out / name, img, boxes[name])
    assert not (out / "bad.png").exists()
    stamp = (out / "a.png").stat().st_mtime_ns
    (out / "b.png").unlink()
    assert main(["apply", str(folder), "--out", str(out), "--filter", FILTER, "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "done 1" in err and "skipped 2" in err and (out / "a.png").stat().st_mtime_ns == stamp
    assert_filtered(out / "b.png", imgs["b.png"], boxes["b.png"])
    (folder / "bad.png").unlink()
    assert main(["apply", str(folder), "--out", str(out), "--filter", FILTER, "--workers", "1", "--overwrite"]) == 0
    assert "done 3" in capsys.readouterr().err


def test_mapping_file_globs_dry_run_and_mask_scale(photos, tmp_path, capsys):
    folder, imgs, boxes = photos
    mapping = tmp_path / "rois.json"
    mapping.write_text(json.dumps({"a.png": {"boxes": [[10, 10, 20, 20]]}, "b.png": {"boxes": []}}))
    out = tmp_path / "out"
    args = ["apply", str(folder / "*.png"), "--out", str(out), "--filter", FILTER, "--roi", str(mapping)]
    assert main([*args, "--dry-run", "--mask-scale", "2"]) == 0
    text = capsys.readouterr().out
    assert '"boxes":[[5,5,25,25]]' in text and "copy unchanged" in text and not out.exists()
    assert main([*args, "--mask-scale", "2", "--workers", "1"]) == 0
    assert_filtered(out / "a.png", imgs["a.png"], [[5, 5, 25, 25]])
    assert (out / "b.png").read_bytes() == (folder / "b.png").read_bytes()  # no shapes: copied unchanged
    assert not (out / "sub").exists()


def test_coco_boxes_polygons_and_categories(photos, tmp_path, capsys):
    folder, imgs, _ = photos
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "sub/c.png"}],
        "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "plate"}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [4.5, 6.2, 20, 10]},
            {"image_id": 1, "category_id": 2, "bbox": [50, 30, 10, 10]},
            {"image_id": 2, "category_id": 1, "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]], "bbox": [0, 0, 1, 1]},
        ],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    out = tmp_path / "out"
    argv = ["apply", str(folder), "--out", str(out), "--filter", FILTER, "--coco", str(path), "--workers", "1"]
    assert main([*argv, "--categories", "face"]) == 1  # b.png is in no annotation: left out, not copied
    assert "LEFT OUT" in capsys.readouterr().err and not (out / "b.png").exists()
    assert_filtered(out / "a.png", imgs["a.png"], [[4, 6, 25, 17]])  # bbox rounded outwards, plate left alone
    assert_filtered(out / "sub/c.png", imgs["sub/c.png"], [[10, 10, 31, 31]])  # polygon filled with its edges
    assert main([*argv, "--categories", "nope"]) == 2
    assert "unknown categories" in capsys.readouterr().err


def test_jpeg_keeps_icc_and_drops_exif_unless_asked(tmp_path):
    img = smooth(48, 64, seed=5)
    jpeg = cv2.imencode(".jpg", img)[1].tobytes()
    src = tmp_path / "in" / "p.jpg"
    src.parent.mkdir()
    src.write_bytes(jpeg[:2] + exif_app1(1, "<") + icc_app2() + jpeg[2:])
    src.with_suffix(".json").write_text('{"boxes": [[8, 8, 40, 30]]}')
    out = tmp_path / "out"
    assert main(["apply", str(src), "--out", str(out), "--filter", FILTER, "--workers", "1"]) == 0
    data = (out / "p.jpg").read_bytes()
    assert b"Exif" not in data and icc_app2() in data  # the profile is what display needs
    assert cv2.imdecode(np.frombuffer(data, np.uint8), 1).shape == img.shape
    argv = ["apply", str(src), "--out", str(out), "--filter", FILTER, "--workers", "1", "--overwrite"]
    assert main([*argv, "--keep-metadata"]) == 0
    data = (out / "p.jpg").read_bytes()
    assert exif_app1(1, "<") in data and icc_app2() in data


def test_server_mode_matches_in_process(photos, tmp_path, capsys):
    folder, imgs, boxes = photos
    mapping = tmp_path / "rois.json"
    mapping.write_text(json.dumps({k: {"boxes": v} for k, v in boxes.items()}))
    server = ServerProcess()
    try:
        server.wait_ready()
        argv = ["apply", str(folder), "--filter", FILTER, "--roi", str(mapping)]
        assert main([*argv, "--out", str(tmp_path / "remote"), "--server", server.url, "--concurrency", "3"]) == 0
    finally:
        server.stop()
    assert main([*argv, "--out", str(tmp_path / "local"), "--workers", "1"]) == 0
    for name in imgs:
        local = cv2.imread(str(tmp_path / "local" / name), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "remote" / name), cv2.IMREAD_UNCHANGED), local)


def test_no_subcommand_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "serve" in capsys.readouterr().err


def test_port_in_use_fails_before_start_up(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--host", "127.0.0.1", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "--port" in err


def test_bad_arguments_exit_2(photos, tmp_path, capsys):
    folder, _, _ = photos
    assert main(["apply", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--filter", "box"]) == 2
    assert (
        main(
            [
                "apply",
                str(folder),
                "--out",
                str(tmp_path / "o"),
                "--filter",
                '{"name": "box", "ksize": 4}',
                "--roi",
                str(_write(tmp_path / "r.json", {"a.png": {"boxes": [[0, 0, 4, 4]]}})),
            ]
        )
        == 2
    )
    assert "spec.filter.ksize" in capsys.readouterr().err


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_progress_bar_on_a_terminal():
    import io

    from service.cli.apply import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    bar = Progress(2, stream)
    bar.step("a.png", "done")
    bar.step("b.png", "failed: spec.filter.ksize: must be odd")
    bar.close()
    text = stream.getvalue()
    assert "2/2" in text and "img/s" in text and "b.png: failed: spec.filter.ksize" in text
    assert "[1/2]" not in text  # the bar, not the plain lines


_BLOCKER = '''
import sys


class _Blocked:
    """A meta-path finder that refuses torch and convcore, as if they were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "convcore"):
            raise ImportError(f"{name} is blocked in this test")
        return None


sys.meta_path.insert(0, _Blocked())
'''


def test_in_process_opencv_filters_run_without_torch(photos, tmp_path):
    # the hook goes in a sitecustomize so that the forkserver and its workers (fresh interpreters) load it too
    folder, imgs, boxes = photos
    for name, b in boxes.items():
        (folder / name).with_suffix(".json").write_text(json.dumps({"boxes": b}))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCKER)
    out = tmp_path / "out"
    code = (
        "import sys, service\n"
        f"assert service.__file__.startswith({str(ROOT)!r}), service.__file__\n"
        "from service.cli import main\n"
        f"rc = main(['apply', {str(folder)!r}, '--out', {str(out)!r}, '--filter', {FILTER!r}, '--workers', '2'])\n"
        "assert 'torch' not in sys.modules and 'convcore' not in sys.modules\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "done 3" in run.stderr
    for name, img in imgs.items():
        assert_filtered(out / name, img, boxes[name])
    # the hook does block: a filter that needs the torch engine fails, naming the import
    mix = json.dumps({"name": "kernel", "weights": [[[[0.0, 1.0, 0.0]]] * 3] * 3})
    code = code.replace(repr(FILTER), repr(mix)).replace(repr(str(out)), repr(str(tmp_path / "out2")))
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "blocked in this test" in run.stderr, run.stderr


_START_METHODS = """
import threading
from service.cli import apply
methods = [apply._pool_context(False).get_start_method(), apply._pool_context(True).get_start_method()]
stop = threading.Event()
other = threading.Thread(target=stop.wait)
other.start()
methods.append(apply._pool_context(False).get_start_method())
stop.set()
other.join()
import torch
methods.append(apply._pool_context(False).get_start_method())
print(" ".join(methods))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the workers fork only on Linux")
def test_workers_fork_from_the_command_only_when_that_is_safe():
    """Without detection, in a single-threaded process, the workers fork from it (no second interpreter); with
    detection, another thread running (whose locks a child could inherit held) or torch loaded, from a forkserver
    (a fresh interpreter: the test runs in one, as the command does)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", _START_METHODS], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["fork", "forkserver", "forkserver", "forkserver"]
