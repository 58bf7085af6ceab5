"""API errors: one exception type and one JSON body shape, ``{"error", "field", "reason", "errors"}``."""

from __future__ import annotations

from http import HTTPStatus

from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from ..imaging.spec import field_errors

__all__ = ["RETRY", "ApiError", "BodyTooLarge", "error_response", "from_http_error", "from_validation"]

RETRY = {"Retry-After": "1"}  # the header of an answer that asks the client to come back (429, 503)


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a request body passes MAX_BODY_BYTES."""


class ApiError(Exception):
    """An error response: HTTP ``status``, a short ``code``, the ``field`` at fault and a ``reason``."""

    def __init__(
        self,
        status: int,
        code: str,
        reason: str,
        field: str | None = None,
        *,
        errors: list[dict] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason, self.field = status, code, reason, field
        self.errors = errors or [{"field": field, "reason": reason}]
        self.headers = headers or {}


def error_response(err: ApiError) -> JSONResponse:
    body = {"error": err.code, "field": err.field, "reason": err.reason, "errors": err.errors}
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def from_validation(exc: ValidationError, prefix: str) -> ApiError:
    """A 422 naming each bad field as a dotted path (``spec.filter.ksize``) with pydantic's reason."""
    errors = field_errors(exc, prefix)
    first = errors[0] if errors else {"field": prefix, "reason": "invalid"}
    return ApiError(422, "invalid_request", first["reason"], first["field"], errors=errors)


def from_http_error(exc: HTTPException) -> ApiError:
    """Starlette's own errors (404, 405, ...) in the documented shape; 405 keeps its ``Allow`` header."""
    try:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    except ValueError:
        code = "http_error"
    return ApiError(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))
