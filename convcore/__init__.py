"""convcore: convolutions computed only inside a region of interest, and window ops conv2d cannot express."""

from .adaptive import adaptive_conv2d, adaptive_gaussian_blur2d, dynamic_conv2d
from .algebraic import ADDERNET_GRAD, distance_conv2d, offset_conv2d, quadratic_conv2d
from .engine import set_workspace_limit, workspace_limit
from .functional import conv2d_reference, roi_conv2d, roi_conv2d_batch
from .geometry import ConvGeometry, conv_geometry, conv_output_size, resolve_padding
from .layers import DistanceConv2d, DynamicConv2d, MorphConv2d, OffsetConv2d, QuadraticConv2d
from .morph import morph_conv2d
from .network import IncrementalNetwork, LayerRegion, NetworkPlan, RoiNetwork, roi_network
from .nn import RoIConv2d
from .plan import RoIPlan, RoiPlan, plan_roi
from .roi import RectRoi
from .window import window_op2d

__version__ = "0.1.0"

__all__ = [
    "ADDERNET_GRAD",
    "ConvGeometry",
    "DistanceConv2d",
    "DynamicConv2d",
    "IncrementalNetwork",
    "LayerRegion",
    "MorphConv2d",
    "NetworkPlan",
    "OffsetConv2d",
    "QuadraticConv2d",
    "RectRoi",
    "RoIConv2d",
    "RoIPlan",
    "RoiNetwork",
    "RoiPlan",
    "adaptive_conv2d",
    "adaptive_gaussian_blur2d",
    "conv2d_reference",
    "conv_geometry",
    "conv_output_size",
    "distance_conv2d",
    "dynamic_conv2d",
    "morph_conv2d",
    "offset_conv2d",
    "plan_roi",
    "quadratic_conv2d",
    "resolve_padding",
    "roi_conv2d",
    "roi_conv2d_batch",
    "roi_network",
    "set_workspace_limit",
    "window_op2d",
    "workspace_limit",
]
