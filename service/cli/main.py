"""``roiconv``: ``serve`` (:mod:`.serve`) and ``apply`` (:mod:`.apply`); alone it prints the help and exits with
status 2. Each sub-command imports only what it needs (``apply`` in process needs neither uvicorn nor FastAPI)."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``roiconv`` command line: ``serve`` and ``apply``."""
    parser = argparse.ArgumentParser(prog="roiconv", description="ROI convolution: a server and a batch tool.")
    sub = parser.add_subparsers(dest="command", metavar="{serve,apply}")
    serve = sub.add_parser("serve", help="run the HTTP server (settings from ROICONV_* variables)")
    serve.add_argument("--host", help="listen address (default: ROICONV_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: ROICONV_PORT or 8000)")
    serve.add_argument("--log-level", help="critical | error | warning | info | debug")
    from .apply import add_arguments

    add_arguments(
        sub.add_parser(
            "apply",
            help="filter the ROIs of image files, in process or through a server",
            description="Filter the ROIs of image files into --out, keeping names and formats.",
        )
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``roiconv`` console script; without a subcommand it prints the help and returns 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["apply"]:  # before NumPy loads: the worker processes are the parallelism
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "apply":
        from .apply import run

        return run(args)
    from .serve import serve

    return serve(args)
