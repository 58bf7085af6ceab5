"""Prometheus metrics, registered on a ``CollectorRegistry`` that the app owns (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
_RATIO_BUCKETS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)


class Metrics:
    """Every metric of the server, in base units; ``registry`` is injected so tests get fresh counters."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "roiconv_requests", "Finished /convolve and /detect requests.", ["filter", "status"], registry=r
        )  # exposed as roiconv_requests_total
        self.request_duration = Histogram(
            "roiconv_request_duration_seconds", "Time from arrival to response.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "roiconv_queue_wait_seconds", "Time a request waited for a worker.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.compute = Histogram(
            "roiconv_compute_seconds",
            "Time a batch spent on its device.",
            ["device"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram("roiconv_batch_size", "Requests per batch.", buckets=_BATCH_BUCKETS, registry=r)
        self.roi_coverage = Histogram(
            "roiconv_roi_coverage_ratio", "Fraction of the image inside the ROI.", buckets=_RATIO_BUCKETS, registry=r
        )
        self.windows_computed = Counter(
            "roiconv_windows_computed", "Output positions computed (per channel).", registry=r
        )
        self.windows_skipped = Counter(
            "roiconv_windows_skipped", "Output positions skipped because they lie outside the ROI.", registry=r
        )
        self.queue_depth = Gauge("roiconv_queue_depth", "Requests waiting for a worker.", registry=r)
        self.lane_queue_depth = Gauge(
            "roiconv_lane_queue_depth", "Requests waiting for a thread of their CPU lane.", ["lane"], registry=r
        )
        self.lane_running = Gauge(
            "roiconv_lane_running", "Requests on a thread of their CPU lane.", ["lane"], registry=r
        )
        self.inflight = Gauge("roiconv_inflight_requests", "Requests being computed.", ["device"], registry=r)
        self.rejected = Counter("roiconv_rejected", "Requests refused, by reason.", ["reason"], registry=r)
