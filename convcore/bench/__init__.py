"""Benchmarks: ``python -m convcore.bench [conv|ops|network|fused]`` (see :mod:`convcore.bench.__main__`).

Everything is measured side by side in one process, the methods of a case interleaved round by round
(:func:`convcore.bench.measure.measure`), so the ratios hold on a shared, noisy machine; absolute times are context
only. ``--busy K`` measures every case twice, quiet and then with K processes spinning on the CPU.
"""
