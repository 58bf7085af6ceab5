"""``roiconv serve [--host H] [--port P]``: run the server with uvicorn, draining on SIGTERM.

On the first SIGTERM (or Ctrl+C) readiness turns 503 and new /convolve requests get 503 while in-flight ones finish
(at most ROICONV_DRAIN_TIMEOUT_S); then uvicorn shuts down. A second signal exits at once.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import time

import uvicorn

from ..server.protocol import HeadTimeoutProtocol
from ..server.settings import SettingsError, load_settings

__all__ = ["DrainingServer", "serve"]

log = logging.getLogger("roiconv.serve")


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT drains the app before the listener closes."""

    def __init__(self, config: uvicorn.Config, state) -> None:
        super().__init__(config)
        self.state = state
        self.drain_started: float | None = None

    def handle_exit(self, sig: int, frame) -> None:
        if self.drain_started is None and sig in (signal.SIGTERM, signal.SIGINT):
            self.drain_started = time.monotonic()
            self.state.draining = True
            log.info("signal %d: draining (up to %.1f s)", sig, self.state.settings.drain_timeout_s)
            return
        self.should_exit = True
        self.force_exit = self.drain_started is not None

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.should_exit:
            idle = not self.state.busy  # admitted work only: requests answered 503 meanwhile do not count
            if idle or time.monotonic() - self.drain_started > self.state.settings.drain_timeout_s:
                log.info("drained" if idle else "drain timeout passed; shutting down")
                self.should_exit = True
        return await super().on_tick(counter)


def _port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (bound by another process, bad address), or None when it can."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve listen address {host!r}: {exc}"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            probe.bind(addr)
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror or exc} (is another server running there?)"
    return None


def serve(args: argparse.Namespace) -> int:
    """``roiconv serve``: settings from ROICONV_* (overridden by the flags), the port checked, then uvicorn."""
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "log_level": args.log_level}.items() if v}
    from ..server.app import create_app

    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"roiconv: {exc}", file=sys.stderr)
        return 2
    why = _port_taken(settings.host, settings.port)
    if why is not None:
        print(f"roiconv: {why}; choose another with --port or ROICONV_PORT", file=sys.stderr)
        return 1
    try:
        app = create_app(settings)
    except SettingsError as exc:
        print(f"roiconv: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        access_log=False,
        timeout_keep_alive=settings.keepalive_timeout_s,
        http=HeadTimeoutProtocol,  # also closes connections that never finish their request head
    )
    DrainingServer(config, app.state.roiconv).run()
    return 0
