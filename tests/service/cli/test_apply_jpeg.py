"""``roiconv apply`` on JPEGs: outside the ROI's blocks the output decodes to the input's pixels exactly (cv2's decode
of both files is the oracle), EXIF orientation honoured, the orientation and file size kept."""

from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from service.cli import main
from service.imaging import jpeg_roi

pytestmark = pytest.mark.skipif(
    not jpeg_roi.available() and os.environ.get("CI") != "true",  # CI installs it (.ci/run): a failure there
    reason="libturbojpeg is not installed (Debian: apt-get install libturbojpeg0)",
)


def photo(h: int, w: int) -> np.ndarray:
    small = np.random.default_rng(3).integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("orientation", [1, 6])
def test_apply_changes_no_pixel_outside_the_roi_blocks(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(photo(256, 320)[:, :, ::-1]).save(buf, "JPEG", quality=92, exif=exif.tobytes())
    src = tmp_path / "in" / "p.jpg"
    src.parent.mkdir()
    src.write_bytes(buf.getvalue())
    src.with_suffix(".json").write_text('{"boxes": [[40, 48, 120, 100]]}')  # in the upright image's coordinates
    out = tmp_path / "out"
    assert main(["apply", str(src), "--out", str(out), "--filter", '{"name": "gaussian", "ksize": 15}']) == 0
    data = (out / "p.jpg").read_bytes()
    before = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR)  # upright
    after = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    changed = (before != after).any(2)
    ring = np.zeros(changed.shape, bool)
    ring[48 - 17 : 100 + 17, 40 - 17 : 120 + 17] = True  # the box's MCUs and the upsampling pixel, either frame
    assert changed[48:100, 40:120].mean() > 0.5 and not changed[~ring].any()
    assert 0.97 < len(data) / src.stat().st_size < 1.03
    kept = Image.open(io.BytesIO(data)).getexif()
    assert kept.get(0x0112, 1) == orientation and len(kept) <= 1  # the orientation tag alone (none when 1)
