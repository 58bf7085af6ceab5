"""Which files are videos, which muxer writes each, and which encoder each container gets (no PyAV import here).

The rule lives here once: ``roiconv apply`` finds videos by :func:`is_video` and :mod:`.container` writes the
muxer and encoder :func:`output_format` names.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["VIDEO_SUFFIXES", "is_video", "output_format"]

# suffix → (muxer, video encoder). H.264 where the container takes it, VP9 in WebM (which takes only VP8/VP9/AV1).
VIDEO_SUFFIXES: dict[str, tuple[str, str]] = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
    ".avi": ("avi", "libx264"),
}


def is_video(path: Path | str) -> bool:
    """True for the suffixes of :data:`VIDEO_SUFFIXES` (any case)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def output_format(path: Path | str) -> tuple[str, str]:
    """(muxer, video encoder) for an output named ``path``; ValueError for a suffix that is not a video's."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"{path}: not a video suffix; expected one of {', '.join(VIDEO_SUFFIXES)}")
    return VIDEO_SUFFIXES[suffix]
