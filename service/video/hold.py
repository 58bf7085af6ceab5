"""Faces across frames: tracks built from keyframe detections, refined by local detection, held where it misses.

The detector runs on the whole frame only on keyframes. Between two keyframes A and B (the frames in between are
buffered, not yet written) a :class:`Timeline` links B's faces to A's and fills the gap:

- a face at A and at B that moved (centre by more than a fifth of its size, or its size by more than a quarter) is
  searched for locally at the middle frame, inside the two boxes' union grown by half a face; the halves are split
  again until consecutive detections are close. Frames between two detections get the boxes' linear interpolation,
  grown on each side by half the displacement between them plus 5% of the size.
- a face new at B is searched for locally backwards, frame by frame, as long as it is found (within the buffer);
- a face at A missing at B is searched for locally forwards, frame by frame, as long as it is found.

Hold: around a track's first and last detections the face stays covered for ``hold`` more frames (before the first,
after the last), at the end box and at where its velocity carries it (their union, grown by 10%). A face the detector
misses on a keyframe is thus still covered, and found again at the next keyframe it is the same track (the gap is
interpolated). Scene cuts end every track: nothing is held or interpolated across a cut.

Boxes are float ndarrays [4] (x0, y0, x1, y1) in the frame's pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Timeline", "Track"]

Local = Callable[[int, np.ndarray], list[np.ndarray]]  # (frame index, search box) → boxes found inside it

_MOVED = 0.5  # centre displacement, as a share of the face's size, that asks for a detection in between
_RESIZED = 1.25  # size ratio that asks for one too
_SEARCH = 0.5  # a local search looks this share of a face's size around where the face was


@dataclass
class Track:
    """One face over time: the frames it was detected in (sorted) and its box in each; ``shot`` (first, last) the
    frames of its shot (last is None until a cut or the end closes the shot)."""

    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    shot: tuple[int, int | None] = (0, None)

    def add(self, index: int, box: np.ndarray) -> None:
        i = int(np.searchsorted(self.frames, index))
        if i < len(self.frames) and self.frames[i] == index:
            self.boxes[i] = box
            return
        self.frames.insert(i, index)
        self.boxes.insert(i, np.asarray(box, np.float64))

    def box_at(self, t: int, hold: int) -> np.ndarray | None:
        """The box covering this face in frame ``t``, or None (outside its detections ± hold, or its shot)."""
        first, last = self.frames[0], self.frames[-1]
        if t < self.shot[0] or (self.shot[1] is not None and t > self.shot[1]):
            return None
        if t < first - hold or t > last + hold:
            return None
        i = int(np.searchsorted(self.frames, t))
        if i < len(self.frames) and self.frames[i] == t:
            return self.boxes[i]
        if 0 < i < len(self.frames):
            f = (t - self.frames[i - 1]) / (self.frames[i] - self.frames[i - 1])
            return _between(self.boxes[i - 1], self.boxes[i], f)
        end = 0 if i == 0 else -1
        return _held(self.boxes[end], self._velocity(end), t - self.frames[end])

    def _velocity(self, end: int) -> np.ndarray:
        """Box change per frame at the first (end 0) or last (end -1) detection, from its neighbour detection."""
        if len(self.frames) < 2:
            return np.zeros(4)
        j, k = (0, 1) if end == 0 else (-2, -1)
        return (self.boxes[k] - self.boxes[j]) / (self.frames[k] - self.frames[j])


def _size(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], box[3] - box[1], 1.0))


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _grow(box: np.ndarray, dx: float, dy: float) -> np.ndarray:
    return np.array([box[0] - dx, box[1] - dy, box[2] + dx, box[3] + dy])


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])])


def _between(a: np.ndarray, b: np.ndarray, f: float) -> np.ndarray:
    """Linear interpolation at ``f`` in (0, 1), grown by half the displacement (per axis) plus 5% of the size."""
    d = np.abs(_centre(b) - _centre(a)) / 2 + 0.05 * max(_size(a), _size(b))
    return _grow(a + (b - a) * f, d[0], d[1])


def _held(box: np.ndarray, velocity: np.ndarray, dt: int) -> np.ndarray:
    """A held box ``dt`` frames from its detection: the box and where its velocity carries it, grown by 10%."""
    s = 0.1 * _size(box)
    return _grow(_union(box, box + velocity * dt), s, s)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _moved(a: np.ndarray, b: np.ndarray) -> bool:
    size_a, size_b = _size(a), _size(b)
    far = np.linalg.norm(_centre(b) - _centre(a)) > _MOVED * max(size_a, size_b)
    return bool(far or max(size_a, size_b) > _RESIZED * min(size_a, size_b))


def _nearest(boxes: list[np.ndarray], target: np.ndarray) -> np.ndarray | None:
    if not boxes:
        return None
    return min(boxes, key=lambda b: float(np.linalg.norm(_centre(b) - _centre(target))))


class Timeline:
    """Tracks of one video, fed keyframe by keyframe; :meth:`cover` gives the boxes to filter in a frame.

    ``hold``: frames covered before a track's first and after its last detection. ``max_gap``: frames a track may go
    undetected and still be linked to a new detection (defaults to ``2 * hold``).
    """

    def __init__(self, hold: int, max_gap: int | None = None) -> None:
        if hold < 0:
            raise ValueError(f"hold must be >= 0 frames, got {hold}")
        self.hold, self.max_gap = hold, 2 * hold if max_gap is None else max_gap
        self.tracks: list[Track] = []
        self.shot_start = 0
        self.last_key: int | None = None
        self.local_calls = 0

    def cut(self, index: int) -> None:
        """A scene cut before frame ``index``: every open track's shot ends at ``index - 1``."""
        for tr in self.tracks:
            if tr.shot[1] is None:
                tr.shot = (tr.shot[0], index - 1)
        self.shot_start, self.last_key = index, None

    def keyframe(self, index: int, boxes: list[np.ndarray], local: Local, lo: int) -> None:
        """Link the faces found on the whole of frame ``index`` to the open tracks and fill in the frames since the
        previous keyframe with local detections (``local``) on frames ``lo`` (the oldest buffered) onwards."""
        lo = max(lo, self.shot_start)
        open_tracks = [t for t in self.tracks if t.shot[1] is None and index - t.frames[-1] <= self.max_gap]
        pairs = self._match(open_tracks, boxes, index)
        matched_tracks = {id(t) for t, _ in pairs}
        matched_boxes = {id(b) for _, b in pairs}
        for tr, box in pairs:
            s, a = tr.frames[-1], tr.boxes[-1]
            tr.add(index, box)
            self._bisect(tr, s, a, index, box, local, lo)
        for tr in open_tracks:
            if id(tr) not in matched_tracks:
                self._walk(tr, range(max(tr.frames[-1] + 1, lo), index + 1), local)
                if tr.frames[-1] == index:  # followed up to the keyframe: the new box it lands on is this face
                    same = [b for b in boxes if id(b) not in matched_boxes and _iou(b, tr.boxes[-1]) > 0.5]
                    matched_boxes |= {id(b) for b in same}
        for box in boxes:
            if id(box) not in matched_boxes:
                tr = Track(shot=(self.shot_start, None))
                tr.add(index, box)
                self.tracks.append(tr)
                self._walk(tr, range(index - 1, lo - 1, -1), local)
        self.last_key = index

    def cover(self, t: int) -> list[np.ndarray]:
        """The boxes to filter in frame ``t`` (one per track that covers it)."""
        return [b for tr in self.tracks if (b := tr.box_at(t, self.hold)) is not None]

    def forget(self, before: int) -> None:
        """Drop the tracks that cover nothing from frame ``before`` on (the frames before it are written)."""
        keep = max(self.hold, self.max_gap)
        self.tracks = [t for t in self.tracks if t.frames[-1] + keep >= before]

    def _match(self, tracks: list[Track], boxes: list[np.ndarray], index: int) -> list[tuple[Track, np.ndarray]]:
        """Greedy nearest pairs (track, box) whose distance, from the track's last box or from where its velocity
        carries it, is within the face's size × (0.5 + 0.15 per frame since), at most 3 sizes."""
        pairs = []
        for tr in tracks:
            last, gap = tr.boxes[-1], index - tr.frames[-1]
            predicted = last + tr._velocity(-1) * gap
            for box in boxes:
                size = max(_size(last), _size(box))
                d = min(np.linalg.norm(_centre(box) - _centre(c)) for c in (last, predicted))
                if d <= size * min(3.0, 0.5 + 0.15 * gap):
                    pairs.append((float(d), tr, box))
        pairs.sort(key=lambda p: p[0])
        out, used_t, used_b = [], set(), set()
        for _, tr, box in pairs:
            if id(tr) not in used_t and id(box) not in used_b:
                out.append((tr, box))
                used_t.add(id(tr))
                used_b.add(id(box))
        return out

    def _bisect(self, tr: Track, s: int, a: np.ndarray, e: int, b: np.ndarray, local: Local, lo: int) -> None:
        """Detections between frames s and e (boxes a and b) until consecutive ones are close (see the module)."""
        stack = [(s, a, e, b)]
        while stack:
            s, a, e, b = stack.pop()
            if e - s < 2 or not _moved(a, b) or (s + e) // 2 < lo:
                continue
            m = (s + e) // 2
            g = _SEARCH * max(_size(a), _size(b))
            self.local_calls += 1
            found = _nearest(local(m, _grow(_union(a, b), g, g)), a + (b - a) * ((m - s) / (e - s)))
            if found is not None:
                tr.add(m, found)
                stack += [(s, a, m, found), (m, found, e, b)]

    def _walk(self, tr: Track, frames: range, local: Local) -> None:
        """Follow the track frame by frame over ``frames`` with local detections; stop at the first miss."""
        for t in frames:
            ref = tr.boxes[0] if frames.step < 0 else tr.boxes[-1]
            if t in tr.frames:
                continue
            g = _SEARCH * _size(ref)
            self.local_calls += 1
            found = _nearest(local(t, _grow(ref, g, g)), ref)
            if found is None:
                return
            tr.add(t, found)
