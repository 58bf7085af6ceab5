"""The routes' dependencies: the app's state (``StateDep``), the API key check and the request's accounting record."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from .admission import AppState, Record
from .errors import ApiError

__all__ = ["StateDep", "get_state", "record_of", "require_key"]


def get_state(request: Request) -> AppState:
    """The app's :class:`AppState` (a FastAPI dependency)."""
    return request.app.state.roiconv


StateDep = Annotated[AppState, Depends(get_state)]


def record_of(request: Request) -> Record:
    """The accounting record of this request (a fresh one when no accounting middleware runs)."""
    return request.scope.setdefault("roiconv.record", Record())


def require_key(request: Request, state: StateDep) -> None:
    """401 unless ``X-API-Key`` (or ``Authorization: Bearer``) matches ROICONV_API_KEY (when one is set); compared
    in constant time."""
    key = state.settings.api_key
    if key is not None:
        bearer = request.headers.get("authorization", "")
        given = request.headers.get("x-api-key", bearer[7:] if bearer[:7].lower() == "bearer " else "").encode()
        if not hmac.compare_digest(given, key.get_secret_value().encode()):
            raise ApiError(401, "unauthorized", "missing or wrong X-API-Key header", "X-API-Key")
