"""What an engine is given for one request (:class:`Work`), and how a float result becomes the output depth
(:func:`finish`). Plain numpy: both engines and the pipeline share it without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .regions import Piece

__all__ = ["MAX_VALUE", "Work", "finish"]

MAX_VALUE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}  # the white of each integer depth


@dataclass
class Work:
    """The data of one request for a worker: pixels (H, W, C), the ROI, outside, output depth.

    The ROI is ``mask`` bool (H, W), or ``pieces`` (rectangles of the pixels, each with its local mask: what the
    regions module draws, handed to convcore as they are), or neither (everywhere).
    """

    pixels: np.ndarray
    mask: np.ndarray | None
    outside: str
    depth: str
    bands: int = 1  # > 1: run the convolution in row bands (bounded working memory)
    pieces: list[Piece] | None = None  # in the pixels' coordinates; the ROI when mask is None

    @property
    def color(self) -> np.ndarray:
        """The channels the filter sees: gray (H, W, 1) or BGR (H, W, 3); alpha stays out."""
        return self.pixels[:, :, :3] if self.pixels.shape[2] == 4 else self.pixels


def finish(result: np.ndarray, work: Work) -> np.ndarray:
    """Round and saturate a float result to the output depth (as cv2's saturate_cast), and put the alpha back."""
    src = work.pixels
    if work.depth == "float32" or src.dtype == np.float32:
        out = result.astype(np.float32, copy=False)
    else:
        out = np.clip(np.rint(result), 0, MAX_VALUE[src.dtype]).astype(src.dtype)
    if src.shape[2] == 4 and out.shape[2] == 3:
        out = np.concatenate([out, src[:, :, 3:].astype(out.dtype)], axis=2)  # alpha unchanged
    return out
