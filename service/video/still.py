"""Where a keyframe changed: a still camera's keyframes are searched only there (and where faces were).

Each cell of ``cell`` × ``cell`` pixels keeps a reference: the frame's grey pixels (at half size) from the last
keyframe whose search covered that cell. A keyframe's cell changed when the mean absolute difference of its grey
pixels from that reference exceeds ``tol`` (0..255; slow drifts add up against the old reference until they do).
The keyframe is then searched only on the changed cells, grown by ``margin`` pixels (what the detector sees of a
change's surroundings), and on the previous keyframe's faces grown by half their size; every cell searched takes
the frame as its new reference. The whole frame is searched instead on the first keyframe of a shot, on every
``refresh``-th keyframe after it, and whenever the area to search is more than ``most`` of the frame (a moving
camera: everything changed).

A face whose centre lies in a cell that did not change, and that was not found there before, is not looked for
again until the next whole-frame keyframe: the pixels it would be found in are the ones the detector already saw
without finding it (to ``tol``).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["ChangedAreas"]


class ChangedAreas:
    """See the module's docstring; :meth:`areas` gives a keyframe's search boxes (None: the whole frame)."""

    def __init__(self, cell: int = 16, tol: float = 8.0, margin: int = 64, refresh: int = 4, most: float = 0.5) -> None:
        if cell < 2 or cell % 2:
            raise ValueError(f"cell must be an even number of pixels >= 2, got {cell}")
        if refresh < 1:
            raise ValueError(f"refresh must be >= 1 keyframe, got {refresh}")
        self.cell, self.tol, self.margin, self.refresh, self.most = cell, tol, margin, refresh, most
        self._ref: np.ndarray | None = None  # [H/2, W/2] float32 grey: each cell's pixels when last searched
        self._since = 0  # keyframes since the last whole-frame search
        self.whole = self.partial = 0  # keyframes searched whole / only where they changed
        self.searched = 0.0  # share of the frame searched, summed over the keyframes

    def reset(self) -> None:
        """A scene cut: the next keyframe is searched whole."""
        self._ref = None

    def areas(self, frame: np.ndarray, faces: list[np.ndarray]) -> list[np.ndarray] | None:
        """The boxes (x0, y0, x1, y1) to search keyframe ``frame`` (BGR [H, W, 3]) in, given the faces of the previous
        keyframe, or None for the whole frame; the references are updated as if the search has run."""
        H, W = frame.shape[:2]
        half = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (W // 2, H // 2), interpolation=cv2.INTER_AREA)
        grey = half.astype(np.float32)  # [H/2, W/2]
        if self._ref is None or self._ref.shape != grey.shape or self._since + 1 >= self.refresh:
            return self._whole(grey)
        c = self.cell // 2  # a cell at half size
        rows, cols = -(-grey.shape[0] // c), -(-grey.shape[1] // c)
        diff = cv2.absdiff(grey, self._ref)  # [H/2, W/2]
        pad = np.zeros((rows * c, cols * c), np.float32)
        pad[: diff.shape[0], : diff.shape[1]] = diff
        changed = pad.reshape(rows, c, cols, c).mean(axis=(1, 3)) > self.tol  # [rows, cols] (edge cells: padded)
        grow = -(-self.margin // self.cell)
        if grow and changed.any():
            changed = cv2.dilate(changed.astype(np.uint8), np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)) > 0
        marked = changed.copy()
        for b in faces:
            s = max(b[2] - b[0], b[3] - b[1]) / 2
            x0, y0 = int(max(0, b[0] - s) // self.cell), int(max(0, b[1] - s) // self.cell)
            x1, y1 = int(np.ceil((b[2] + s) / self.cell)), int(np.ceil((b[3] + s) / self.cell))
            marked[y0 : min(y1, rows), x0 : min(x1, cols)] = True
        share = float(marked.mean())
        if share > self.most:
            return self._whole(grey)
        self._since += 1
        self.partial += 1
        self.searched += share
        ref = self._ref  # the searched cells take this frame as their reference
        up = np.repeat(np.repeat(marked, c, axis=0), c, axis=1)[: grey.shape[0], : grey.shape[1]]  # [H/2, W/2]
        ref[up] = grey[up]
        return _boxes(marked, self.cell, W, H)

    def _whole(self, grey: np.ndarray) -> None:
        self._ref, self._since = grey, 0
        self.whole += 1
        self.searched += 1.0
        return None


def _boxes(marked: np.ndarray, cell: int, W: int, H: int) -> list[np.ndarray]:
    """One box (x0, y0, x1, y1) in pixels around each 8-connected piece of marked cells, clipped to the frame."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(marked.astype(np.uint8), connectivity=8)
    out = []
    for x, y, w, h, _ in stats[1:n]:
        out.append(np.array([x * cell, y * cell, min(W, (x + w) * cell), min(H, (y + h) * cell)], np.float64))
    return out
