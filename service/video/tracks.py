"""ROI tracks given by hand or by another tool: boxes at key frames (or key times), interpolated in between.

A video's ROI object (a ``NAME.json`` sidecar, or its entry in ``--roi``) may hold, beside the image shapes that are
then filtered in every frame, ``"tracks"``: a list of tracks, each ``{"keys": [...], "shape": "box" | "ellipse"}``.
A key is ``{"frame": N, "box": [x0, y0, x1, y1]}`` (N counts decoded frames from 0) or ``{"time": T, "box": ...}``
(T in seconds from the first frame's timestamp); one track uses one kind, in increasing order. Boxes are in the
displayed frame's pixels (after rotation), x1 and y1 exclusive. A track covers the frames from its first key to its
last, its box linearly interpolated between keys (a time track: every frame shown during [first, last]); a single
key covers one frame. ``shape`` "ellipse" filters the ellipse inscribed in the box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["RoiTracks", "check_tracks", "parse_tracks"]

MAX_TRACKS = 1024
MAX_KEYS = 100_000


@dataclass(frozen=True)
class _Track:
    unit: str  # "frame" or "time"
    at: np.ndarray  # float64 [K], increasing
    boxes: np.ndarray  # float64 [K, 4]
    shape: str


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_track(i: int, track: object) -> _Track:
    where = f"tracks[{i}]"
    if not isinstance(track, dict) or not isinstance(track.get("keys"), list) or not track["keys"]:
        raise ValueError(f'{where}: a track is {{"keys": [{{"frame": 0, "box": [x0, y0, x1, y1]}}, ...]}}')
    unknown = set(track) - {"keys", "shape"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; a track has keys and shape")
    shape = track.get("shape", "box")
    if shape not in ("box", "ellipse"):
        raise ValueError(f'{where}.shape: "box" or "ellipse", got {shape!r}')
    if len(track["keys"]) > MAX_KEYS:
        raise ValueError(f"{where}.keys: at most {MAX_KEYS} keys, got {len(track['keys'])}")
    units, at, boxes = set(), [], []
    for j, key in enumerate(track["keys"]):
        here = f"{where}.keys[{j}]"
        if not isinstance(key, dict) or set(key) - {"frame", "time", "box"} or len(set(key) & {"frame", "time"}) != 1:
            raise ValueError(f'{here}: a key is {{"frame": N, "box": [...]}} or {{"time": seconds, "box": [...]}}')
        unit = "frame" if "frame" in key else "time"
        value = key[unit]
        if unit == "frame" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{here}.frame: a frame index (integer >= 0), got {value!r}")
        if unit == "time" and (not _number(value) or value < 0):
            raise ValueError(f"{here}.time: seconds (a number >= 0), got {value!r}")
        box = key.get("box")
        if not isinstance(box, list) or len(box) != 4 or not all(_number(v) for v in box):
            raise ValueError(f"{here}.box: [x0, y0, x1, y1] numbers, got {box!r}")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"{here}.box: {box} is empty: need x1 > x0 and y1 > y0")
        units.add(unit)
        at.append(float(value))
        boxes.append([float(v) for v in box])
    if len(units) != 1:
        raise ValueError(f"{where}.keys: use frame for every key or time for every key, not both")
    if any(b <= a for a, b in zip(at, at[1:])):
        raise ValueError(f"{where}.keys: the keys' {units.pop()}s must increase")
    return _Track(units.pop(), np.array(at), np.array(boxes), shape)


def parse_tracks(value: object) -> RoiTracks:
    """:class:`RoiTracks` from the ``tracks`` list of a ROI object; ValueError naming the track and key at fault."""
    if not isinstance(value, list):
        raise ValueError(f"tracks: a list of tracks, got {type(value).__name__}")
    if len(value) > MAX_TRACKS:
        raise ValueError(f"tracks: at most {MAX_TRACKS} tracks, got {len(value)}")
    return RoiTracks([_parse_track(i, t) for i, t in enumerate(value)])


def check_tracks(value: object) -> str | None:
    """None when ``value`` is a valid ``tracks`` list; else the message :func:`parse_tracks` would raise."""
    try:
        parse_tracks(value)
    except ValueError as exc:
        return str(exc)
    return None


class RoiTracks:
    """Parsed tracks: :meth:`pieces` gives a frame's ROI shapes, :meth:`check_frame` checks them against it."""

    def __init__(self, tracks: list[_Track]) -> None:
        self.tracks = tracks

    def pieces(self, index: int, time: float, duration: float) -> dict[str, list]:
        """``{"boxes": [...], "ellipses": [...]}`` for frame ``index`` shown from ``time`` (seconds from the first
        frame) for ``duration`` seconds; integer boxes rounded outwards."""
        out: dict[str, list] = {"boxes": [], "ellipses": []}
        for tr in self.tracks:
            if tr.unit == "frame":
                if not tr.at[0] <= index <= tr.at[-1]:
                    continue
                pos = float(index)
            else:
                if time > tr.at[-1] or time + duration <= tr.at[0]:
                    continue
                pos = min(max(time, tr.at[0]), tr.at[-1])
            box = [np.interp(pos, tr.at, tr.boxes[:, k]) for k in range(4)]
            x0, y0, x1, y1 = math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])
            if tr.shape == "box":
                out["boxes"].append([x0, y0, x1, y1])
            else:
                out["ellipses"].append([(x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2, 0.0])
        return out

    def check_frame(self, width: int, height: int) -> None:
        """ValueError when a key's box lies wholly outside a ``width`` × ``height`` frame (wrong file or units)."""
        for i, tr in enumerate(self.tracks):
            for j, (x0, y0, x1, y1) in enumerate(tr.boxes):
                if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                    box = [float(v) for v in (x0, y0, x1, y1)]
                    raise ValueError(f"tracks[{i}].keys[{j}].box {box} lies outside the {width}x{height} frame")

    def check_length(self, frames: int, seconds: float) -> None:
        """ValueError when a track's last key lies past the video's end: the tracks are for another video."""
        for i, tr in enumerate(self.tracks):
            end = frames - 1 if tr.unit == "frame" else seconds
            if tr.at[-1] > end:
                unit = "frame" if tr.unit == "frame" else "time"
                raise ValueError(f"tracks[{i}] ends at {unit} {tr.at[-1]:g}, past the video's end ({end:g})")
