"""Everything about compiling the ops, in one place, below the ops and beside the engines (it imports the engines,
never an op):

* :mod:`.cache` — the compile cache, the rule for ``compile=`` (:func:`use_compiled`) and the fallback: one
  exception, :class:`CannotCompile`, one warning per reason;
* :mod:`.dispatch` — :func:`run_op`, the traced → dense / compiled / eager ladder every op climbs;
* :mod:`.taps` — the tap-by-tap form of a window reduction; :mod:`.fused` — the fused band form with its derived
  backward; :mod:`.bands` — either form over the tiles engine's bands; :mod:`.extremum` — morphology's tap form
  (max/min of x + w as one elementwise kernel, with a gather backward);
* :mod:`.dense` — the dense forms for an outer ``torch.compile``; :mod:`.grad` — custom gradients (``grad=``).

See docs/compile.md.
"""

from .bands import compiled_window_op
from .cache import (
    AUTO_EAGER_SECONDS,
    AUTO_MIN_WORK,
    COMPILE_CHOICES,
    CannotCompile,
    check_compile,
    compile_stats,
    compiler_missing,
    function_key,
    remember,
    run_compiled,
    tracing,
    use_compiled,
)
from .dense import dense_tiles_op, dense_window_op, masked_result, traced_pad
from .dispatch import run_op
from .fused import fused_band
from .grad import Grad, check_grad, grad_fn
from .taps import window_band

__all__ = [
    "AUTO_EAGER_SECONDS",
    "AUTO_MIN_WORK",
    "COMPILE_CHOICES",
    "CannotCompile",
    "Grad",
    "check_compile",
    "check_grad",
    "compile_stats",
    "compiled_window_op",
    "compiler_missing",
    "dense_tiles_op",
    "dense_window_op",
    "function_key",
    "fused_band",
    "grad_fn",
    "masked_result",
    "remember",
    "run_compiled",
    "run_op",
    "traced_pad",
    "tracing",
    "use_compiled",
    "window_band",
]
