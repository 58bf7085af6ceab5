"""Whole networks run only inside a region of interest, or only where their input changed: :func:`roi_network`."""

from .incremental import IncrementalNetwork
from .module import LayerRegion, NetworkPlan, RoiNetwork, roi_network

__all__ = ["IncrementalNetwork", "LayerRegion", "NetworkPlan", "RoiNetwork", "roi_network"]
