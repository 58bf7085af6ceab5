"""The frame-by-frame processor: frames in, the same frames filtered out, in order, with state across frames.

:class:`Anonymizer` is the library entry point under ``roiconv apply`` for videos (no container, no PyAV)::

    anon = Anonymizer(detect=True)            # faces, gaussian "auto" as roiconv apply
    for frame in frames:                      # BGR uint8 [H, W, 3], as displayed
        for out in anon.push(frame):          # the same arrays, filtered in place, in order, some frames later
            write(out)
    for out in anon.flush():
        write(out)

Frames are held back until their cover is final: at most ``interval + hold + 1`` frames are buffered, so memory
does not grow with the video's length. Keyframes (the first frame, every ``interval``-th after the previous one, the
frames on both sides of a scene cut, the last frame) get the detector on the whole frame; the frames in between get
it only locally, where :class:`.hold.Timeline` asks. A scene cut is a frame whose 64×36 grey thumbnail differs from
the previous frame's by more than ``cut`` (mean absolute difference, 0..255).
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .hold import Timeline
from .still import ChangedAreas
from .tracks import RoiTracks

__all__ = ["Anonymizer", "Detector", "FaceDetector"]

log = logging.getLogger("roiconv.video")

# (BGR frame, search box (x0, y0, x1, y1) | None for the whole frame) → boxes
Detector = Callable[[np.ndarray, np.ndarray | None], list[np.ndarray]]

DEFAULT_INTERVAL = 8
DEFAULT_HOLD = 12
DEFAULT_CUT = 40.0
_THUMB = (64, 36)


class FaceDetector:
    """CenterFace (:func:`service.imaging.faces.detect_faces`) as a :data:`Detector`: the whole frame, or only
    faces whose centre lies inside the search box (or boxes: an array [n, 4], searched in one call). Counts its
    calls."""

    def __init__(self, threshold: float = 0.2, max_side: int | None = None) -> None:
        from ..imaging.faces import DEFAULT_MAX_SIDE, detect_faces

        self._detect, self.threshold = detect_faces, threshold
        self.max_side = DEFAULT_MAX_SIDE if max_side is None else max_side
        self.calls = self.local_calls = 0

    def __call__(self, frame: np.ndarray, box: np.ndarray | None) -> list[np.ndarray]:
        within = None
        if box is not None:
            H, W = frame.shape[:2]
            within = np.zeros((H, W), bool)
            for b in np.asarray(box, np.float64).reshape(-1, 4):
                x0, y0 = max(0, int(b[0])), max(0, int(b[1]))
                within[y0 : min(H, int(np.ceil(b[3]))), x0 : min(W, int(np.ceil(b[2])))] = True
            if not within.any():
                return []
            self.local_calls += 1
        self.calls += 1
        faces = self._detect(frame, threshold=self.threshold, within=within, max_side=self.max_side, color="bgr")
        return [np.array(f.box, np.float64) for f in faces]


@dataclass
class _Frame:
    index: int
    pixels: np.ndarray  # [H, W, 3] BGR uint8
    time: float
    duration: float
    rects: list[tuple[int, int, int, int]] | None = None


class Anonymizer:
    """Filters faces (and given shapes and tracks) in a stream of frames; see the module's docstring.

    Args:
        filter: the filter spec (``{"name": "gaussian"}`` etc., as ``roiconv apply --filter``); default gaussian
            with ksize "auto".
        detect: find faces; a :data:`Detector` to use another one (tests), True for :class:`FaceDetector`.
        scale, shape: how a face's box becomes a piece (docs/faces.md: grown as deface's --mask-scale, an ellipse).
        roi: image shapes filtered in every frame (boxes, polygons, circles, ellipses); ``tracks``: :class:`RoiTracks`.
        interval: frames from one keyframe to the next; hold: frames a face stays covered before its first and
            after its last detection; cut: the scene-cut threshold (None: no cut detection).
        still: where keyframes are searched (:class:`.still.ChangedAreas`: only where the frame changed and where
            faces were, the whole frame at times); None: every keyframe whole. Default: ChangedAreas() with
            :class:`FaceDetector` (``detect=True`` or an instance), None with a detector of your own.
        max_pixels: the largest frame accepted.
    """

    def __init__(
        self,
        *,
        filter: dict | None = None,
        detect: bool | Detector = True,
        threshold: float = 0.2,
        scale: float = 1.3,
        shape: str = "ellipse",
        roi: dict | None = None,
        tracks: RoiTracks | None = None,
        interval: int = DEFAULT_INTERVAL,
        hold: int = DEFAULT_HOLD,
        cut: float | None = DEFAULT_CUT,
        still: ChangedAreas | None | bool = True,
        outside: str = "keep",
        border: str = "reflect101",
        max_pixels: int = 1 << 28,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1 frame, got {interval}")
        self.detector: Detector | None = FaceDetector(threshold) if detect is True else (detect or None)
        if still is True:  # CenterFace sees pixels: a cell that did not change shows it nothing new
            still = ChangedAreas() if isinstance(self.detector, FaceDetector) else None
        self.still: ChangedAreas | None = still or None
        self._key_faces: list[np.ndarray] = []  # the faces of the last keyframe
        self.filter = filter or {"name": "gaussian"}
        self.scale, self.shape, self.roi, self.tracks = scale, shape, dict(roi or {}), tracks
        self.interval, self.hold, self.cut = interval, hold, cut
        self.outside, self.border, self.max_pixels = outside, border, max_pixels
        self.timeline = Timeline(hold)
        self.buffer: deque[_Frame] = deque()
        self.count, self.last_key, self.keyframes, self.cuts = 0, -1, 0, 0
        self.covered = 0  # frames in which at least one face was filtered
        # for each frame returned, in order: the rectangles (x0, y0, x1, y1) outside which its pixels are unchanged
        # (the caller pops them: a container writer keeps the decoded pixels elsewhere)
        self.changed: deque[list[tuple[int, int, int, int]]] = deque()
        self._thumb: np.ndarray | None = None
        self._size: tuple[int, int] | None = None

    def push(self, frame: np.ndarray, time: float | None = None, duration: float = 0.0) -> list[np.ndarray]:
        """Take the next frame (BGR uint8 [H, W, 3], as displayed; ``time`` in seconds from the first frame, for
        time tracks); return the frames whose cover is final, filtered in place, oldest first."""
        self._check(frame)
        index = self.count
        self.count += 1
        is_cut = self._is_cut(frame)
        if is_cut and index > 0:
            self._close(index - 1)  # the shot before the cut ends with a keyframe
            self.timeline.cut(index)
            self._key_faces = []
            if self.still is not None:
                self.still.reset()
            self.cuts += 1
            out = self._emit(index)  # nothing crosses a cut: every earlier frame is final
        else:
            out = []
        self.buffer.append(_Frame(index, frame, float(index if time is None else time), duration))
        if index == 0 or is_cut:
            self._keyframe(index)
        elif index - self.last_key >= self.interval:
            self._close(index)
        return out + self._emit(self.last_key - self.timeline.hold)

    def flush(self) -> list[np.ndarray]:
        """The frames still held back, filtered (the last frame is made a keyframe)."""
        if self.count and self.last_key != self.count - 1:
            self._close(self.count - 1)
        return self._emit(self.count)

    @property
    def frames_detected(self) -> int:
        """Frames the detector looked at (whole or locally)."""
        return 0 if self.detector is None else getattr(self.detector, "calls", 0)

    def _check(self, frame: np.ndarray) -> None:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"frame must be a BGR uint8 array [H, W, 3], got {got}")
        size = frame.shape[:2]
        if self._size is None:
            if size[0] * size[1] > self.max_pixels:
                raise ValueError(f"frames of {size[1]}x{size[0]} pixels are more than the limit {self.max_pixels}")
            if self.tracks is not None:
                self.tracks.check_frame(size[1], size[0])
            self._size = size
        elif size != self._size:
            raise ValueError(
                f"frame {self.count} is {size[1]}x{size[0]}, the first was {self._size[1]}x{self._size[0]}"
            )

    def _is_cut(self, frame: np.ndarray) -> bool:
        if self.cut is None:
            return False
        thumb = cv2.cvtColor(cv2.resize(frame, _THUMB, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        prev, self._thumb = self._thumb, thumb.astype(np.float32)
        return prev is not None and float(np.abs(self._thumb - prev).mean()) > self.cut

    def _frame(self, index: int) -> np.ndarray:
        return self.buffer[index - self.buffer[0].index].pixels

    def _keyframe(self, index: int) -> None:
        boxes = [] if self.detector is None else self._search(self._frame(index))
        self._key_faces = boxes
        self.keyframes += 1
        if self.detector is not None:
            local = lambda t, box: self.detector(self._frame(t), box)  # noqa: E731
            self.timeline.keyframe(index, boxes, local, self.buffer[0].index)
        self.last_key = index

    def _search(self, frame: np.ndarray) -> list[np.ndarray]:
        """A keyframe's faces: the whole frame, or where :attr:`still` says it changed or faces were (found on the
        previous keyframe, or last seen by an open track)."""
        if self.still is None:
            return self.detector(frame, None)
        tracked = [tr.boxes[-1] for tr in self.timeline.tracks if tr.shot[1] is None]  # also found between keyframes
        areas = self.still.areas(frame, self._key_faces + tracked)
        if areas is None:
            return self.detector(frame, None)
        if not areas:
            return []
        if isinstance(self.detector, FaceDetector):
            return self.detector(frame, np.stack(areas))  # [n, 4]: one call, one resize of the frame
        return [b for a in areas for b in self.detector(frame, a)]

    def _close(self, index: int) -> None:
        """Frame ``index`` becomes a keyframe (unless it is one): the frames since the last one are filled in."""
        if index != self.last_key:
            self._keyframe(index)

    def _emit(self, before: int) -> list[np.ndarray]:
        out = []
        while self.buffer and self.buffer[0].index < before:
            f = self.buffer.popleft()
            self._filter(f)
            out.append(f.pixels)
            self.changed.append(f.rects or [])
        if self.buffer:
            self.timeline.forget(self.buffer[0].index)
        return out

    def _filter(self, f: _Frame) -> None:
        """Filter frame ``f`` in place inside its pieces: the given shapes, the tracks' boxes, the faces' cover."""
        from ..imaging.pipeline import process_pixels
        from ..imaging.spec import Spec

        H, W = f.pixels.shape[:2]
        roi = copy.deepcopy(self.roi)
        if self.tracks is not None:
            for k, v in self.tracks.pieces(f.index, f.time, f.duration).items():
                roi[k] = roi.get(k, []) + [p for p in v if _inside(p, k, W, H)]
        boxes = [b for b in self.timeline.cover(f.index) if b[2] > 0 and b[3] > 0 and b[0] < W and b[1] < H]
        if boxes:
            self.covered += 1
            for k, v in _face_pieces(boxes, self.scale, self.shape, (H, W)).items():
                roi[k] = roi.get(k, []) + v
        if not any(roi.get(k) for k in ("boxes", "polygons", "circles", "ellipses")) and not roi.get("invert"):
            return  # nothing to hide in this frame (an empty ROI would mean the whole frame)
        spec = {"filter": self.filter, "roi": roi, "outside": self.outside, "border": self.border}
        f.rects = [(0, 0, W, H)] if roi.get("invert") or self.outside != "keep" else _bounds(roi, W, H)
        f.pixels = process_pixels(Spec.model_validate(spec), f.pixels, max_pixels=self.max_pixels, inplace=True)


def _face_pieces(boxes: list[np.ndarray], scale: float, shape: str, size: tuple[int, int]) -> dict[str, list]:
    """The faces' pieces as :func:`service.imaging.faces.face_pieces` makes them for a frame of ``size`` (H, W)."""
    from ..imaging.faces import Face, face_pieces

    return face_pieces([Face(tuple(float(v) for v in b[:4]), 1.0, ()) for b in boxes], size, scale=scale, shape=shape)


def _bounds(roi: dict, W: int, H: int) -> list[tuple[int, int, int, int]]:
    """One rectangle (x0, y0, x1, y1) around each shape of ``roi``, clipped to the frame (a rotated ellipse: the
    square around its longer axis)."""
    rects = [tuple(b) for b in roi.get("boxes", [])]
    rects += [(cx - r, cy - r, cx + r + 1, cy + r + 1) for cx, cy, r in roi.get("circles", [])]
    for cx, cy, ax, ay, angle in roi.get("ellipses", []):
        rx, ry = (ax, ay) if angle % 180 == 0 else (max(ax, ay),) * 2
        rects.append((cx - rx - 1, cy - ry - 1, cx + rx + 2, cy + ry + 2))
    rects += [(min(p[0] for p in q), min(p[1] for p in q), max(p[0] for p in q) + 1, max(p[1] for p in q) + 1)
              for q in roi.get("polygons", [])]  # fmt: skip
    out = []
    for x0, y0, x1, y1 in rects:
        x0, y0, x1, y1 = max(0, int(x0)), max(0, int(y0)), min(W, int(np.ceil(x1))), min(H, int(np.ceil(y1)))
        if x1 > x0 and y1 > y0:
            out.append((x0, y0, x1, y1))
    return out


def _inside(piece: list, kind: str, W: int, H: int) -> bool:
    """False for a track's piece wholly outside the frame (clipped pieces are drawn; wholly outside ones would be
    refused by the pipeline as a coordinate bug, but a moving track may legitimately leave the frame)."""
    if kind == "boxes":
        x0, y0, x1, y1 = piece
    else:
        cx, cy, ax, ay, _ = piece
        x0, y0, x1, y1 = cx - ax, cy - ay, cx + ax, cy + ay
    return x1 > 0 and y1 > 0 and x0 < W and y0 < H
