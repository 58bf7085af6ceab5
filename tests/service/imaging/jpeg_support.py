"""What the JPEG tests share: the photo, the encoder variants (sampling, progressive, restart, grayscale, Pillow's
optimized tables), the decode every test uses as its oracle (cv2.imdecode) and the block ring around rectangles."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

W, H = 333, 251  # partial MCUs on the right and bottom edges
KSIZE, SIGMA = 15, 4.0


def photo(width: int = W, height: int = H, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 12 + 1, width // 12 + 1, 3), dtype=np.uint8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return cv2.add(img, rng.integers(0, 6, img.shape, dtype=np.uint8))


def pillow_jpeg(img: np.ndarray, **options) -> bytes:
    buf = io.BytesIO()
    mode_img = Image.fromarray(img[:, :, ::-1]) if img.ndim == 3 else Image.fromarray(img)
    mode_img.save(buf, "JPEG", **options)
    return buf.getvalue()


def cv_jpeg(img: np.ndarray, *params: int) -> bytes:
    return cv2.imencode(".jpg", img, list(params))[1].tobytes()


_SAMPLING = cv2.IMWRITE_JPEG_SAMPLING_FACTOR
# name: (bytes, MCU (w, h) in pixels, chroma subsampled, quality)
VARIANTS = {
    "420 q95 (cv2)": (lambda img: cv_jpeg(img), (16, 16), True, 95),
    "444 (cv2)": (lambda img: cv_jpeg(img, _SAMPLING, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444), (8, 8), False, 95),
    "422 (cv2)": (lambda img: cv_jpeg(img, _SAMPLING, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422), (16, 8), True, 95),
    "progressive (cv2)": (lambda img: cv_jpeg(img, cv2.IMWRITE_JPEG_PROGRESSIVE, 1), (16, 16), True, 95),
    "restart interval 3 (cv2)": (lambda img: cv_jpeg(img, cv2.IMWRITE_JPEG_RST_INTERVAL, 3), (16, 16), True, 95),
    "grayscale (cv2)": (lambda img: cv_jpeg(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)), (8, 8), False, 95),
    "q75 optimized (Pillow)": (lambda img: pillow_jpeg(img, quality=75, optimize=True), (16, 16), True, 75),
    "440 (cv2)": (lambda img: cv_jpeg(img, _SAMPLING, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440), (8, 16), True, 95),
    "411 (cv2)": (lambda img: cv_jpeg(img, _SAMPLING, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411), (32, 8), True, 95),
    "420 q80 progressive restart 2 (Pillow)": (
        lambda img: pillow_jpeg(img, quality=80, progressive=True, restart_marker_blocks=2),
        (16, 16),
        True,
        80,
    ),
}


def floor_params(variant: str, quality: int) -> list[int]:
    """cv2.imencode's options for the JPEG error of one re-encode at the variant's quality (and 4:1:1 chroma, whose
    error is larger than 4:2:0's)."""
    sampling = [_SAMPLING, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411] if "411" in variant else []
    return [cv2.IMWRITE_JPEG_QUALITY, quality, *sampling]


def decode(data: bytes) -> np.ndarray:
    out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return out if out.ndim == 3 else out[:, :, None]


def ring(rects, mcu, subsampled) -> np.ndarray:
    """Bool (H, W): the MCUs any rectangle touches, grown by one pixel when chroma is upsampled."""
    mw, mh = mcu
    out = np.zeros((H, W), bool)
    for x0, y0, x1, y1 in rects:
        out[y0 // mh * mh : -(-y1 // mh) * mh, x0 // mw * mw : -(-x1 // mw) * mw] = True
    if subsampled:
        out = cv2.dilate(out.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return out
