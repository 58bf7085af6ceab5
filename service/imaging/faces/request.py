"""A :class:`~service.imaging.spec.Detect` spec run on decoded pixels: ``within`` drawn, faces found, and the faces as
ROI pieces or as the JSON of POST /detect. Errors are :class:`~service.imaging.regions.RegionError` (a ValueError
naming the spec field) or ImportError (the ``detect`` extra is missing); the server maps them to 422 / 501."""

from __future__ import annotations

import numpy as np

from ..regions import RegionError, build_pieces, pieces_mask
from ..spec import Detect, Roi
from .detect import Face, detect_faces, face_pieces

__all__ = ["detections", "find", "with_faces"]


def find(
    spec: Detect,
    pixels: np.ndarray,
    *,
    color: str = "bgr",
    origin: tuple[int, int] = (0, 0),
    full: tuple[int, int] | None = None,
    field: str = "spec",
) -> list[Face]:
    """Faces in ``pixels`` (ndarray[H, W, C], as the codec decodes: BGR(A) or grey) under ``spec``, in the
    upload's pixels. ``within`` is in full-image coordinates: the upload sits at ``origin`` (x, y) of a ``full``
    (width, height) image. ``field`` names the spec in errors ("spec" for /detect, "spec.roi.detect" in /convolve).
    """
    H, W = pixels.shape[:2]
    within = None
    if spec.within is not None:
        try:
            pieces = build_pieces(spec.within, H, W, None, origin, full)
        except RegionError as exc:
            raise RegionError(exc.field.replace("spec.roi", f"{field}.within"), str(exc)) from None
        within = pieces_mask(pieces, H, W)
        if not within.any():
            raise RegionError(f"{field}.within", f"within lies outside the {W}x{H} image: it holds no pixel of it")
    return detect_faces(pixels, threshold=spec.threshold, within=within, max_side=spec.max_side, color=color)


def with_faces(roi: Roi, faces: list[Face], spec: Detect, size: tuple[int, int], origin=(0, 0)) -> Roi:
    """``roi`` without its ``detect``, with the faces' pieces added (full-image coordinates; ``size`` = (H, W) of the
    upload, which sits at ``origin`` (x, y))."""
    ox, oy = origin
    pieces = face_pieces(faces, size, scale=spec.scale, shape=spec.shape)
    boxes = [[x0 + ox, y0 + oy, x1 + ox, y1 + oy] for x0, y0, x1, y1 in pieces.get("boxes", [])]
    ellipses = [[cx + ox, cy + oy, ax, ay, float(a)] for cx, cy, ax, ay, a in pieces.get("ellipses", [])]
    return roi.model_copy(update={"boxes": roi.boxes + boxes, "ellipses": roi.ellipses + ellipses, "detect": None})


def detections(faces: list[Face], spec: Detect, size: tuple[int, int]) -> dict:
    """The body of POST /detect: each face's box, score and landmarks (rounded to 0.01 px), and ``roi``: the pieces
    /convolve would use for them (``spec.scale`` and ``spec.shape``)."""
    return {
        "detections": [
            {
                "box": [round(v, 2) for v in f.box],
                "score": round(f.score, 4),
                "landmarks": [[round(x, 2), round(y, 2)] for x, y in f.landmarks],
            }
            for f in faces
        ],
        "roi": face_pieces(faces, size, scale=spec.scale, shape=spec.shape),
    }
