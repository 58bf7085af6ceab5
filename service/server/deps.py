"""The routes' dependencies: the app's state (``StateDep``) and the request's accounting record."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .admission import AppState, Record

__all__ = ["StateDep", "get_state", "record_of"]


def get_state(request: Request) -> AppState:
    """The app's :class:`AppState` (a FastAPI dependency)."""
    return request.app.state.roiconv


StateDep = Annotated[AppState, Depends(get_state)]


def record_of(request: Request) -> Record:
    """The accounting record of this request (a fresh one when no accounting middleware runs)."""
    return request.scope.setdefault("roiconv.record", Record())
