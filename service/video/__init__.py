"""Videos anonymized frame by frame: faces found on keyframes and followed in between, given shapes and tracks.

- :mod:`.stream`: :class:`Anonymizer`, frames in, frames out, with state across frames (numpy, OpenCV; torch only
  where the detector runs);
- :mod:`.still`: where a still camera's keyframe changed (the detector searches only there);
- :mod:`.hold`: faces across frames (tracks, local detection between keyframes, the hold window);
- :mod:`.tracks`: ROI tracks given in JSON, interpolated between keys;
- :mod:`.container`: files in and out with PyAV (the ``video`` extra): timestamps kept, audio and subtitles remuxed;
- :mod:`.formats`: which suffixes are videos and what each is written with.

See docs/video.md. Nothing here imports FastAPI or the server.
"""

from importlib import import_module

from .formats import VIDEO_SUFFIXES, is_video, output_format

_LAZY = {
    "Anonymizer": "stream",
    "ChangedAreas": "still",
    "FaceDetector": "stream",
    "RoiTracks": "tracks",
    "Timeline": "hold",
    "VideoError": "container",
    "VideoResult": "container",
    "anonymize_file": "container",
    "check_tracks": "tracks",
    "parse_tracks": "tracks",
    "probe": "container",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "VIDEO_SUFFIXES",
    "Anonymizer",
    "ChangedAreas",
    "FaceDetector",
    "RoiTracks",
    "Timeline",
    "VideoError",
    "VideoResult",
    "anonymize_file",
    "check_tracks",
    "is_video",
    "output_format",
    "parse_tracks",
    "probe",
]
