"""The "auto" defaults hide a face the way the field checks it: a face detector that is not the code under test
(CenterFace, tests/service/face_oracle.py) finds the face before and no longer finds it after the server's own
pipeline filters the face's box with each default, for faces of 40 and 100 pixels in 512 x 512 photos and of 400
pixels in a 2048 x 2048 photo. ``python tests/service/imaging/test_strength.py`` prints the scores for the docs."""

from __future__ import annotations

import io
import sys
from pathlib import Path

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
