"""Ctrl-C in ``roiconv apply``, through a real process sent SIGINT: no new file starts after it (at most the files in
progress finish), the summary is printed, the exit status is 130, and every output on disk is whole (the oracle:
cv2.GaussianBlur of the input inside the ROI). In process and with ``--server``."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from service_support import ServerProcess, interrupted_apply, smooth

FILES = 240
BOX = [4, 4, 40, 30]


@pytest.fixture
def folder(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(FILES):
        cv2.imwrite(str(photos / f"p{i:03}.png"), smooth(48, 64, seed=i))
        (photos / f"p{i:03}.json").write_text(json.dumps({"boxes": [BOX]}))
    return photos


def _interrupted_run(folder, out, *options: str) -> tuple[int, list[str]]:
    """``roiconv apply`` on ``folder``, sent SIGINT once 10 files are done; (exit status, stderr lines)."""
    args = [str(folder), "--out", str(out), "--filter", '{"name": "gaussian", "ksize": 15}', *options]
    return interrupted_apply(args, lambda line: line.startswith("[10/"))


def _check(out, status: int, lines: list[str], in_flight: int) -> None:
    text = "\n".join(lines)
    assert status == 130, text
    notice = next(i for i, line in enumerate(lines) if "interrupted, finishing" in line)
    after = [line for line in lines[notice:] if line.startswith("[")]
    assert len(after) <= in_flight, after  # only files already started finished after the Ctrl-C
    summary = next(line for line in lines if line.startswith("done "))
    done = int(re.match(r"done (\d+)", summary).group(1))
    assert f"interrupted (Ctrl-C): {FILES - done} files not started" in text, text
    assert "Traceback" not in text, text
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == done < FILES, (len(written), done)
    assert not [n for n in written if n.endswith(".part") or n.startswith(".")], written
    blurred_box = (slice(BOX[1], BOX[3]), slice(BOX[0], BOX[2]))
    for name in written:
        img = smooth(48, 64, seed=int(name[1:4]))
        got = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        want = cv2.GaussianBlur(img, (15, 15), 0, borderType=cv2.BORDER_REFLECT_101)
        assert got is not None and got.shape == img.shape, name
        assert np.abs(got[blurred_box].astype(int) - want[blurred_box]).max() <= 1, name
        outside = np.ones(img.shape[:2], bool)
        outside[blurred_box] = False
        np.testing.assert_array_equal(got[outside], img[outside])


def test_ctrl_c_in_process_stops_starting_files_prints_the_summary_and_exits_130(folder, tmp_path):
    out = tmp_path / "out"
    status, lines = _interrupted_run(folder, out, "--workers", "2")
    _check(out, status, lines, in_flight=2)


def test_ctrl_c_with_a_server_cancels_the_calls_in_flight_and_exits_130(folder, tmp_path):
    server = ServerProcess()
    try:
        server.wait_ready()
        out = tmp_path / "out"
        status, lines = _interrupted_run(folder, out, "--server", server.url, "--concurrency", "4")
    finally:
        server.stop()
    _check(out, status, lines, in_flight=4)
