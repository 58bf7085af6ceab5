"""The pipeline's JPEG path that never decodes the whole image (service/imaging/jpeg_frame.py), end to end through
:func:`process`, against oracles that share none of its code: cv2.imdecode of the upload and of the response
(libjpeg-turbo's own decoder, which also applies the EXIF orientation), and OpenCV's filter applied to the whole
decoded upload for what the ROI should hold, within what one JPEG re-encode does to the same pixels."""

from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
from jpeg_support import KSIZE, SIGMA, VARIANTS, H, W, cv_jpeg, decode, floor_params, photo, ring
from PIL import Image

from service.imaging import jpeg_roi
from service.imaging.pipeline import process
from service.imaging.spec import Spec

pytestmark = pytest.mark.skipif(
    not jpeg_roi.available() and os.environ.get("CI") != "true",  # CI installs it (.ci/run): a failure there
    reason="libturbojpeg is not installed (Debian: apt-get install libturbojpeg0)",
)

GAUSSIAN = {"name": "gaussian", "ksize": KSIZE, "sigma": SIGMA}
BOXES = {"inside": (70, 50, 150, 130), "odd offsets": (33, 17, 61, 45), "right and bottom edges": (300, 220, 333, 251)}


def run(data: bytes, box, filt=GAUSSIAN, **spec) -> tuple[bytes, dict]:
    spec = Spec.model_validate({"filter": filt, "roi": {"boxes": [list(box)]}, **spec})
    body, media, headers = process(spec, data, max_pixels=10**8)
    assert media == "image/jpeg"
    return body, headers


def within_jpeg_error(got: np.ndarray, want: np.ndarray, inside: np.ndarray, variant: str, quality: int) -> None:
    """``got`` holds ``want`` inside, up to what cv2.imencode at the file's quality does to ``want`` there."""
    err = np.abs(got.astype(int) - want)[inside]
    floor = np.abs(decode(cv_jpeg(want, *floor_params(variant, quality))).astype(int) - want)[inside]
    assert err.mean() <= 1.25 * floor.mean() + 0.3, (err.mean(), floor.mean())
    assert np.percentile(err, 99) <= 1.25 * np.percentile(floor, 99) + 2, (np.percentile(err, 99), floor.max())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("where", BOXES)
def test_the_roi_holds_the_filter_and_nothing_changes_outside_its_blocks(variant, where):
    make, mcu, subsampled, quality = VARIANTS[variant]
    data, box = make(photo()), BOXES[where]
    body, headers = run(data, box)
    assert headers["X-JPEG"] == "blocks"
    before, after = decode(data), decode(body)
    changed = (before != after).any(2)
    outside = changed & ~ring([box], mcu, subsampled)
    assert not outside.any(), f"{outside.sum()} pixels changed outside the ROI's blocks"
    x0, y0, x1, y1 = box
    inside = np.zeros((H, W), bool)
    inside[y0:y1, x0:x1] = True
    want = before.copy()
    want[inside] = cv2.GaussianBlur(before, (KSIZE, KSIZE), SIGMA).reshape(before.shape)[inside]
    within_jpeg_error(after, want, inside, variant, quality)


def exif_jpeg(img: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(img[:, :, ::-1]).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_roi_is_given_upright_and_the_file_keeps_its_stored_frame(orientation):
    data = exif_jpeg(photo(), orientation)
    before = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # upright: cv2 applies the EXIF tag
    hu, wu = before.shape[:2]
    box = (wu // 4, hu // 3, wu // 4 + 60, hu // 3 + 40)
    body, headers = run(data, box)
    assert headers["X-JPEG"] == "blocks"
    after = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert after.shape == before.shape
    x0, y0, x1, y1 = box
    near = np.zeros((hu, wu), bool)
    near[max(y0 - 17, 0) : y1 + 17, max(x0 - 17, 0) : x1 + 17] = True  # a 16-pixel MCU and one upsampling pixel
    assert not ((before != after).any(2) & ~near).any()
    inside = np.zeros((hu, wu), bool)
    inside[y0:y1, x0:x1] = True
    want = before.copy()
    want[inside] = cv2.GaussianBlur(before, (KSIZE, KSIZE), SIGMA)[inside]
    within_jpeg_error(after, want, inside, "420", 95)
    stored = decode(body)
    assert stored.shape[:2] == (H, W)  # not turned: the blocks stay where they were


@pytest.mark.parametrize(
    "filt",
    [
        {"name": "pixelate", "block": 12},
        {"name": "fill", "color": [0]},
        {"name": "gaussian"},  # ksize "auto": sized to the piece
        {"name": "median", "ksize": 5},
    ],
    ids=lambda f: f["name"] + ("" if len(f) > 1 else " auto"),
)
def test_every_footprint_reads_what_the_filter_needs(filt):
    """The same request with a frame decoded only where the filter reads, and with a PNG upload (decoded whole,
    written as JPEG by cv2): the ROIs agree within the JPEG error of one re-encode."""
    data, box = cv_jpeg(photo()), BOXES["odd offsets"]
    body, headers = run(data, box, filt)
    assert headers["X-JPEG"] == "blocks"
    png = cv2.imencode(".png", decode(data))[1].tobytes()
    whole, _ = run(png, box, filt, format="jpeg", quality=100)
    x0, y0, x1, y1 = box
    inside = np.zeros((H, W), bool)
    inside[y0:y1, x0:x1] = True
    want = decode(whole)  # the filter on the whole decoded image, encoded at quality 100
    within_jpeg_error(decode(body), want, inside, "420", 95)


def test_only_an_edit_in_place_takes_the_block_path():
    data = cv_jpeg(photo())
    _, headers = run(data, BOXES["inside"], outside="zero")
    assert "X-JPEG" not in headers
    _, headers = run(data, BOXES["inside"], exif="ignore")
    assert headers["X-JPEG"] == "blocks"


def test_a_file_the_block_edit_refuses_is_decoded_whole_and_filtered(monkeypatch):
    """When the edit cannot run (libjpeg-turbo refuses the file), the frame is filled by OpenCV's decode of the
    whole image before anything is filtered or encoded: never a frame with pixels left undecoded."""
    from service.imaging import jpeg_frame

    def refuse(*args, **kwargs):
        raise jpeg_roi.Unsupported("refused for the test")

    monkeypatch.setattr(jpeg_frame, "edit", refuse)
    data, box = cv_jpeg(photo()), BOXES["inside"]
    body, _ = run(data, box)
    before, after = decode(data), decode(body)
    assert not ((before != after).any(2) & ~ring([box], (16, 16), True)).any()
    x0, y0, x1, y1 = box
    inside = np.zeros((H, W), bool)
    inside[y0:y1, x0:x1] = True
    want = before.copy()
    want[inside] = cv2.GaussianBlur(before, (KSIZE, KSIZE), SIGMA)[inside]
    within_jpeg_error(after, want, inside, "420", 95)
