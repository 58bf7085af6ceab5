"""The "auto" defaults hide a face the way the field checks it: a face detector that is not the code under test
(CenterFace, tests/service/face_oracle.py) finds the face before and no longer finds it after the server's own
pipeline filters the face's box with each default, for faces of 40 and 100 pixels in 512 x 512 photos and of 400
pixels in a 2048 x 2048 photo; and after ``roi.detect`` finds the face itself (grown by its default scale), for
faces of 24 to 400 pixels with each default (40 combinations), also when the photo comes as 16-bit or float pixels.
``python tests/service/imaging/test_strength.py`` prints the scores for the docs."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from face_oracle import THRESHOLD, face_scene, face_score  # noqa: E402

from service.imaging.pipeline import process  # noqa: E402
from service.imaging.spec import Spec  # noqa: E402

DEFAULTS = ["gaussian", "box", "median", "pixelate"]
SCENES = [(40, 512), (100, 512), (400, 2048)]  # (face width, photo size)


def anonymize(scene: np.ndarray, box: tuple[int, int, int, int], filt: dict | str) -> np.ndarray:
    """``scene`` with ``box`` filtered by the server's pipeline (in process)."""
    spec = Spec.model_validate({"filter": filt, "roi": {"boxes": [list(box)]}, "format": "npy"})
    buf = io.BytesIO()
    np.save(buf, scene)
    body, _, _ = process(spec, buf.getvalue(), max_pixels=1 << 24)
    return np.load(io.BytesIO(body))


@pytest.mark.parametrize(("face", "size"), SCENES, ids=[f"{f}px-face-in-{s}" for f, s in SCENES])
def test_no_default_leaves_a_face_the_detector_finds(face, size):
    scene, box = face_scene(face, size)
    before = face_score(scene, box)
    assert before >= 0.5, f"the detector must find the untouched face first (score {before:.3f})"
    after = {name: face_score(anonymize(scene, box, name), box) for name in DEFAULTS}
    found = {name: round(score, 3) for name, score in after.items() if score >= THRESHOLD}
    assert not found, f"a {face}-pixel face is still found after {found} (threshold {THRESHOLD})"


DETECTED = [24, 32, 40, 56, 80, 100, 140, 200, 280, 400]  # face widths; photos of 512, 1024 or 1536 pixels


def _scene_side(face: int) -> int:
    return 512 if face <= 100 else 1024 if face <= 200 else 1536


def detected_and_anonymized(scene: np.ndarray, filt: dict | str) -> tuple[np.ndarray, str]:
    """``scene`` with the faces ``roi.detect`` finds filtered (the server's pipeline), and how many it found."""
    spec = Spec.model_validate({"filter": filt, "roi": {"detect": {"what": "faces"}}, "format": "npy"})
    buf = io.BytesIO()
    np.save(buf, scene)
    body, _, headers = process(spec, buf.getvalue(), max_pixels=1 << 24)
    return np.load(io.BytesIO(body)), headers["X-Faces-Found"]


@pytest.mark.parametrize("face", DETECTED, ids=[f"{f}px" for f in DETECTED])
def test_a_detected_face_is_grown_enough_that_no_default_leaves_it_found(face):
    pytest.importorskip("torch")
    scene, box = face_scene(face, _scene_side(face))
    scores = {}
    for name in DEFAULTS:
        out, found = detected_and_anonymized(scene, name)
        assert found == "1", f"roi.detect found {found} faces in the {face}-pixel scene"
        scores[name] = face_score(out, box)
    found = {name: round(score, 3) for name, score in scores.items() if score >= THRESHOLD}
    assert not found, f"a detected {face}-pixel face is still found after {found} (threshold {THRESHOLD})"


@pytest.mark.parametrize("depth", ["uint16", "uint16 of 12 bits", "float32 0..1", "float32 0..255"])
def test_detection_scales_16_bit_and_float_photos_to_its_range(depth):
    """A photo in another depth is found and filtered as its 8-bit self is (a float32 photo in 0..255 once came back
    unchanged with 0 faces)."""
    pytest.importorskip("torch")
    scene, box = face_scene(100, 512)
    scale = {"uint16": 257.0, "uint16 of 12 bits": 4095 / 255, "float32 0..1": 1 / 255, "float32 0..255": 1.0}[depth]
    pixels = (scene * scale).astype(np.uint16 if depth.startswith("uint16") else np.float32)
    out, found = detected_and_anonymized(pixels, "gaussian")
    assert found == "1"
    assert face_score((out / scale).clip(0, 255).astype(np.uint8), box) < THRESHOLD


OLD = {
    "gaussian ksize 5 (the old default)": {"name": "gaussian", "ksize": 5},
    "gaussian ksize 9, sigma 2": {"name": "gaussian", "ksize": 9, "sigma": 2},
}


def _detected_table() -> None:
    """The residual scores after roi.detect and each default, per face size."""
    print("| face | photo | none | " + " | ".join(DEFAULTS) + " |")
    print("|---|---|---|" + "---|" * len(DEFAULTS))
    for face in DETECTED:
        scene, box = face_scene(face, _scene_side(face))
        after = [face_score(detected_and_anonymized(scene, n)[0], box) for n in DEFAULTS]
        cells = " | ".join(f"{v:.3f}" for v in after)
        print(f"| {face} px | {_scene_side(face)}² | {face_score(scene, box):.3f} | {cells} |", flush=True)


def _table() -> None:
    """The scores of docs/anonymization.md: before, after each default, after the old fixed sizes."""
    filters = {**{f"{n} (auto)": n for n in DEFAULTS}, **OLD}
    print("| filter | " + " | ".join(f"{f} px face in {s}²" for f, s in SCENES) + " |")
    print("|---|" + "---|" * len(SCENES))
    scenes = [face_scene(f, s) for f, s in SCENES]
    print("| none (the photo) | " + " | ".join(f"{face_score(im, b):.3f}" for im, b in scenes) + " |")
    for label, filt in filters.items():
        print(f"| {label} | " + " | ".join(f"{face_score(anonymize(im, b, filt), b):.3f}" for im, b in scenes) + " |")


def _figures(folder: Path) -> None:
    """docs/img/anonymization-*.png: the photo and each default around a face of 40 and of 400 pixels."""
    for face, size in (SCENES[0], SCENES[2]):
        scene, (x0, y0, x1, y1) = face_scene(face, size)
        w, h = x1 - x0, y1 - y0
        views = [scene] + [anonymize(scene, (x0, y0, x1, y1), n) for n in DEFAULTS]
        tiles = [v[max(0, y0 - h // 2) : y1 + h // 2, max(0, x0 - w // 2) : x1 + w // 2] for v in views]
        tiles = [cv2.resize(t, (128 * t.shape[1] // t.shape[0], 128), interpolation=cv2.INTER_AREA) for t in tiles]
        cv2.imwrite(str(folder / f"anonymization-{face}px.png"), np.hstack(tiles), [cv2.IMWRITE_PNG_COMPRESSION, 9])


if __name__ == "__main__":
    _table()
    _detected_table()
    if len(sys.argv) > 1:
        _figures(Path(sys.argv[1]))
