"""Constants a cost model needs to choose the fused kernel, and how to measure them.

Not measured: no GPU has run this code. Every value below is None until someone runs
``python -m convcore.bench fused`` on a CUDA machine: its "cost constants" block prints each of these, measured on
that machine, to be copied here together with the machine and the date. A cost model must treat None as "unknown"
(and so never pick the fused kernel on its own).

The model these constants serve, for one call with P active output positions, O outputs, C/groups inputs per
group and a kh×kw kernel (``macs = P * O * (C / groups) * kh * kw``)::

    fused_seconds = call_seconds + macs * seconds_per_mac * (scatter_factor if the ROI is scattered else 1)
                    + (out_bytes * zero_fill_seconds_per_byte if the output is fresh else 0)

compared with the dense conv's ``dense_macs * cudnn_seconds_per_mac`` and the other strategies' own models.
"""

from __future__ import annotations

FUSED_COST_CONSTANTS: dict[str, float | None] = {
    # Fixed cost of one call: the nonzero() that builds the active list (one host sync) and the kernel launch.
    # Measured as the time of a call with one active pixel and out= given. Not measured: no GPU has run this code.
    "call_seconds": None,
    # Kernel time per multiply-accumulate at a box ROI: (t(box 10%) - call_seconds) / macs, out= given.
    # Not measured: no GPU has run this code.
    "seconds_per_mac": None,
    # t(scattered 1%) / t(box 1%) of the fused kernel: scattered positions share fewer input rows between
    # neighbours in a block. Not measured: no GPU has run this code.
    "scatter_factor": None,
    # Filling a fresh output with zeros, per byte (torch.zeros on the device). Not measured: no GPU has run this code.
    "zero_fill_seconds_per_byte": None,
    # cuDNN's F.conv2d time per multiply-accumulate over the whole output at the benchmark's shape and dtype.
    # Not measured: no GPU has run this code.
    "cudnn_seconds_per_mac": None,
}

MEASURED_ON: str | None = None  # the device, dtype and date of the measurement; None: not measured
