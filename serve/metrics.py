"""Prometheus metrics of one server (its own registry, so several apps can live in a process).

Exposed at ``GET /metrics`` in the text exposition format by ``prometheus-client``.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "ServeMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServeMetrics:
    """``qbnn_requests_total{model,code}``, ``qbnn_request_errors_total{model,code}``,
    ``qbnn_request_latency_seconds{model}`` (histogram, seconds), ``qbnn_batch_rows{model}``
    (rows per ``session.run``), ``qbnn_inferred_rows_total{model}``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("qbnn_requests", "Inference requests answered, by HTTP status",
                                ["model", "code"], registry=r)  # fmt: skip
        self.errors = Counter("qbnn_request_errors", "Inference requests answered with an error",
                              ["model", "code"], registry=r)  # fmt: skip
        self.latency = Histogram("qbnn_request_latency_seconds", "Inference request latency",
                                 ["model"], buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.batch_rows = Histogram("qbnn_batch_rows", "Rows per merged session.run",
                                    ["model"], buckets=_BATCH_BUCKETS, registry=r)  # fmt: skip
        self.rows = Counter("qbnn_inferred_rows", "Input rows inferred", ["model"], registry=r)

    def observe(self, model: str, code: int, seconds: float) -> None:
        """Count one answered inference request."""
        self.requests.labels(model, str(code)).inc()
        if code >= 400:
            self.errors.labels(model, str(code)).inc()
        else:
            self.latency.labels(model).observe(seconds)

    def batch(self, model: str, rows: int) -> None:
        """Record one ``session.run`` of ``rows`` rows."""
        self.batch_rows.labels(model).observe(rows)
        self.rows.labels(model).inc(rows)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
