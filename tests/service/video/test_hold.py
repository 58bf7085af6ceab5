"""Faces across frames with a scripted detector: the judge is the known box of every face in every frame.

The frames are filled with solid red inside the cover (``fill``), so "covered" is read off the pixels: every pixel
of the true face box must be red. The scripted detector returns the true boxes, except on the frames it is told to
miss, the way CenterFace misses a fast or turned face in single frames.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.video import Anonymizer

W, H = 320, 240
RED = [0, 0, 255]


def _moving_face(frames: int, start: int = 0, speed: float = 4.0, size: int = 40, y: int = 90):
    """Per frame: the true box of one face moving right (None before ``start``)."""
    xs = [10 + round(speed * (t - start)) for t in range(frames)]
    return [None if t < start else (xs[t], y, xs[t] + size, y + size) for t in range(frames)]


class Scripted:
    """A detector that knows the truth: the boxes of the frame it is shown (matched by the array's identity),
    except on ``miss`` frames; a local search returns only faces whose centre lies in the search box."""

    def __init__(self, truth: list[list], miss: set[int] = frozenset()) -> None:
        self.truth, self.miss, self.ids = truth, set(miss), {}
        self.calls: list[tuple[int, bool]] = []

    def frame(self, t: int) -> np.ndarray:
        f = np.full((H, W, 3), 90, np.uint8)
        self.ids[id(f)] = t
        return f

    def __call__(self, frame: np.ndarray, box) -> list[np.ndarray]:
        t = self.ids[id(frame)]
        self.calls.append((t, box is None))
        if t in self.miss:
            return []
        out = []
        for b in self.truth[t]:
            if b is None:
                continue
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            if box is None or (box[0] <= cx < box[2] and box[1] <= cy < box[3]):
                out.append(np.array(b, np.float64))
        return out


def _run(truth: list[list], miss=(), **kw) -> tuple[list[np.ndarray], Scripted]:
    det = Scripted(truth, set(miss))
    anon = Anonymizer(filter={"name": "fill", "color": RED}, detect=det, cut=None, **kw)
    out = []
    for t in range(len(truth)):
        out += anon.push(det.frame(t))
    out += anon.flush()
    assert len(out) == len(truth)
    return out, det


def _leaks(out: list[np.ndarray], truth: list[list]) -> list[int]:
    """Frames where some true face box has a pixel that is not red."""
    bad = []
    for t, boxes in enumerate(truth):
        for b in boxes:
            if b is None:
                continue
            x0, y0, x1, y1 = max(b[0], 0), max(b[1], 0), min(b[2], W), min(b[3], H)
            if not (out[t][y0:y1, x0:x1] == RED).all():
                bad.append(t)
    return bad


def test_every_face_frame_covered_when_the_detector_misses_single_frames():
    faces = _moving_face(60)
    truth = [[b] for b in faces]
    miss = {8, 16, 17, 30, 31, 32, 40}  # keyframes among them (interval 8): 8, 16, 32, 40
    out, det = _run(truth, miss, interval=8, hold=12)
    assert _leaks(out, truth) == []
    whole = [t for t, full in det.calls if full]
    assert len(whole) < len(truth) / 4  # whole-frame detection on keyframes only


def test_a_face_is_covered_before_its_first_detection():
    """A face that appears between keyframes is first found at the next keyframe; the frames before are covered by
    local detection backwards (and the hold) although nothing ran the whole-frame detector on them."""
    faces = _moving_face(40, start=11)
    truth = [[b] for b in faces]
    out, _ = _run(truth, interval=8, hold=12)
    assert _leaks(out, truth) == []
    # backwards the search stops where the face is not found: the hold still covers frames 11-1 hold before
    out, _ = _run(truth, miss={11, 12, 13}, interval=8, hold=12)
    assert _leaks(out, truth) == []


def test_two_faces_crossing_and_a_fast_one():
    a = _moving_face(48, speed=6.0, y=30)
    b = [(250 - round(5 * t), 150, 290 - round(5 * t), 190) for t in range(48)]
    truth = [[x, y] for x, y in zip(a, b)]
    out, _ = _run(truth, miss={16, 24}, interval=8, hold=12)
    assert _leaks(out, truth) == []


def test_no_hold_across_a_scene_cut():
    """Frames after a cut show another scene: a face of the first shot is not held into it."""
    det_truth = [[(100, 100, 140, 140)] if t < 10 else [] for t in range(20)]
    det = Scripted(det_truth)
    anon = Anonymizer(filter={"name": "fill", "color": RED}, detect=det, hold=12)
    out = []
    for t in range(20):
        f = det.frame(t)
        f[:] = 30 if t < 10 else 220  # the cut: every pixel changes
        out += anon.push(f)
    out += anon.flush()
    assert _leaks(out, det_truth) == []
    assert anon.cuts == 1
    assert not (out[10] == RED).all(axis=2).any()  # first frame after the cut: nothing held


def test_frames_come_back_in_order_with_bounded_buffer():
    truth = [[] for _ in range(100)]
    det = Scripted(truth)
    anon = Anonymizer(filter={"name": "fill", "color": RED}, detect=det, interval=8, hold=12, cut=None)
    seen = []
    for t in range(100):
        f = det.frame(t)
        for o in anon.push(f):
            seen.append(det.ids[id(o)])
        assert len(anon.buffer) <= 8 + 12 + 1
    seen += [det.ids[id(o)] for o in anon.flush()]
    assert seen == list(range(100))


def test_bad_frames_are_refused():
    anon = Anonymizer(detect=False)
    with pytest.raises(ValueError, match="BGR uint8"):
        anon.push(np.zeros((10, 10), np.uint8))
    anon.push(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="the first was 10x10"):
        anon.push(np.zeros((12, 10, 3), np.uint8))


def test_held_after_the_detector_loses_it():
    """The detector stops finding a face that is still there (turned away, blurred by motion): the hold keeps it
    covered for its window after the last detection."""
    faces = _moving_face(40)
    truth = [[b] for b in faces]
    out, _ = _run(truth, miss=set(range(27, 40)), interval=8, hold=12)
    assert _leaks(out[:39], truth[:39]) == []  # 26 + 12 = 38: the last frame found plus the hold
