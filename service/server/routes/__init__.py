"""The HTTP routes, one router per resource."""

from .convolve import discard_body
from .convolve import routers as _convolve_routers
from .detect import detect_router

routers = [*_convolve_routers, detect_router]

__all__ = ["discard_body", "routers"]
