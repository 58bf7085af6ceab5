"""Former home of the argument checks and the geometry: kept so that ``convcore._checks.conv_geometry`` still
imports. Use :mod:`convcore.geometry` and :mod:`convcore.checks`."""

from .checks import *  # noqa: F401,F403
from .checks import __all__ as _checks_all
from .geometry import ConvGeometry, conv_geometry  # noqa: F401

__all__ = [*_checks_all, "ConvGeometry", "conv_geometry"]
