"""RectRoi: a region of interest handed over as boxes, each with an optional local mask, instead of a dense mask.

A caller that knows its ROI as shapes (face boxes, polygons rasterized inside their own bounding boxes) hands the
boxes to convcore as they are: the ops plan them straight into the engines' rectangles, so a few small boxes in a
large image cost what the boxes cost, not a scan of a full-size mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["RectRoi"]


class RectRoi:
    """A ROI over output positions as boxes ``(x0, y0, x1, y1)`` (x1, y1 exclusive, the convention of torchvision's
    boxes), each with an optional bool mask of the box's size (True: inside the ROI; None: the whole box).

    Accepted wherever a ``mask=`` is (``roi_conv2d``, ``roi_conv2d_batch``'s ``masks``, ``plan_roi``,
    ``RoIConv2d``, ``window_op2d`` and the window ops built on it); one ``RectRoi`` is shared by every image of a
    batch, as a (H_out, W_out) mask is. The ROI is the union of the boxes' masks: boxes may overlap, and a position
    covered by several boxes is computed once (from the first box that covers it). Boxes are in output coordinates
    and must lie inside the output (checked when an op sees the output size); an empty box covers nothing.

    Args:
        boxes (Tensor[K, 4] or a sequence of K (x0, y0, x1, y1) ints): the boxes.
        masks (a sequence of K bool Tensor[y1 - y0, x1 - x0] or None, optional): each box's local mask.

    Example:
        >>> local = torch.tensor([[False, True], [True, True]])
        >>> roi = RectRoi([(1, 2, 4, 5), (5, 0, 7, 2)], [None, local])
        >>> len(roi), int(roi.to_mask(6, 8).sum())  # 9 positions of the first box, 3 of the second
        (2, 12)
    """

    def __init__(
        self,
        boxes: torch.Tensor | Sequence[Sequence[int]],
        masks: Sequence[torch.Tensor | None] | None = None,
    ) -> None:
        self.boxes: tuple[tuple[int, int, int, int], ...] = _check_boxes(boxes)
        self.masks: tuple[torch.Tensor | None, ...] = _check_masks(masks, self.boxes)

    def __len__(self) -> int:
        return len(self.boxes)

    def __repr__(self) -> str:
        partial = sum(m is not None for m in self.masks)
        return f"RectRoi({len(self.boxes)} boxes, {partial} with a local mask)"

    @property
    def _version(self) -> tuple[int, ...]:
        """The local masks' version counters: a cache keyed on this ROI sees an in-place edit of a mask."""
        return tuple(-1 if m is None else m._version for m in self.masks)

    def check(self, out_hw: Sequence[int], name: str = "mask") -> None:
        """Raise ValueError naming the first box that does not lie inside an output of ``out_hw`` = (H, W)."""
        H, W = (int(s) for s in out_hw)
        for i, (x0, y0, x1, y1) in enumerate(self.boxes):
            if x1 > W or y1 > H:
                raise ValueError(
                    f"{name}.boxes[{i}] = (x0, y0, x1, y1) = {(x0, y0, x1, y1)} reaches past the output "
                    f"(H_out, W_out) = {(H, W)}; boxes are over OUTPUT positions and must lie inside them"
                )

    def to_mask(self, height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The ROI as a dense bool Tensor[height, width] (the union of the boxes' masks): the mask form.

        Example:
            >>> RectRoi([(0, 0, 2, 1)]).to_mask(2, 3).int()
            tensor([[1, 1, 0],
                    [0, 0, 0]], dtype=torch.int32)
        """
        self.check((height, width))
        if device is None:
            device = next((m.device for m in self.masks if m is not None), torch.device("cpu"))
        mask = torch.zeros(height, width, dtype=torch.bool, device=device)  # [H, W]
        for (x0, y0, x1, y1), local in zip(self.boxes, self.masks):
            view = mask[y0:y1, x0:x1]  # [h, w] view
            if local is None:
                view.fill_(True)
            else:
                view |= local.to(device)
        return mask


def _check_boxes(boxes: object) -> tuple[tuple[int, int, int, int], ...]:
    if isinstance(boxes, torch.Tensor):
        if boxes.is_floating_point() or boxes.is_complex() or boxes.dtype == torch.bool:
            raise TypeError(f"boxes must hold integers (x0, y0, x1, y1), got a {boxes.dtype} tensor")
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be a Tensor[K, 4] of (x0, y0, x1, y1), got shape {tuple(boxes.shape)}")
        boxes = boxes.tolist()
    if not isinstance(boxes, Sequence) or isinstance(boxes, (str, bytes)):
        raise TypeError(f"boxes must be a Tensor[K, 4] or a sequence of (x0, y0, x1, y1), got {type(boxes).__name__}")
    checked = []
    for i, box in enumerate(boxes):
        if isinstance(box, torch.Tensor):
            box = box.tolist()
        if not isinstance(box, Sequence) or len(box) != 4:
            raise ValueError(f"boxes[{i}] must be 4 ints (x0, y0, x1, y1), got {box!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in box):
            raise TypeError(f"boxes[{i}] must be 4 ints (x0, y0, x1, y1), got {box!r}")
        x0, y0, x1, y1 = box
        if x0 < 0 or y0 < 0:
            raise ValueError(f"boxes[{i}] = {tuple(box)} starts outside the output: x0 and y0 must be >= 0")
        if x1 < x0 or y1 < y0:
            raise ValueError(f"boxes[{i}] = {tuple(box)} has a negative size: x1 >= x0 and y1 >= y0 are needed")
        checked.append((x0, y0, x1, y1))
    return tuple(checked)


def _check_masks(masks: object, boxes: tuple[tuple[int, int, int, int], ...]) -> tuple[torch.Tensor | None, ...]:
    if masks is None:
        return (None,) * len(boxes)
    if not isinstance(masks, Sequence) or isinstance(masks, (str, bytes)):
        raise TypeError(f"masks must be a sequence of one bool tensor (or None) per box, got {type(masks).__name__}")
    if len(masks) != len(boxes):
        raise ValueError(f"masks must have one entry per box ({len(boxes)}), got {len(masks)}")
    for i, (m, (x0, y0, x1, y1)) in enumerate(zip(masks, boxes)):
        if m is None:
            continue
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            got = m.dtype if isinstance(m, torch.Tensor) else type(m).__name__
            raise TypeError(f"masks[{i}] must be a bool torch.Tensor (or None for the whole box), got {got}")
        if tuple(m.shape) != (y1 - y0, x1 - x0):
            raise ValueError(
                f"masks[{i}] must have the shape of boxes[{i}], (y1 - y0, x1 - x0) = {(y1 - y0, x1 - x0)}, "
                f"got {tuple(m.shape)}"
            )
    return tuple(masks)
