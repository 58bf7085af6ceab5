"""The page at GET /, in a real headless Chromium (Debian's chromium and chromium-driver, through selenium) against
a real uvicorn server: upload an image, draw a box with mouse events, run, and check that the result's pixels
changed inside the box only; a bad parameter shows the server's 4xx reason. Skipped when Chromium is missing,
except under CI=true, where it fails.

``ROICONV_SCREENSHOT=path.png`` saves a screenshot of the page after the run.
"""

from __future__ import annotations

import base64
import json
import os
import time

import cv2
import httpx
import numpy as np
import pytest


def wait_for(driver, script: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


def test_page_is_static_and_offline(server):
    html = httpx.get(server.url + "/", timeout=10).text
    assert "<canvas" in html and "/convolve" in html and "/filters" in html
    assert "http://" not in html and "https://" not in html and "//cdn" not in html  # nothing fetched from outside


def _drag(driver, canvas, box):
    """Mouse down at (x0, y0), move, mouse up at (x1, y1): image pixels mapped to the canvas's on-screen size."""
    from selenium.webdriver.common.action_chains import ActionChains

    rect = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
    sx, sy = rect[0] / canvas.get_property("width"), rect[1] / canvas.get_property("height")

    def offset(x, y):  # selenium 4 offsets are from the element's centre
        return round(x * sx - rect[0] / 2), round(y * sy - rect[1] / 2)

    (ax, ay), (bx, by) = offset(box[0], box[1]), offset(box[2], box[3])
    ActionChains(driver).move_to_element_with_offset(canvas, ax, ay).click_and_hold().move_by_offset(
        (bx - ax) // 2, (by - ay) // 2
    ).move_by_offset(bx - ax - (bx - ax) // 2, by - ay - (by - ay) // 2).release().perform()


def test_draw_a_box_run_and_only_the_box_changes(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    rng = np.random.default_rng(7)
    img = cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), (3, 3), 0)
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), img)
    browser.get(server.url + "/")
    wait_for(browser, "return document.getElementById('filter').options.length > 0")
    browser.find_element(By.ID, "file").send_keys(str(path))
    wait_for(browser, "return window.roiconvState.image !== null")
    canvas = browser.find_element(By.ID, "before")
    _drag(browser, canvas, (80, 60, 200, 150))
    shapes = browser.execute_script("return window.roiconvState.shapes")
    assert len(shapes) == 1 and shapes[0]["kind"] == "box"
    x0, y0, x1, y1 = shapes[0]["rect"]
    assert abs(x0 - 80) <= 3 and abs(y0 - 60) <= 3 and abs(x1 - 200) <= 3 and abs(y1 - 150) <= 3, shapes
    Select(browser.find_element(By.ID, "filter")).select_by_value("gaussian")
    ksize = browser.find_element(By.ID, "param-ksize")
    assert ksize.get_attribute("value") == "auto"  # the page's default: sized to each shape
    ksize.clear()
    ksize.send_keys("15")
    browser.find_element(By.ID, "run").click()
    wait_for(browser, "return window.roiconvState.done > 0")
    result = cv2.imdecode(
        np.frombuffer(base64.b64decode(browser.execute_script("return window.roiconvState.resultBase64")), np.uint8),
        cv2.IMREAD_UNCHANGED,
    )
    assert result.shape == img.shape
    changed = (result != img).any(axis=2)
    inside = np.zeros(changed.shape, bool)
    inside[y0:y1, x0:x1] = True
    assert changed[inside].mean() > 0.5, "the box was not filtered"
    assert not changed[~inside].any(), "pixels outside the box changed"
    want = cv2.GaussianBlur(img, (15, 15), 0)
    assert np.abs(result[inside].astype(int) - want[inside]).max() <= 1
    assert browser.find_element(By.ID, "download").is_displayed()
    if os.environ.get("ROICONV_SCREENSHOT"):
        browser.save_screenshot(os.environ["ROICONV_SCREENSHOT"])

    ksize.clear()
    ksize.send_keys("4")
    browser.find_element(By.ID, "run").click()
    error = wait_for(browser, "return document.getElementById('error').textContent")
    assert "422" in error and "spec.filter.ksize" in error and "odd" in error


@pytest.mark.parametrize("suffix, magic", [(".jpg", b"\xff\xd8\xff"), (".webp", b"RIFF"), (".png", b"\x89PNG")])
def test_the_result_keeps_the_input_format_and_downloads_with_its_suffix(server, browser, tmp_path, suffix, magic):
    from selenium.webdriver.common.by import By

    rng = np.random.default_rng(3)
    path = tmp_path / f"holiday{suffix}"
    cv2.imwrite(str(path), cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (5, 5), 0))
    browser.get(server.url + "/")
    wait_for(browser, "return document.getElementById('filter').options.length > 0")
    browser.find_element(By.ID, "file").send_keys(str(path))
    wait_for(browser, "return window.roiconvState.image !== null")
    _drag(browser, browser.find_element(By.ID, "before"), (20, 20, 100, 90))
    browser.find_element(By.ID, "run").click()
    wait_for(browser, "return window.roiconvState.done > 0")
    body = base64.b64decode(browser.execute_script("return window.roiconvState.resultBase64"))
    assert body.startswith(magic), body[:8]
    name = browser.find_element(By.ID, "download").get_attribute("download")
    assert name == f"holiday-roiconv{suffix}", name


def test_the_docs_page_renders_code_and_its_form_defaults_to_a_filter_that_anonymizes(server, browser):
    from selenium.webdriver.common.by import By

    assert "``" not in httpx.get(server.url + "/openapi.json", timeout=10).text
    browser.get(server.url + "/docs")
    wait_for(browser, "return document.querySelectorAll('#ops .op').length > 0")
    text = browser.execute_script("return document.body.innerText")
    assert "``" not in text and "`" not in text.split("Schemas")[0], text[:2000]
    assert browser.execute_script("return document.querySelectorAll('#ops code').length") > 5
    spec = json.loads(browser.find_element(By.NAME, "spec").get_attribute("value"))
    assert spec["filter"] == {"name": "gaussian"}  # ksize "auto": sized to the box, as the page's default
    r = httpx.post(
        server.url + "/convolve",
        files={"image": ("i.png", cv2.imencode(".png", np.zeros((100, 130, 3), np.uint8))[1].tobytes())},
        data={"spec": json.dumps(spec)},
        timeout=60,
    )
    assert r.status_code == 200, r.text
