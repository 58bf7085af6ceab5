"""The HTTP routes, one APIRouter per concern: convolve (:mod:`.convolve`); catalog, health, metrics and docs
(:mod:`.meta`)."""

from .convolve import convolve_router, discard_body
from .detect import detect_router
from .meta import catalog_router, docs_router, health_router, metrics_router

__all__ = ["discard_body", "routers"]

routers = [convolve_router, detect_router, catalog_router, health_router, metrics_router, docs_router]
