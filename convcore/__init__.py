"""convcore: convolutions computed only inside a region of interest, and window ops conv2d cannot express."""

from .functional import conv2d_reference, roi_conv2d, roi_conv2d_batch
from .nn import RoIConv2d
from .plan import RoiPlan, plan_roi, set_workspace_limit, workspace_limit

__version__ = "0.1.0"

__all__ = [
    "RoIConv2d",
    "RoiPlan",
    "conv2d_reference",
    "plan_roi",
    "roi_conv2d",
    "roi_conv2d_batch",
    "set_workspace_limit",
    "workspace_limit",
]
