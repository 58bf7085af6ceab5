"""CenterFace's post-processing as its authors define it: heatmap peaks → boxes and 5 landmarks, then greedy NMS.

At every heatmap position (i, j) (stride 4) whose score exceeds the threshold, the box has height
``4·exp(scale[0])`` and width ``4·exp(scale[1])`` and is centred on ``((j + offset[1] + 0.5)·4, (i + offset[0] +
0.5)·4)``; its top-left corner is clipped to the image first and the size added after (as the reference decoder
does), then the far corner is clipped. Landmark k is ``(x0 + marks[2k+1]·w, y0 + marks[2k]·h)``. Greedy NMS keeps the
highest score and drops every box overlapping a kept one with IoU ≥ 0.3.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["NMS_IOU", "candidates", "decode_maps", "nms"]

NMS_IOU = 0.3
_STRIDE = 4


def decode_maps(
    heat: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, marks: torch.Tensor, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and landmarks from one image's maps (see :func:`candidates`) after NMS, by decreasing score."""
    size = (heat.shape[1] * _STRIDE, heat.shape[2] * _STRIDE)
    boxes, lms = candidates(heat, scale, offset, marks, size, threshold)
    kept = nms(boxes[:, :4], boxes[:, 4], NMS_IOU)
    return boxes[kept], lms[kept]


def candidates(
    heat: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    marks: torch.Tensor,
    size: tuple[int, int],
    threshold: float,
    keep: torch.Tensor | None = None,
    origin: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """Every box above the threshold (before NMS), in the network input's pixels.

    Args:
        heat (Tensor[1, h, w]), scale (Tensor[2, h, w]), offset (Tensor[2, h, w]), marks (Tensor[10, h, w]): the
            maps of the network input, or of a crop of it whose top-left corner is at ``origin`` (y, x).
        size: (H, W) of the whole network input, for clipping.
        threshold: the score a peak must exceed.
        keep (bool Tensor[h, w] | None): positions allowed to produce a box (the ``within`` region at stride 4).

    Returns:
        (boxes float32 [K, 5] = x0, y0, x1, y1, score; landmarks float32 [K, 5, 2] as (x, y)).
    """
    hit = heat[0] > threshold  # [h, w]
    if keep is not None:
        hit &= keep
    ii, jj = hit.nonzero(as_tuple=True)  # [K] each
    if ii.numel() == 0:
        return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
    score = heat[0, ii, jj]
    bh, bw = scale[0, ii, jj].exp() * _STRIDE, scale[1, ii, jj].exp() * _STRIDE  # [K]
    cy = (ii + offset[0, ii, jj] + 0.5) * _STRIDE + origin[0]
    cx = (jj + offset[1, ii, jj] + 0.5) * _STRIDE + origin[1]
    H, W = size
    x0 = (cx - bw / 2).clamp(0, W)
    y0 = (cy - bh / 2).clamp(0, H)
    x1 = (x0 + bw).clamp(max=W)
    y1 = (y0 + bh).clamp(max=H)
    m = marks[:, ii, jj]  # [10, K]
    lx = m[1::2] * bw + x0  # [5, K]
    ly = m[0::2] * bh + y0
    boxes = torch.stack([x0, y0, x1, y1, score], dim=1).numpy().astype(np.float32)  # [K, 5]
    lms = torch.stack([lx.T, ly.T], dim=2).numpy().astype(np.float32)  # [K, 5, 2]
    return boxes, lms


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, by decreasing score: a box overlapping a kept one with IoU ≥ ``iou``
    is dropped. boxes float [K, 4] (x0, y0, x1, y1), scores float [K]."""
    order = np.argsort(-scores, kind="stable")
    b = boxes[order].astype(np.float64)  # [K, 4]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # [K]
    alive = np.ones(len(b), bool)
    for i in range(len(b)):  # one row of the IoU matrix at a time: memory O(K)
        if not alive[i]:
            continue
        rest = b[i + 1 :]  # [K - i - 1, 4]
        w = np.clip(np.minimum(b[i, 2], rest[:, 2]) - np.maximum(b[i, 0], rest[:, 0]), 0, None)
        h = np.clip(np.minimum(b[i, 3], rest[:, 3]) - np.maximum(b[i, 1], rest[:, 1]), 0, None)
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            alive[i + 1 :] &= ~(inter / (area[i] + area[i + 1 :] - inter) >= iou)
    return order[alive]
