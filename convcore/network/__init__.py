"""Whole networks run only inside a region of interest: :func:`roi_network`."""

from .module import LayerRegion, NetworkPlan, RoiNetwork, roi_network

__all__ = ["LayerRegion", "NetworkPlan", "RoiNetwork", "roi_network"]
