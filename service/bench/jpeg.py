"""JPEG in, JPEG out: ``python -m service.bench.jpeg [--repeats N]``.

The floor is what a user writes with OpenCV: decode the whole JPEG, blur the ROI's crop with its halo, encode the
whole image (cv2's default quality 95). Ours is :func:`service.imaging.jpeg_roi.edit_jpeg`: only the blocks under
the ROI are decoded and re-encoded, the rest is copied as coefficients. Both are timed in one process, side by side
(best of N alternations), for a centred square ROI of 1%, 10% and 50% of a 1080p and a 2048² photo, gaussian k=31.
A second table times the encode step alone, as the server runs it (the image is decoded and filtered already):
``cv2.imencode`` of the whole image beside :func:`~service.imaging.jpeg_roi.write_pixels` of the ROI's blocks.
"""

from __future__ import annotations

import argparse
import math

import cv2
import numpy as np

from ..imaging.jpeg_roi import edit_jpeg, write_pixels
from .floor import photo, side_by_side

KSIZE, SIGMA = 31, 8.0


def centred_box(width: int, height: int, fraction: float) -> tuple[int, int, int, int]:
    side = math.sqrt(fraction * width * height)
    w, h = min(width, round(side)), min(height, round(fraction * width * height / min(width, round(side))))
    x0, y0 = (width - w) // 2, (height - h) // 2
    return x0, y0, x0 + w, y0 + h


def _blur(img: np.ndarray, box, origin=(0, 0)) -> None:
    """Gaussian inside ``box`` (image coordinates) of ``img`` whose top-left corner is ``origin``, read with halo."""
    r = KSIZE // 2
    x0, y0, x1, y1 = (v - o for v, o in zip(box, origin * 2))
    t, l = max(y0 - r, 0), max(x0 - r, 0)
    out = cv2.GaussianBlur(img[t : y1 + r, l : x1 + r], (KSIZE, KSIZE), SIGMA)
    img[y0:y1, x0:x1] = out[y0 - t : y1 - t, x0 - l : x1 - l]


def floor_call(data: bytes, box) -> bytes:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    _blur(img, box)
    return cv2.imencode(".jpg", img)[1].tobytes()


def ours_call(data: bytes, box) -> bytes:
    return edit_jpeg(data, [box], lambda px, origin: _blur(px, box, origin), (KSIZE // 2, KSIZE // 2))


def encode_step(args) -> None:
    print("\n| image | ROI | cv2.imencode ms | write_pixels ms | ratio |")
    print("|---|---|---|---|---|")
    for name, (w, h) in {"1080p": (1920, 1080), "2048²": (2048, 2048)}.items():
        data = cv2.imencode(".jpg", photo(w, h))[1].tobytes()
        for fraction in (0.01, 0.10, 0.50):
            box = centred_box(w, h, fraction)
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            _blur(img, box)
            t_floor, t_ours = side_by_side(
                lambda i=img: cv2.imencode(".jpg", i),
                lambda d=data, i=img, b=box: write_pixels(d, i, [(b, None)]),
                args.repeats,
            )
            print(f"| {name} | {fraction:.0%} | {t_floor * 1e3:.1f} | {t_ours * 1e3:.1f} | {t_ours / t_floor:.2f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    print("| image | ROI | floor ms | ours ms | ours / floor time | floor size / input | ours size / input |")
    print("|---|---|---|---|---|---|---|")
    for name, (w, h) in {"1080p": (1920, 1080), "2048²": (2048, 2048)}.items():
        data = cv2.imencode(".jpg", photo(w, h))[1].tobytes()
        for fraction in (0.01, 0.10, 0.50):
            box = centred_box(w, h, fraction)
            t_floor, t_ours = side_by_side(
                lambda d=data, b=box: floor_call(d, b), lambda d=data, b=box: ours_call(d, b), args.repeats
            )
            f_size, o_size = len(floor_call(data, box)) / len(data), len(ours_call(data, box)) / len(data)
            print(
                f"| {name} | {fraction:.0%} | {t_floor * 1e3:.1f} | {t_ours * 1e3:.1f} | {t_ours / t_floor:.2f} "
                f"| {f_size:.3f} | {o_size:.3f} |"
            )
    encode_step(args)


if __name__ == "__main__":
    main()
