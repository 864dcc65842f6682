"""Prometheus metrics of DESIGN's table, in a registry owned by each app instance.

Labels carry only bounded, non-identifying values: endpoint templates, loaded
resolutions (or ``"none"`` / ``"multi"``), HTTP status codes, stage names, error codes and
model identity. Buckets span 1 ms to 30 s.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("decode", "gate", "preprocess", "queue", "inference", "postprocess")


class Metrics:
    """Every series the service exports (``sharpcxr_*``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "sharpcxr_request_duration_seconds",
            "Wall time of a request, upload to response",
            ["endpoint", "resolution", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "sharpcxr_stage_duration_seconds",
            "Wall time of one pipeline stage of one image",
            ["stage", "resolution"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "sharpcxr_requests",
            "Requests answered",
            ["endpoint", "resolution", "status"],
            registry=r,
        )
        self.errors = Counter(
            "sharpcxr_errors",
            "Error responses by stable error code",
            ["endpoint", "code"],
            registry=r,
        )
        self.batch_size = Histogram(
            "sharpcxr_batch_size",
            "Images per inference batch",
            ["resolution"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "sharpcxr_queue_depth",
            "Requests waiting for inference",
            ["resolution"],
            registry=r,
        )
        # The limit beside the depth, so alerts and dashboards read the service's own
        # MAX_QUEUE instead of a copy that can drift from it.
        self.queue_capacity = Gauge(
            "sharpcxr_queue_capacity",
            "Requests that may wait for inference before 503 overloaded (MAX_QUEUE)",
            ["resolution"],
            registry=r,
        )
        self.assessments = Counter(
            "sharpcxr_assessments",
            "Answers by assessment status (assessed, not_assessable, refused) and reason "
            "(a gate code, out_of_distribution, or none); one count per reason",
            ["resolution", "status", "reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "sharpcxr_model_info",
            "Loaded model (value 1)",
            ["resolution", "name", "version", "backend"],
            registry=r,
        )
        # A gauge beside /readyz so that Prometheus, which scrapes /metrics and not
        # /readyz, can alert on a process that is up but does not admit requests.
        self.ready = Gauge(
            "sharpcxr_ready",
            "1 when the service admits requests (models loaded), else 0",
            registry=r,
        )

        self.draining = Gauge(
            "sharpcxr_draining",
            "1 after SIGTERM while accepted requests finish (new ones get 503), else 0",
            registry=r,
        )
        self.in_flight = Gauge(
            "sharpcxr_requests_in_flight",
            "Requests accepted and not yet answered (/v1, /dicomweb, the viewer)",
            registry=r,
        )
        self.decoder_failures = Counter(
            "sharpcxr_decoder_failures",
            "Decode workers lost on an image (crashed, timeout, memory) and replaced",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "sharpcxr_rate_limited",
            "Requests answered 429 by the per-key rate limit",
            ["endpoint"],
            registry=r,
        )

        self.jobs = Counter(
            "sharpcxr_jobs",
            "PACS jobs by how the instance came (stow, dimse) and what became of it "
            "(received, duplicate, done, refused, failed, retried)",
            ["source", "state"],
            registry=r,
        )
        self.jobs_pending = Gauge(
            "sharpcxr_jobs_pending",
            "PACS jobs received and not finished (queued or processing)",
            registry=r,
        )
        self.outbox_depth = Gauge(
            "sharpcxr_outbox_depth",
            "Result objects waiting for delivery (every destination)",
            registry=r,
        )
        self.deliveries = Counter(
            "sharpcxr_deliveries",
            "Delivery attempts of result objects by destination (stow, dimse) and outcome "
            "(delivered, retry, failed)",
            ["destination", "outcome"],
            registry=r,
        )

    def count_assessment(self, resolution: int, status: str, reason: str) -> None:
        self.assessments.labels(str(resolution), status, reason).inc()

    def observe_stages(self, resolution: int, seconds: dict[str, float]) -> None:
        label = str(resolution)
        for stage, value in seconds.items():
            if stage in STAGES:
                self.stage_duration.labels(stage, label).observe(value)
