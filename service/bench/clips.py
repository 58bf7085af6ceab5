"""Synthetic videos whose faces are known: scikit-image photos as the scene, the astronaut's head pasted and moved.

:func:`make_clip` encodes one with PyAV (video + a sine tone as audio) and returns the true face box of every face in
every frame, as displayed; the video benchmark and the video tests read them. Needs scikit-image and PyAV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["Clip", "make_clip", "scene_frames"]

_HEAD = (20, 220, 130, 330)  # rows, cols of the astronaut's head in skimage.data.astronaut() (200 × 200)
_FACE = (46, 30, 146, 162)  # the face's box inside that crop (x0, y0, x1, y1): CenterFace's box on the photo


@dataclass
class Clip:
    """A written clip: its path, frame count, rate, displayed size (width, height) and true face boxes per frame."""

    path: Path
    frames: int
    fps: int
    size: tuple[int, int]
    faces: list[list[tuple[int, int, int, int]]]


def scene_frames(
    width: int,
    height: int,
    frames: int,
    *,
    faces: int = 2,
    pan: float = 0.0,
    seed: int = 0,
    face: tuple[float, float] = (0.12, 0.22),
):
    """Yield (BGR frame [height, width, 3], face boxes) for each frame.

    The background (scikit-image's coffee photo, rocket when panning) is still, or panned ``pan`` pixels per frame
    to the left (a moving camera). Each face is the astronaut's head, its side a share of the height drawn from
    ``face`` (at most its band: each face keeps to its own band of rows, so none hides another and every true box
    is a whole face), moving on its own straight path that bounces off the edges plus a vertical wave; the third
    face, when there is one, appears after a third of the clip.
    """
    from skimage import data

    rng = np.random.default_rng(seed)
    wide = width + int(math.ceil(abs(pan) * frames))
    back = cv2.resize((data.rocket() if pan else data.coffee())[:, :, ::-1], (wide, height), cv2.INTER_LINEAR)
    r0, r1, c0, c1 = _HEAD
    head = np.ascontiguousarray(data.astronaut()[r0:r1, c0:c1, ::-1])
    movers = []
    for i in range(faces):
        band = height // faces  # each face keeps to its own band of rows: faces never hide each other
        size = min(int(rng.uniform(*face) * height), band)
        movers.append(
            {
                "size": size,
                "head": cv2.resize(head, (size, size), interpolation=cv2.INTER_AREA),
                "x": float(rng.uniform(0, width - size)),
                "y": float(i * band + rng.uniform(0, band - size)),
                "band": (i * band, (i + 1) * band - size),
                "vx": float(rng.choice([-1, 1]) * rng.uniform(0.004, 0.008) * width),
                "wave": float(rng.uniform(0.02, 0.06) * height),
                "start": frames // 3 if i == 2 else 0,
            }
        )
    for t in range(frames):
        x0 = int(round(pan * t))
        frame = np.ascontiguousarray(back[:, x0 : x0 + width])
        boxes = []
        for m in movers:
            if t < m["start"]:
                continue
            s = m["size"]
            x = m["x"] + m["vx"] * (t - m["start"])
            span = width - s
            x = abs((x % (2 * span)) - span) if span > 0 else 0.0  # bounce
            y = min(max(m["y"] + m["wave"] * math.sin(t / 6.0), m["band"][0]), m["band"][1])
            xi, yi = int(round(x)), int(round(y))
            frame[yi : yi + s, xi : xi + s] = m["head"]
            f = s / 200.0
            boxes.append(
                (xi + round(_FACE[0] * f), yi + round(_FACE[1] * f), xi + round(_FACE[2] * f), yi + round(_FACE[3] * f))
            )
        yield frame, boxes


def make_clip(
    path: Path,
    width: int,
    height: int,
    frames: int,
    *,
    fps: int = 25,
    faces: int = 2,
    pan: float = 0.0,
    seed: int = 0,
    codec: str = "libx264",
    audio: str | None = "aac",
    rotation: int = 0,
    face: tuple[float, float] = (0.12, 0.22),
) -> Clip:
    """Encode :func:`scene_frames` into ``path`` (the muxer from its suffix) with ``codec`` at high quality, a 440 Hz
    tone in ``audio`` (None: no audio), and a display rotation (degrees counter-clockwise; the frames are stored
    turned back, so they display as generated). Returns the clip and its true face boxes (as displayed)."""
    import av

    truth = []
    with av.open(str(path), "w") as out:
        sw, sh = (height, width) if rotation % 180 else (width, height)
        v = out.add_stream(codec, rate=fps)
        v.width, v.height, v.pix_fmt = sw, sh, "yuv420p"
        v.options = (
            {"crf": "12"} if codec == "libx264" else {"crf": "12", "b": "0", "cpu-used": "8", "deadline": "realtime"}
        )
        if rotation:
            v.set_display_rotation(rotation)
        a = None
        if audio is not None:
            a = out.add_stream(audio, rate=48000)
            a.layout = "stereo"
        for t, (frame, boxes) in enumerate(
            scene_frames(width, height, frames, faces=faces, pan=pan, seed=seed, face=face)
        ):
            truth.append(boxes)
            stored = np.ascontiguousarray(np.rot90(frame, -(rotation // 90))) if rotation else frame
            vf = av.VideoFrame.from_ndarray(stored, format="bgr24")
            vf.pts = t
            for p in v.encode(vf):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
        if a is not None:
            _tone(out, a, frames / fps)
    return Clip(Path(path), frames, fps, (width, height), truth)


def _tone(out, a, seconds: float) -> None:
    import av

    n = int(48000 * seconds)
    wave = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / 48000)).astype(np.float32)
    step = a.codec_context.frame_size or 960
    names = [f.name for f in a.codec_context.codec.audio_formats or []]
    fmt = "fltp" if "fltp" in names else "flt"
    for k in range(0, n, step):
        chunk = wave[k : k + step]
        if fmt == "fltp":
            frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")  # [2, n]
        else:  # packed: [1, 2n] interleaved
            frame = av.AudioFrame.from_ndarray(np.repeat(chunk, 2)[None], format="flt", layout="stereo")
        frame.sample_rate, frame.pts = 48000, k
        for p in a.encode(frame):
            out.mux(p)
    for p in a.encode(None):
        out.mux(p)
