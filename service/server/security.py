"""Response headers that keep the page from being framed or sniffed, and an optional Host check.

Every response carries ``X-Content-Type-Options: nosniff``, ``Content-Security-Policy: frame-ancestors 'none'`` and
``X-Frame-Options: DENY``: the ROI page (``/``) and ``/docs`` run scripts that call the API, so no other site may
frame them. With ROICONV_ALLOWED_HOSTS set (e.g. ``localhost,127.0.0.1`` on a server bound to loopback), a request
whose Host header names another host is answered 400 before anything runs: a page on another site that rebinds its
DNS name to 127.0.0.1 then reaches the server under its own name and is refused. Unset, any Host is served (behind a
proxy, the proxy checks it).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response

__all__ = ["HEADERS", "SecurityHeaders", "host_name"]

HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
]


def host_name(header: str) -> str:
    """The host of a Host header, without its port ("[::1]:8000" -> "::1"), lower-cased."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class SecurityHeaders:
    """Adds :data:`HEADERS` to every HTTP response; 400 for a Host outside ``allowed`` (when not empty)."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] = frozenset()) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        if self.allowed:
            host = host_name(dict(scope["headers"]).get(b"host", b"").decode("latin-1"))
            if host not in self.allowed:
                reason = f"Host {host!r} is not served here (ROICONV_ALLOWED_HOSTS: {', '.join(sorted(self.allowed))})"
                response = error_response(ApiError(400, "bad_host", reason, "Host"))
                return await response(scope, receive, with_headers)
        await self.app(scope, receive, with_headers)
