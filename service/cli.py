"""``roiconv serve [--host H] [--port P]``: run the server with uvicorn, draining on SIGTERM.

On the first SIGTERM (or Ctrl+C) readiness turns 503 and new /convolve requests get 503 while in-flight ones finish
(at most ROICONV_DRAIN_TIMEOUT_S); then uvicorn shuts down. A second signal exits at once.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

import uvicorn

from .config import SettingsError, load_settings
from .protocol import HeadTimeoutProtocol

__all__ = ["DrainingServer", "main"]

log = logging.getLogger("roiconv.cli")


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``roiconv`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "serve")
    parser = argparse.ArgumentParser(prog="roiconv", description="ROI convolution inference server.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP server (settings from ROICONV_* variables)")
    serve.add_argument("--host", help="listen address (default: ROICONV_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: ROICONV_PORT or 8000)")
    serve.add_argument("--log-level", help="critical | error | warning | info | debug")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "log_level": args.log_level}.items() if v}
    from .app import create_app

    try:
        settings = load_settings(**overrides)
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
