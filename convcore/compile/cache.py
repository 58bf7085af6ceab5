"""The compile cache: an op's per-band (or per-chunk) compute traced and compiled by ``torch.compile`` (Inductor:
C++/OpenMP on the CPU, Triton on CUDA), cached, with the eager compute as the fallback.

An op hands :func:`run_compiled` a module-level ``core`` function (pure torch, traceable) and the arguments of one
call; the engine loops stay in Python, only the compute is compiled, so cost still follows the ROI. Each cache entry
is keyed by the op, the user's function (its code and closure, :func:`function_key`), the static arguments, dtype,
device and grad mode, and gets its own copy of ``core``'s code object, so Dynamo's per-code recompile limit applies to
one entry, never to the whole grid of geometries a program uses. Band and chunk sizes are marked dynamic
(``maybe_mark_dynamic``): changing them does not recompile (a size of 1 is specialized once).

Fallback: when the device cannot compile (no C++ compiler for the CPU, no Triton for CUDA), when Dynamo cannot trace
the function, or when compiling fails, :func:`run_compiled` raises :class:`CannotCompile` — the one way the compiled
path says no — and the op runs its eager compute (:func:`convcore.compile.dispatch.run_op`); one warning per reason
names it. Tracing is ``fullgraph=True``: a function that would graph-break falls back instead of
running half compiled.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
import types
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "AUTO_EAGER_SECONDS",
    "AUTO_MIN_WORK",
    "COMPILE_CHOICES",
    "CannotCompile",
    "check_compile",
    "compile_stats",
    "compiler_missing",
    "function_key",
    "remember",
    "run_compiled",
    "spent_eager",
    "tracing",
    "use_compiled",
]

log = logging.getLogger("convcore.compile")

COMPILE_CHOICES = (True, False, "auto")
# compile="auto" also compiles a layer (function, channels, kernel, dtype, device) once its eager calls have spent this
# many seconds: compiling one function took 5-40 s on the 2-core build machine, so from then on the compile has paid
# for itself against staying eager (the rent-or-buy rule), and a training loop or a service compiles its hot layers
# after a few steps while a one-off call stays eager. Calls under autograd count three times their forward (the
# backward of the eager ops costs about twice their forward).
AUTO_EAGER_SECONDS = 20.0
# compile="auto" compiles a generic window function when one call evaluates it at least this many times (positions ×
# O × C·kh·kw): N=2, 16→16, 3×3, 256×256 is 3.0e8. Below it the eager chunks finish before the compiler would.
AUTO_MIN_WORK = 2**28
# torch.compile's backend: Inductor. Tests set "aot_eager" to check tracing, autograd and the engines over a whole
# grid of geometries without paying for code generation each time.
_BACKEND = "inductor"


class CannotCompile(Exception):
    """The compiled path is not available for this call; ``reason`` says why (it was warned about once). The op
    runs its eager path instead."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.reason = reason


@dataclass
class _Entry:
    fn: Callable
    name: str
    failed: str | None = None
    compile_seconds: float | None = None
    calls: int = 0


@dataclass
class _Cache:
    entries: dict[Hashable, _Entry] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)
    warm: set[Hashable] = field(default_factory=set)  # functions "auto" compiled once: it compiles all their calls
    eager_seconds: dict[Hashable, float] = field(default_factory=dict)  # per layer, what "auto" spent eagerly
    lock: threading.Lock = field(default_factory=threading.Lock)


_cache = _Cache()


def check_compile(compile: object) -> None:
    """Validate an op's ``compile=`` argument: True, False or "auto"."""
    if compile not in COMPILE_CHOICES or (compile is not True and compile is not False and compile != "auto"):
        raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")


def tracing() -> bool:
    """Whether an outer ``torch.compile`` is tracing the caller (then ops take their dense, traceable form)."""
    return torch.compiler.is_compiling()


def compiler_missing(device: torch.device) -> str | None:
    """Why ``device`` cannot compile here (None when it can): the C++ compiler Inductor calls, or Triton on CUDA."""
    kind = torch.device(device).type
    return _missing(kind, os.environ.get("CXX", "g++") if kind != "cuda" else "")


@functools.lru_cache(maxsize=16)
def _missing(kind: str, cxx: str) -> str | None:
    if kind == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed (Inductor generates Triton kernels on CUDA)"
        return None
    if shutil.which(cxx) is None:
        return f"no C++ compiler: CXX={cxx!r} is not an executable on PATH (Inductor compiles C++ on the CPU)"
    return None


def use_compiled(
    compile: bool | str,
    device: torch.device,
    work: int,
    *,
    generic: bool = True,
    key: Hashable | None = None,
    layer: Hashable | None = None,
) -> bool:
    """The one rule for the compiled path: True forces it, False forbids it. "auto" compiles a ``generic`` window
    function (the user's ``fn``, distance p = 1, morphology: eager 10-140× a convolution, compiled 1-18×) where the
    device can compile and

    * one call does at least :data:`AUTO_MIN_WORK` evaluations (it pays for the compile by itself), or
    * the function was compiled before in this process (:func:`remember` ``key``): a 10% ROI must not fall back to
      eager chunks slower than the compiled whole image, or
    * the eager calls of this ``layer`` have spent :data:`AUTO_EAGER_SECONDS` (:func:`spent_eager`): a training
      loop's or a service's hot layer.

    Ops whose compiled form measured no faster than their eager loop (``generic=False``) compile only when asked."""
    check_compile(compile)
    if compile is True or compile is False:
        return compile
    if not generic or compiler_missing(device) is not None:
        return False
    if work >= AUTO_MIN_WORK:
        return True
    with _cache.lock:
        if key is not None and key in _cache.warm:
            return True
        return layer is not None and _cache.eager_seconds.get(layer, 0.0) >= AUTO_EAGER_SECONDS


def spent_eager(layer: Hashable, seconds: float) -> None:
    """Count ``seconds`` of an eager call of ``layer`` under compile="auto" (see :func:`use_compiled`)."""
    with _cache.lock:
        _cache.eager_seconds[layer] = _cache.eager_seconds.get(layer, 0.0) + seconds


def remember(key: Hashable) -> None:
    """Note that "auto" compiled the function ``key`` (:func:`function_key`): its later calls stay compiled."""
    with _cache.lock:
        _cache.warm.add(key)


def function_key(fn: Callable) -> Hashable:
    """What identifies a user function for the cache: its code and closure (tensors by dtype and rank — their
    values are graph inputs — other values by value, unhashable ones by identity); a bound method by its function
    and object; anything else by identity."""
    if isinstance(fn, types.MethodType):
        return ("method", function_key(fn.__func__), id(fn.__self__))
    code = getattr(fn, "__code__", None)
    if code is None:
        return ("object", id(fn))
    cells = []
    for cell in fn.__closure__ or ():
        try:
            v = cell.cell_contents
        except ValueError:  # an empty cell
            cells.append(("empty",))
            continue
        if isinstance(v, torch.Tensor):
            cells.append(("tensor", v.dtype, v.dim(), v.device.type))
        elif isinstance(v, types.FunctionType):
            cells.append(function_key(v))
        else:
            try:
                hash(v)
                cells.append(("value", type(v), v))
            except TypeError:
                cells.append(("id", id(v)))
    return ("function", code, tuple(cells))


def run_compiled(
    name: str, core: Callable, key: Hashable, args: Sequence, dynamic: Sequence[tuple[int, Sequence[int]]] = ()
) -> torch.Tensor:
    """``core(*args)`` compiled (cached under ``key``); raises :class:`CannotCompile` where that is not available.

    Args:
        name: the op, for messages ("window_op2d").
        core: a module-level, traceable function; its compiled copy is cached per ``key``.
        key: everything that changes the traced graph besides tensor sizes (function key, static arguments).
        args: the call's arguments (tensors, functions, constants).
        dynamic: (argument index, dims) pairs: tensor dims whose size changes from call to call (bands, chunks).
    """
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    reason = compiler_missing(device)
    if reason is not None:
        _warn_once(reason, f"{name}: {reason}; running the eager path")
        raise CannotCompile(name, reason)
    full_key = (
        name,
        key,
        device.type,
        torch.is_grad_enabled(),
        tuple((a.dtype, a.requires_grad) for a in args if isinstance(a, torch.Tensor)),
        _BACKEND,
    )
    entry = _entry(name, core, full_key)
    if entry.failed is not None:
        raise CannotCompile(name, entry.failed)
    for i, dims in dynamic:
        for d in dims:
            torch._dynamo.maybe_mark_dynamic(args[i], d)
    t0 = time.perf_counter()
    try:
        y = entry.fn(*args)
    except Exception as e:  # noqa: BLE001 - any compile/trace failure means: run eagerly, and say so
        entry.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        exc = torch._dynamo.exc
        untraceable = isinstance(e, (exc.Unsupported, exc.UserError)) and not isinstance(e, exc.BackendCompilerFailed)
        kind = "Dynamo cannot trace it" if untraceable else "compiling failed"
        _warn_once(
            f"{name}:{id(entry)}", f"{name}: {kind} ({entry.failed[:300]}); running the eager path for this function"
        )
        raise CannotCompile(name, entry.failed) from None
    if entry.calls == 0:
        entry.compile_seconds = time.perf_counter() - t0
        log.info("%s: compiled %s in %.1f s", name, entry.name, entry.compile_seconds)
    entry.calls += 1
    return y


def compile_stats() -> list[dict]:
    """One row per cache entry: op, first-call (compile) seconds, calls, failure reason — for benchmarks and logs."""
    with _cache.lock:
        entries = list(_cache.entries.values())
    return [
        {"name": e.name, "compile_seconds": e.compile_seconds, "calls": e.calls, "failed": e.failed} for e in entries
    ]


def _entry(name: str, core: Callable, key: Hashable) -> _Entry:
    with _cache.lock:
        entry = _cache.entries.get(key)
        if entry is None:
            n = len(_cache.entries)
            # a fresh code object: Dynamo keeps its cache (and recompile limit) per code object
            code = core.__code__.replace(co_name=f"{core.__name__}_{n}")
            copy = types.FunctionType(code, core.__globals__, code.co_name, core.__defaults__, core.__closure__)
            entry = _Entry(torch.compile(copy, fullgraph=True, backend=_BACKEND), f"{name}#{n}")
            _cache.entries[key] = entry
        return entry


def _warn_once(slot: str, message: str) -> None:
    with _cache.lock:
        if slot in _cache.warned:
            return
        _cache.warned.add(slot)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.warning(message)


def _reset() -> None:
    """Forget every cache entry and warning (tests)."""
    with _cache.lock:
        _cache.entries.clear()
        _cache.warned.clear()
        _cache.warm.clear()
        _cache.eager_seconds.clear()
