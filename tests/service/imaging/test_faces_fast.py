"""The detector's fast path against independent oracles: the ONNX reader against the onnx package, the folded and
striped network against onnxruntime on the same file, and the admission's memory bound against the peak RSS of a
real detection in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from faces_support import composite, onnx, photos, reference_faces, reference_maps

from service.imaging.faces import detect_bytes, detect_faces, load_centerface, model_path, network_size
from service.imaging.faces import model as model_module
from service.imaging.faces.onnxfile import read_graph

ROOT = Path(__file__).resolve().parents[3]


def test_onnx_reader_equals_the_onnx_package():
    from onnx import helper, numpy_helper

    graph = onnx.load(str(model_path())).graph
    nodes, weights = read_graph(model_path())
    assert [n.op_type for n in nodes] == [n.op_type for n in graph.node]
    for mine, theirs in zip(nodes, graph.node):
        assert mine.inputs == tuple(theirs.input) and mine.outputs == tuple(theirs.output)
        want = {a.name: helper.get_attribute_value(a) for a in theirs.attribute if a.type in (2, 7)}  # INT, INTS
        assert mine.attrs == {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in want.items()}
    want = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    assert set(weights) == set(want)
    for name, array in weights.items():
        assert array.dtype == want[name].dtype and np.array_equal(array, want[name]), name


def test_onnx_reader_refuses_what_is_not_a_model(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x3a\x05abc")  # field 7 (graph) announcing 5 bytes, holding 3
    with pytest.raises(ValueError, match="truncated"):
        read_graph(bad)
    bad.write_bytes(b"\x08\x01")  # a valid message without a graph
    with pytest.raises(ValueError, match="not an ONNX model"):
        read_graph(bad)


def _tall() -> np.ndarray:
    """1280×1024 (several stem strips at the network's size) with heads across the strips' edges."""
    heads = [(40, 150, 120, 0.0), (300, 330, 90, 12.0), (700, 480, 200, -15.0), (1000, 700, 150, 5.0)]
    return composite(photos()["coffee"], 1280, 1024, heads)


def _torch_maps(net, rgb: np.ndarray) -> list[np.ndarray]:
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        return [m.numpy() for m in net(x)]


def _close(mine: list[np.ndarray], ref: list[np.ndarray]) -> None:
    assert np.abs(mine[0] - ref[0]).max() < 1e-4  # heatmap
    for m, r in zip(mine[1:], ref[1:]):  # scale, offset, landmarks: pre-activation values, a few units large
        assert np.abs(m - r).max() < 1e-3


def test_folded_neck_equals_the_port_and_onnxruntime():
    rgb = photos()["three_heads"]
    size = network_size(*rgb.shape[:2])
    ref = reference_maps(rgb, size)
    folded = model_module._fold_neck(load_centerface())
    assert all(isinstance(up.bn, torch.nn.Identity) for up in folded.up)
    _close(_torch_maps(folded, rgb), ref)
    _close(_torch_maps(load_centerface(), rgb), ref)


def test_striped_network_equals_onnxruntime_and_finds_the_same_faces():
    rgb = _tall()
    assert network_size(1024, 1280) == (1024, 1280)
    fast = model_module.fast_centerface()
    assert isinstance(fast, model_module._Striped)
    rows = model_module._STRIP_PIXELS // 1280 // 32 * 32
    assert 1024 > rows + 2 * model_module._STRIP_HALO  # the strips run
    ref = reference_maps(rgb, (1024, 1280))
    _close(_torch_maps(fast, rgb), ref)
    want = reference_faces(ref, 0.2)
    got = detect_faces(rgb, threshold=0.2)
    assert len(got) == len(want) >= 4
    for g, w in zip(got, want):
        assert np.allclose(g.box, w[:4], atol=0.05) and abs(g.score - w[4]) < 1e-4


def test_bgr_input_resized_as_rgb():
    """A BGR photo bigger than the size policy is resized without being copied whole: same faces as its RGB."""
    rgb = composite(photos()["coffee"], 2600, 1400, [(300, 200, 260, 0.0), (1800, 700, 400, 10.0)])
    a = detect_faces(rgb, max_side=1024)
    b = detect_faces(np.ascontiguousarray(rgb[:, :, ::-1]), max_side=1024, color="bgr")
    assert len(a) == len(b) == 2
    for f, g in zip(a, b):
        assert np.allclose(f.box, g.box, atol=1e-3)


_PROBE = """
import json, os, sys
os.environ["OMP_NUM_THREADS"] = "1"
import numpy as np, torch
torch.set_num_threads(1)
from service.imaging.faces import detect_faces
W, H, max_side, within = json.loads(sys.argv[1])
detect_faces(np.zeros((64, 64, 3), np.uint8))  # the network built, a first call made
image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
mask = None
if within:
    mask = np.zeros((H, W), bool)
    mask[H // 4 : H // 2, W // 4 : W // 2] = True
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def hwm():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
try:
    open("/proc/self/clear_refs", "w").write("5")  # the peak RSS restarts from the current RSS
except OSError:
    print("no-reset")
    sys.exit(0)
before = rss()
assert hwm() <= before + 2**20, "the peak RSS was not reset"
detect_faces(image, max_side=max_side, within=mask, color="bgr")
print(hwm() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
@pytest.mark.parametrize(
    "width, height, max_side, within",
    [(1280, 720, 2048, False), (4000, 3000, 2048, False), (2048, 2048, None, False), (4000, 3000, 2048, True)],
)
def test_admission_estimate_bounds_the_measured_peak(width, height, max_side, within):
    """The first detection at that size in a fresh process: the rise of its peak RSS stays under detect_bytes."""
    args = json.dumps([width, height, max_side, within])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _PROBE, args], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    if done.stdout.strip() == "no-reset":
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    measured = int(done.stdout.split()[-1])
    estimate = detect_bytes(width, height, max_side, within=within)
    assert 0 < measured <= estimate, (measured, estimate)
