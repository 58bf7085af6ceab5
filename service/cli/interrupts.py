"""Ctrl-C in ``roiconv apply``: the first stops new files from starting and lets the files in progress finish (each
is written whole, through a temporary file renamed over its output), the second quits at once; the run then prints
its summary and exits with status 130.

:func:`interrupts` turns SIGINT into an event for the in-process run; :func:`loop_interrupts` does the same on the
event loop of a ``--server`` run, with a :class:`ClosingGate` (the ``--concurrency`` gate, closed for good) and
:class:`CancellableCalls` (the client, its calls in flight cancelled: nothing of a file is written while its call is
in flight).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CancellableCalls", "ClosingGate", "Interrupted", "interrupts", "loop_interrupts"]


class Interrupted(Exception):
    """Ctrl-C: the run stopped starting files; ``results`` holds the files finished (each written whole)."""

    def __init__(self, results: dict[Path, str]) -> None:
        super().__init__("interrupted")
        self.results = results


@contextmanager
def interrupts() -> Iterator[threading.Event]:
    """Within this block the first Ctrl-C (SIGINT) sets the yielded event instead of raising: no new file starts,
    the files in progress finish (each written whole); a second one raises KeyboardInterrupt."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("roiconv apply: interrupted, finishing the files in progress (Ctrl-C again to quit now)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


class ClosingGate(asyncio.Semaphore):
    """The ``--concurrency`` gate, closed for good by a Ctrl-C: a file that has not passed it never starts (its
    task ends cancelled)."""

    closed = False

    async def __aenter__(self) -> None:
        await super().__aenter__()
        if self.closed:
            self.release()
            raise asyncio.CancelledError


class CancellableCalls:
    """The client, its calls in flight cancelled together by a Ctrl-C (nothing of a file is written while its call
    is in flight, so a cancelled file leaves nothing behind)."""

    def __init__(self, client) -> None:
        self.client, self.calls = client, set()

    def __getattr__(self, name: str):
        method = getattr(self.client, name)

        async def call(*args, **kwargs):
            task = asyncio.ensure_future(method(*args, **kwargs))
            self.calls.add(task)
            try:
                return await task
            finally:
                self.calls.discard(task)

        return call


@contextmanager
def loop_interrupts(gate: ClosingGate, client: CancellableCalls, runs: list[asyncio.Future]) -> Iterator[None]:
    """The event loop's Ctrl-C: the first closes the gate and cancels the calls in flight (files being written
    finish), the second cancels everything (a file is written whole or not at all)."""
    loop = asyncio.get_running_loop()

    def handler() -> None:
        if gate.closed:
            for run in runs:
                run.cancel()
            return
        gate.closed = True
        for call in list(client.calls):
            call.cancel()
        print(
            "roiconv apply: interrupted, finishing the files being written (Ctrl-C again to quit now)", file=sys.stderr
        )

    try:
        loop.add_signal_handler(signal.SIGINT, handler)
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signals on this platform
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
