"""The engines under every ROI op: where the work is (planner), how big a chunk is (policy), and two loops that
hand chunks to an op's compute.

* :func:`run_windows` — the **windows engine**: gathers the receptive windows of in-mask output positions
  (indexed unfold, borders by index arithmetic), calls ``compute(cols: Tensor[C, kh*kw, P]) -> Tensor[O, P]`` per
  chunk and scatters the result. For scattered and thin masks, and for ops that need the whole window at once.
* :func:`run_tiles` — the **tiles engine**: takes the input patch (with halo) under bands of output rectangles,
  calls ``compute(patch: Tensor[B, C, h_in, w_in], batch: TileBatch) -> Tensor[B, O, h, w]`` per band and writes
  the result back (masked where partial). For coherent masks, and for ops that reduce elementwise over the window
  (:func:`shifted_views`).

An op is its compute: roi_conv2d passes a grouped matmul (windows) and ``F.conv2d`` (tiles); the window ops pass
their reductions. Another kernel or executor plugs in at the same place: a compute of the same signature (or, to
replace a whole engine, a function taking the same planned jobs/bands). Both engines honour the masked semantics of
:func:`convcore.roi_conv2d`: values only at in-mask positions, the rest zero or, with ``out=``, untouched.
"""

from .policy import (
    SERIAL_SECONDS,
    chunk_bytes,
    chunk_count,
    drop_full,
    needs_grad,
    scratch,
    set_workspace_limit,
    single_thread,
    tile_size,
    workspace_limit,
    zeros,
)
from .rects import (
    Band,
    Rect,
    RoiRects,
    check_roi,
    dense_roi,
    image_positions,
    plan_bands,
    positions,
    rects_from_mask,
    same_roi,
)
from .setup import OpSetup, prepare_op, window_jobs
from .tiles import (
    TileBatch,
    TilesCompute,
    TileSource,
    run_tiles,
    run_tiles_op,
    run_window_rows,
    shifted_views,
    tap_views,
)
from .windows import WindowJob, WindowsCompute, run_windows

__all__ = [
    "SERIAL_SECONDS",
    "Band",
    "OpSetup",
    "Rect",
    "RoiRects",
    "TileBatch",
    "TileSource",
    "TilesCompute",
    "WindowJob",
    "WindowsCompute",
    "chunk_bytes",
    "check_roi",
    "dense_roi",
    "chunk_count",
    "drop_full",
    "image_positions",
    "needs_grad",
    "plan_bands",
    "positions",
    "prepare_op",
    "rects_from_mask",
    "run_tiles",
    "run_tiles_op",
    "run_window_rows",
    "run_windows",
    "same_roi",
    "scratch",
    "set_workspace_limit",
    "shifted_views",
    "single_thread",
    "tap_views",
    "tile_size",
    "window_jobs",
    "workspace_limit",
    "zeros",
]
