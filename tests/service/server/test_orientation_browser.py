"""Orientation seen by a real browser: headless Chromium draws each output (JPEG, PNG, WebP; every kind of
orientation tag, well-formed or not) and shows the same picture as Pillow and cv2.imdecode, with the box filled
where it was drawn on the displayed photo."""

from __future__ import annotations

import numpy as np
import pytest
from crafted import camera_jpeg, camera_png, camera_webp
from metadata_oracle import chromium_view, cv2_view, pillow_view
from service_support import smooth

from service.imaging import jpeg_roi
from service.imaging.pipeline import process
from service.imaging.spec import Spec

BOX = [20, 30, 60, 70]
CASES = {
    "jpeg short": (camera_jpeg, "image/jpeg", {}),
    "jpeg long big-endian": (camera_jpeg, "image/jpeg", {"typ": 4}),
    "jpeg long little-endian": (camera_jpeg, "image/jpeg", {"typ": 4, "order": "<"}),
    "jpeg listed twice": (camera_jpeg, "image/jpeg", {"twice": True}),
    "jpeg header Exif\\0\\xff": (camera_jpeg, "image/jpeg", {"exif_header": b"Exif\x00\xff"}),
    "png short": (camera_png, "image/png", {}),
    "png long": (camera_png, "image/png", {"typ": 4}),
    "webp short": (camera_webp, "image/webp", {}),
}


@pytest.mark.skipif(not jpeg_roi.available(), reason="libturbojpeg is not installed")
def test_chromium_pillow_and_cv2_show_the_same_output(browser):
    browser.get("about:blank")
    spec = Spec.model_validate({"filter": {"name": "fill", "color": [0, 0, 255]}, "roi": {"boxes": [BOX]}})
    differ = {}
    for name, (make, media, options) in CASES.items():
        data, _ = make(smooth(96, 128, seed=4), **options)
        body = process(spec, data, max_pixels=10**7)[0]
        views = {"chromium": chromium_view(browser, body, media), "pillow": pillow_view(body), "cv2": cv2_view(body)}
        x0, y0, x1, y1 = BOX[0] + 2, BOX[1] + 2, BOX[2] - 2, BOX[3] - 2  # JPEG chroma blends the box's edge
        for viewer, view in views.items():
            if view.shape != views["pillow"].shape or np.abs(view.astype(int) - views["pillow"]).mean() > 2:
                differ[name] = f"{viewer} shows {view.shape[1]}x{view.shape[0]}, other pixels"
            elif np.abs(view[y0:y1, x0:x1].astype(int) - [0, 0, 255]).max() > 24:
                differ[name] = f"the box is not filled in {viewer}'s view"
    assert differ == {}
