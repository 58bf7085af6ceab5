"""Video files in and out with PyAV (FFmpeg's libraries, the ``video`` extra): one pass, frame by frame.

:func:`anonymize_file` decodes the video stream, turns each frame upright by its display rotation, hands it to an
:class:`.stream.Anonymizer`, turns the result back and encodes it with the same timestamps (pts), frame size, pixel
format (when the encoder takes it) and colour tags, the display rotation set again on the output stream. Audio and
subtitle streams are remuxed packet by packet (not decoded). Dropped: data streams, attachments, cover pictures (a
still of the unfiltered video) and the container's metadata (it may hold a GPS position); streams keep their
language. The output goes to ``.NAME.part`` beside it and is renamed over NAME only when complete.

A file that cannot be read, has no video stream, several, a codec the wheels cannot decode, a decoding error, or
fewer frames than its header declares (a truncated file) raises :class:`VideoError`, and nothing is left behind.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .formats import output_format
from .stream import Anonymizer

__all__ = ["INSTALL_HINT", "VideoError", "VideoResult", "anonymize_file", "probe"]

log = logging.getLogger("roiconv.video")

INSTALL_HINT = "install the video extra: pip install 'roiconv[video]'"
DEFAULT_CRF = 18  # x264 and VP9: visually lossless for most footage
DEFAULT_PRESET = "faster"  # x264's speed / size trade-off (quality is set by the CRF)


class VideoError(ValueError):
    """A video that cannot be anonymized as asked: unreadable, truncated, no or several video streams, a codec."""


@dataclass
class Probe:
    """What the first decoded frame says: stored size, pixel format, rotation (degrees counter-clockwise), colour."""

    width: int
    height: int
    pix_fmt: str
    rotation: int
    colorspace: int
    color_range: int
    frames: int  # declared by the header (0: unknown)
    duration: float | None  # the video stream's, seconds (None: unknown)


@dataclass
class VideoResult:
    """One video done: frames written, frames with a face covered, keyframes, detector calls, seconds."""

    frames: int
    covered: int
    keyframes: int
    detector_calls: int
    seconds: float


def _open(path: Path):
    import av

    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoError(f"not a readable video: {exc}") from None


def _video_stream(container):
    streams = [s for s in container.streams.video if not s.disposition & _attached_pic()]
    if not streams:
        raise VideoError("no video stream in the file")
    if len(streams) > 1:
        raise VideoError(f"{len(streams)} video streams; one is supported (split the file first)")
    if streams[0].codec_context is None:
        raise VideoError("the video stream's codec cannot be decoded by this build of FFmpeg")
    return streams[0]


def _attached_pic() -> int:
    import av

    return int(av.stream.Disposition.attached_pic)


def probe(path: Path) -> Probe:
    """The first frame's facts; :class:`VideoError` when the file cannot give one."""
    import av

    with _open(path) as c:
        v = _video_stream(c)
        try:
            frame = next(c.decode(v), None)
        except av.FFmpegError as exc:
            raise VideoError(f"the video stream cannot be decoded: {exc}") from None
        if frame is None:
            raise VideoError("the video stream holds no decodable frame")
        duration = None if v.duration is None else float(v.duration * v.time_base)
        rotation = int(round(frame.rotation or 0)) % 360
        if rotation % 90:
            raise VideoError(f"display rotation {rotation}° is not a multiple of 90°")
        return Probe(
            frame.width, frame.height, frame.format.name, rotation, int(frame.colorspace), int(frame.color_range),
            v.frames or 0, duration,
        )  # fmt: skip


def _colors(p: Probe) -> tuple[str, str]:
    """(sws colorspace, range) that turn this video's YUV into BGR and back with the same matrix."""
    space = {1: "ITU709", 4: "FCC", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}.get(p.colorspace, "ITU601")
    return space, "JPEG" if p.color_range == 2 else "MPEG"


def _encoder(out, name: str, v, p: Probe, crf: int, preset: str):
    import av

    rate = v.average_rate or v.guessed_rate or 25
    s = out.add_stream(name, rate=rate)
    s.width, s.height = p.width, p.height
    formats = {f.name for f in (av.Codec(name, "w").video_formats or [])}
    s.pix_fmt = p.pix_fmt if p.pix_fmt in formats else "yuv420p"
    s.time_base = v.time_base
    s.codec_context.time_base = v.time_base
    cc = s.codec_context
    cc.colorspace, cc.color_range = p.colorspace, p.color_range
    cc.thread_type = "AUTO"
    if name == "libvpx-vp9":
        s.options = {"crf": str(crf), "b": "0", "deadline": "good", "cpu-used": "5", "row-mt": "1"}
    else:
        s.options = {"crf": str(crf), "preset": preset}
    if p.rotation:
        s.set_display_rotation(p.rotation)
    return s


def _copies(inp, out, video) -> dict[int, object]:
    """Output streams for the input's audio and subtitle streams (packets remuxed as they are)."""
    mapping = {}
    for s in inp.streams:
        if s.index == video.index:
            continue
        if s.type in ("audio", "subtitle"):
            o = out.add_stream_from_template(s)
            if s.metadata.get("language"):
                o.metadata["language"] = s.metadata["language"]
            mapping[s.index] = o
        else:
            log.info("stream %d (%s) dropped: only video, audio and subtitle streams are written", s.index, s.type)
    return mapping


def anonymize_file(
    src: Path,
    dst: Path,
    anonymizer: Anonymizer,
    *,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    progress: Callable[[int, int], None] | None = None,
) -> VideoResult:
    """Anonymize the video ``src`` into ``dst`` (same container as its suffix says); see the module's docstring.

    ``progress(frames done, frames declared or 0)`` is called after each written frame.
    """
    if importlib.util.find_spec("av") is None:
        raise ImportError(f"videos need PyAV: {INSTALL_HINT}")
    import av

    t0 = time.perf_counter()
    _, encoder = output_format(dst)
    p = probe(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        with _open(src) as inp:
            v = _video_stream(inp)
            v.codec_context.thread_type = "AUTO"
            with av.open(str(tmp), "w", format=output_format(dst)[0]) as out:
                writer = _Writer(out, _encoder(out, encoder, v, p, crf, preset), v, p, progress)
                mapping = _copies(inp, out, v)
                _pump(inp, v, mapping, out, anonymizer, writer, p)
        _check_complete(writer.count, p, anonymizer)
        os.replace(tmp, dst)
    except av.FFmpegError as exc:
        raise VideoError(f"the video could not be decoded or written: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    calls = anonymizer.frames_detected
    return VideoResult(writer.count, anonymizer.covered, anonymizer.keyframes, calls, time.perf_counter() - t0)


class _Writer:
    """Encodes filtered frames with the timestamps of the decoded frames they came from (a FIFO: frames come back
    in order). A yuv420p frame keeps its decoded pixels outside the rectangles the anonymizer changed (only those
    are converted back from BGR), so the rest of the picture is not shifted by a colour round trip."""

    def __init__(self, out, stream, v, p: Probe, progress) -> None:
        self.out, self.stream, self.v, self.p, self.progress = out, stream, v, p, progress
        self.colors = _colors(p)
        self.decoded: deque = deque()
        self.count = 0

    def write(self, pixels: np.ndarray, rects: list[tuple[int, int, int, int]]) -> None:
        import av

        decoded = self.decoded.popleft()
        k = self.p.rotation // 90
        space, rng = self.colors
        if decoded.format.name == self.stream.pix_fmt == "yuv420p":
            frame = decoded
            if rects:
                frame.make_writable()
                stored = np.rot90(pixels, -k) if k else pixels  # [Hs, Ws, 3] view
                for rect in rects:
                    _paste(frame, stored, _stored_rect(rect, k, self.p.width, self.p.height), space, rng)
            frame.pict_type = av.video.frame.PictureType.NONE
        else:
            bgr = np.ascontiguousarray(np.rot90(pixels, -k)) if k else pixels
            frame = av.VideoFrame.from_ndarray(bgr, "bgr24")
            frame = frame.reformat(format=self.stream.pix_fmt, dst_colorspace=space, dst_color_range=rng)
        frame.pts = decoded.pts if decoded.pts is not None else decoded.dts
        frame.time_base = self.v.time_base
        for packet in self.stream.encode(frame):
            self.out.mux(packet)
        self.count += 1
        if self.progress is not None:
            self.progress(self.count, self.p.frames)

    def close(self) -> None:
        for packet in self.stream.encode(None):
            self.out.mux(packet)


def _stored_rect(rect: tuple[int, int, int, int], k: int, Ws: int, Hs: int) -> tuple[int, int, int, int]:
    """A displayed rectangle (x0, y0, x1, y1) in the stored frame (Ws × Hs), displayed = ``np.rot90(stored, k)``."""
    x0, y0, x1, y1 = rect
    if k == 1:
        return Ws - y1, x0, Ws - y0, x1
    if k == 2:
        return Ws - x1, Hs - y1, Ws - x0, Hs - y0
    if k == 3:
        return y0, Hs - x1, y1, Hs - x0
    return rect


def _plane(frame, i: int) -> np.ndarray:
    p = frame.planes[i]
    return np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[: p.height, : p.width]  # [h, w] view


def _paste(frame, stored: np.ndarray, rect: tuple[int, int, int, int], space: str, rng: str) -> None:
    """The BGR pixels of ``rect`` (grown to even corners: whole chroma samples) converted to YUV and written into
    ``frame``'s planes."""
    import av

    Hs, Ws = stored.shape[:2]
    x0, y0 = rect[0] & ~1, rect[1] & ~1
    x1, y1 = min(Ws, rect[2] + (rect[2] & 1)), min(Hs, rect[3] + (rect[3] & 1))
    if x1 <= x0 or y1 <= y0:
        return
    crop = av.VideoFrame.from_ndarray(np.ascontiguousarray(stored[y0:y1, x0:x1]), "bgr24")
    crop = crop.reformat(format="yuv420p", dst_colorspace=space, dst_color_range=rng)
    for i, (sx, sy) in enumerate(((x0, y0), (x0 // 2, y0 // 2), (x0 // 2, y0 // 2))):
        src, dst = _plane(crop, i), _plane(frame, i)
        h, w = min(src.shape[0], dst.shape[0] - sy), min(src.shape[1], dst.shape[1] - sx)
        dst[sy : sy + h, sx : sx + w] = src[:h, :w]


def _pump(inp, v, mapping: dict, out, anonymizer: Anonymizer, writer: _Writer, p: Probe) -> None:
    """Demux every packet once: video decoded, filtered and encoded; audio and subtitles remuxed."""
    space, rng = _colors(p)
    k = p.rotation // 90
    start, rate = None, float(v.average_rate or v.guessed_rate or 25)
    for packet in inp.demux([v, *(inp.streams[i] for i in mapping)]):
        if packet.stream.index != v.index:
            if packet.dts is not None:
                packet.stream = mapping[packet.stream.index]
                out.mux(packet)
            continue
        for frame in v.decode(packet):
            if (frame.width, frame.height) != (p.width, p.height):
                raise VideoError(
                    f"the frame size changes mid-stream ({p.width}x{p.height} → {frame.width}x{frame.height})"
                )
            pixels = frame.to_ndarray(format="bgr24", src_colorspace=space, src_color_range=rng)  # [H, W, 3]
            if k:
                pixels = np.ascontiguousarray(np.rot90(pixels, k))  # as displayed
            writer.decoded.append(frame)
            t = None if frame.time is None else float(frame.time)
            start = t if start is None else start
            for done in anonymizer.push(pixels, None if t is None else t - start, 1.0 / rate):
                writer.write(done, anonymizer.changed.popleft())
    for done in anonymizer.flush():
        writer.write(done, anonymizer.changed.popleft())
    writer.close()


def _check_complete(count: int, p: Probe, anonymizer: Anonymizer) -> None:
    """VideoError for a truncated stream: fewer frames than the header declares (or, without a count, than its
    duration holds); tracks that reach past the end."""
    if p.frames and count < p.frames:
        raise VideoError(f"truncated or corrupt: {count} of the {p.frames} frames the header declares could be decoded")
    if anonymizer.tracks is not None:
        anonymizer.tracks.check_length(count, p.duration if p.duration is not None else float("inf"))
