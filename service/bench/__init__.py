"""The service's benchmarks: ``python -m service.bench`` (the OpenCV floor), ``python -m service.bench.load``
(load test), ``python -m service.bench.apply`` (``roiconv apply`` and the client), ``python -m
service.bench.abuse`` (the abuse probes: decode bombs, slow work, the upload trickle, the client) and
``python -m service.bench.jpeg`` (JPEG block edits beside the OpenCV floor)."""
