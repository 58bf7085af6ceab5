"""The HTTP routes, one router per resource."""

from .convolve import discard_body, routers

__all__ = ["discard_body", "routers"]
