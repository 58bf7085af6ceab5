"""The service's benchmarks: ``python -m service.bench`` (the OpenCV floor), ``python -m service.bench.load``
(load test) and ``python -m service.bench.apply`` (``roiconv apply`` and the client)."""
