"""``roiconv``: ``serve`` and ``apply``."""

from .main import main

__all__ = ["main"]
