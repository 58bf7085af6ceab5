"""One per-file path: ``POST /convolve``, ``roiconv apply`` in process and ``roiconv apply --server`` write the same
bytes for the same file (camera-like files of every format, tests/service/crafted.py), with nothing identifying left
(read back by tests/service/metadata_oracle.py) unless ``--keep-metadata``; apply refuses the server's decode bombs."""

from __future__ import annotations

import asyncio
import json

import pytest
from crafted import SECRETS, camera_jpeg, camera_png, camera_tiff, camera_webp, png_trailing_bomb, scan_bomb
from metadata_oracle import leftovers, pillow_view
from service_support import post, running, smooth

from service.cli import main
from service.imaging import jpeg_roi

FILTER = {"name": "fill", "color": [0, 0, 255]}
BOX = [20, 30, 60, 70]
CASES = {  # name: (suffix, file maker, its arguments)
    "jpeg blocks": (".jpg", camera_jpeg, {}),
    "jpeg re-encoded": (".jpg", camera_jpeg, {"typ": 4}),  # a LONG orientation: written upright
    "png": (".png", camera_png, {}),
    "webp": (".webp", camera_webp, {}),
    "tiff": (".tiff", camera_tiff, {}),
}
FORMATS = {".jpg": "jpeg", ".png": "png", ".webp": "webp", ".tiff": "tiff"}


async def _served(data: bytes, spec: dict) -> bytes:
    async with running() as (_, client):
        response = await post(client, data, spec)
        assert response.status_code == 200, response.text
        return response.content


def _apply(tmp_path, name: str, data: bytes, *extra: str) -> bytes:
    src = tmp_path / "in" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    rois = tmp_path / "rois.json"
    rois.write_text(json.dumps({name: {"boxes": [BOX]}}))
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    argv = ["apply", str(src), "--out", str(out), "--roi", str(rois), "--filter", json.dumps(FILTER)]
    assert main([*argv, "--workers", "1", *extra]) == 0
    return (out / name).read_bytes()


@pytest.mark.parametrize("case", list(CASES))
def test_server_apply_and_apply_server_write_the_same_clean_file(case, tmp_path, server):
    suffix, make, options = CASES[case]
    if suffix == ".jpg" and not jpeg_roi.available():
        pytest.skip("libturbojpeg is not installed")
    data, _ = make(smooth(96, 128, seed=6), **options)
    served = asyncio.run(_served(data, {"filter": FILTER, "roi": {"boxes": [BOX]}}))
    here = _apply(tmp_path, "p" + suffix, data)
    remote = _apply(tmp_path, "p" + suffix, data, "--server", server.url)
    assert here == served == remote
    fmt = FORMATS[suffix]
    assert leftovers(here, fmt) == [] and not [s for s in SECRETS if s in here]
    assert abs(pillow_view(here)[BOX[1] + 4, BOX[0] + 4].astype(int) - [0, 0, 255]).max() <= 8  # the box is red
    kept = _apply(tmp_path, "p" + suffix, data, "--keep-metadata")
    assert kept == _apply(tmp_path, "p" + suffix, data, "--keep-metadata", "--server", server.url)
    assert (b"Jane Doe" in kept) == (fmt != "tiff")  # TIFF outputs carry the ICC profile only (as before)


def test_apply_refuses_the_servers_decode_bombs(tmp_path, capsys):
    """A progressive JPEG of 5,000 scans and a 1x1 PNG whose data inflates to 64 MiB: refused by the structure checks
    before decoding (the server answers 422), not decoded for seconds."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "scans.jpg").write_bytes(scan_bomb(256, 256, 5000))
    (folder / "zeros.png").write_bytes(png_trailing_bomb(64 * 2**20))
    rois = tmp_path / "rois.json"
    rois.write_text(json.dumps({"scans.jpg": {"boxes": [[0, 0, 8, 8]]}, "zeros.png": {"boxes": [[0, 0, 1, 1]]}}))
    argv = ["apply", str(folder), "--out", str(tmp_path / "out"), "--roi", str(rois), "--workers", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "scans, more than the 500 allowed" in err and "inflates to more than the 2 bytes" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
