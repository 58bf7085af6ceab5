"""GPU kernels for the ROI ops (Triton). ``triton`` is imported on the first kernel call, not here.

:func:`fused_roi_conv2d` (mask in, differentiable) and :func:`fused_conv2d_active` (active list in, writes into
``out``) compute a convolution only at active output positions in one fused kernel. They run on CUDA tensors, or on
CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, for tests).
"""

from .roi_conv import PADDING_MODES, fused_available, fused_conv2d_active, fused_roi_conv2d

__all__ = ["PADDING_MODES", "fused_available", "fused_conv2d_active", "fused_roi_conv2d"]
