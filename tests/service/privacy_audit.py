"""The privacy audit of docs/anonymization.md, run against whichever ``service`` package is on the path (so the
same script measures a branch and its base): ``python tests/service/privacy_audit.py``.

For camera-like files (tests/service/crafted.py) through the server's path (``pipeline.process``) and ``roiconv
apply`` in process: which identifying pieces survive, read back by tests/service/metadata_oracle.py; for each
orientation case, whether Pillow, cv2 and headless Chromium show the output alike, with the whole box filtered; how
long apply takes to refuse (or get through) two decode bombs. Not a test: it prints a table."""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crafted import (  # noqa: E402
    SECRETS,
    XMP,
    camera_jpeg,
    camera_png,
    camera_tiff,
    camera_webp,
    png_trailing_bomb,
    scan_bomb,
)
from metadata_oracle import chromium_view, cv2_view, exif_blocks, ifds, pillow_view  # noqa: E402
from service_support import smooth  # noqa: E402

from service.cli import main  # noqa: E402
from service.imaging.pipeline import process  # noqa: E402
from service.imaging.spec import Spec  # noqa: E402

FILL = {"name": "fill", "color": [0, 0, 255]}
BOX = [20, 30, 60, 70]
SUFFIX = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "tiff": ".tiff"}


def served(data: bytes) -> bytes:
    return process(Spec.model_validate({"filter": FILL, "roi": {"boxes": [BOX]}}), data, max_pixels=10**8)[0]


def applied(data: bytes, fmt: str, box=BOX) -> tuple[bytes | None, float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in" / ("p" + SUFFIX[fmt])
        src.parent.mkdir()
        src.write_bytes(data)
        (Path(tmp) / "rois.json").write_text(json.dumps({src.name: {"boxes": [box]}}))
        argv = ["apply", str(src), "--out", f"{tmp}/out", "--roi", f"{tmp}/rois.json", "--filter", json.dumps(FILL)]
        t = time.perf_counter()
        status = main([*argv, "--workers", "1"])
        out = Path(tmp) / "out" / src.name
        return (out.read_bytes() if out.exists() else None), time.perf_counter() - t, str(status)


def pieces(body: bytes, fmt: str, parts: dict) -> dict[str, bool]:
    """Which identifying pieces ``body`` still holds."""
    tags = [ifds(b) for b in exif_blocks(body, fmt)]
    return {
        "thumbnail": parts["thumbnail"] in body or any(len(chain) > 1 for chain in tags),
        "GPS": b"Rue de Rivoli" in body or any(0x8825 in chain[0] for chain in tags),
        "Artist": b"Jane Doe" in body,
        "serial": SECRETS[1] in body,
        "XMP": XMP in body,
        "second picture (MPF)": "second" in parts and parts["second"] in body,
    }


def leak_rows() -> None:
    print("| file | route | " + " | ".join(pieces(b"", "png", {"thumbnail": b"x"})) + " |")
    print("|---|---|" + "---|" * 6)
    for fmt, make in (("jpeg", camera_jpeg), ("png", camera_png), ("webp", camera_webp)):
        data, parts = make(smooth(96, 128, seed=4))
        for route, body in (("server", served(data)), ("apply", applied(data, fmt)[0])):
            found = pieces(body, fmt, parts)
            print(f"| {fmt} | {route} | " + " | ".join("LEAKS" if v else "gone" for v in found.values()) + " |")


ORIENTATION_CASES = {
    "jpeg SHORT 6 big-endian": (camera_jpeg, {}),
    "jpeg SHORT 6 little-endian": (camera_jpeg, {"order": "<"}),
    "jpeg LONG 6 big-endian": (camera_jpeg, {"typ": 4}),
    "jpeg LONG 6 little-endian": (camera_jpeg, {"typ": 4, "order": "<"}),
    "jpeg Orientation listed twice (6, 3)": (camera_jpeg, {"twice": True}),
    "jpeg header Exif\\0\\xff": (camera_jpeg, {"exif_header": b"Exif\x00\xff"}),
    "png eXIf SHORT 6": (camera_png, {}),
    "png eXIf LONG 6": (camera_png, {"typ": 4}),
    "webp EXIF SHORT 6": (camera_webp, {}),
    "tiff Orientation 6": (camera_tiff, {}),
}


MEDIA = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def agreement(body: bytes | None, data: bytes, fmt: str, driver) -> str:
    """ "agree" when Pillow, cv2 (and Chromium, but for TIFF) show the output as the input is shown (by Pillow) with
    the whole box filled, else what differs."""
    if body is None:
        return "no output"
    views = {"Pillow": pillow_view(body), "cv2": cv2_view(body)}
    if driver is not None and fmt in MEDIA:
        views["Chromium"] = chromium_view(driver, body, MEDIA[fmt])
    first = views["Pillow"]
    x0, y0, x1, y1 = BOX[0] + 2, BOX[1] + 2, BOX[2] - 2, BOX[3] - 2  # JPEG: chroma upsampling blends the edge
    problems = []
    for viewer, view in views.items():
        if view.shape != first.shape or np.abs(view.astype(int) - first).mean() > 2:
            problems.append(f"{viewer} shows {view.shape[1]}x{view.shape[0]}, Pillow {first.shape[1]}x{first.shape[0]}")
            continue
        missed = int((np.abs(view[y0:y1, x0:x1].astype(int) - [0, 0, 255]).max(2) > 24).sum())
        if missed:
            problems.append(f"{viewer}: {missed}/{(x1 - x0) * (y1 - y0)} box pixels unfilled")
    shown = pillow_view(data).shape
    frame = (
        ""
        if shown == first.shape
        else f" (shown {first.shape[1]}x{first.shape[0]}; Pillow shows the input {shown[1]}x{shown[0]})"
    )
    return "; ".join(problems) if problems else "agree" + frame


def orientation_rows(driver) -> None:
    print("| orientation case | server | apply |")
    print("|---|---|---|")
    for name, (make, options) in ORIENTATION_CASES.items():
        data, _ = make(smooth(96, 128, seed=4), **options)
        fmt = name.split()[0]
        server, local = served(data), applied(data, fmt)[0]
        print(f"| {name} | {agreement(server, data, fmt, driver)} | {agreement(local, data, fmt, driver)} |")


def bomb_rows() -> None:
    print("| decode bomb | apply: exit status, seconds |")
    print("|---|---|")
    for name, data, fmt in (
        ("progressive JPEG, 20,000 scans", scan_bomb(1024, 1024, 20_000), "jpeg"),
        ("1x1 PNG, 4 GiB of zlib zeros", png_trailing_bomb(4 * 2**30), "png"),
    ):
        _, seconds, status = applied(data, fmt, box=[0, 0, 1, 1])
        print(f"| {name} ({len(data) // 1024} KB) | {status}, {seconds:.2f} s |")


if __name__ == "__main__":
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    sys.stderr = io.StringIO()  # apply's progress lines
    leak_rows()
    driver = None
    try:
        from conftest import chromium_driver

        driver = chromium_driver(tempfile.mkdtemp())
        driver.get("about:blank")
    except Exception as exc:  # no browser here: Pillow and cv2 only
        print(f"(no Chromium: {type(exc).__name__})")
    orientation_rows(driver)
    if driver is not None:
        driver.quit()
    bomb_rows()
