"""Request accounting: every /convolve and /detect request counted exactly once, whatever happened to it.

An ASGI middleware around the app: it gives each request a :class:`~service.server.admission.Record` (the route
fills in the filter label), counts a request whose client went away before any answer was decided as "499" (nginx's
"client closed request", logged at info), turns an exception that escaped everything else into a JSON 500, and then
counts ``roiconv_requests_total{filter, status}`` and the duration once.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admission import AppState, Record
from .errors import ApiError, error_response

__all__ = ["RequestAccounting"]

log = logging.getLogger("roiconv.requests")


class RequestAccounting:
    """Counts each request to one of ``paths`` once, by filter and final status (see the module docstring)."""

    def __init__(self, app: ASGIApp, state: AppState, paths: tuple[str, ...] = ("/convolve", "/detect")) -> None:
        self.app, self.state, self.paths = app, state, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        record = Record()
        scope["roiconv.record"] = record
        self.state.requests.add(record)
        status: int | None = None
        gone = False

        async def watch_receive() -> Message:
            nonlocal gone
            message = await receive()
            gone = gone or (message["type"] == "http.disconnect" and status is None)
            return message

        async def watch_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, watch_receive, watch_send)
        except Exception:
            if not gone:
                log.exception("unexpected error in %s (filter %s)", scope["path"], record.filter)
                if status is None:
                    await error_response(ApiError(500, "internal_error", "unexpected server error"))(
                        scope, receive, send
                    )
                    status = 500
        finally:
            self.state.requests.discard(record)
            label = "499" if status is None else str(status)  # an answer decided before the client left counts
            if label == "499":
                log.info("client closed the connection before the answer (%s)", scope["path"])
            self.state.metrics.requests.labels(filter=record.filter, status=label).inc()
            self.state.metrics.request_duration.observe(time.perf_counter() - record.started)
