"""The server's Prometheus metrics (GET /metrics), in a registry of their own.

They are recorded in the process that serves: the HTTP side and the model worker share it, so no multiprocess
collector is needed (with --workers N, each worker process has its own, and a scrape sees the one that answered).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the route)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # no *_created series: they double the page and say only when the process started

REGISTRY = CollectorRegistry()
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter("vitzoo_serve_requests", "HTTP requests answered, by route and status code",
                   ["route", "code"], registry=REGISTRY)  # fmt: skip
ERRORS = Counter("vitzoo_serve_errors", "Requests answered with an error, by kind (empty_body, not_an_image, ...)",
                 ["kind"], registry=REGISTRY)  # fmt: skip
BATCH_SIZE = Histogram("vitzoo_serve_batch_size", "Images per model call (dynamic batching)",
                       buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128), registry=REGISTRY)  # fmt: skip
QUEUE_SECONDS = Histogram("vitzoo_serve_queue_seconds", "Time a request waited from being queued to its batch's start",
                          buckets=TIME_BUCKETS, registry=REGISTRY)  # fmt: skip
MODEL_SECONDS = Histogram("vitzoo_serve_model_seconds", "Model time per batch (forward, softmax, top-k)",
                          buckets=TIME_BUCKETS, registry=REGISTRY)  # fmt: skip
PREPROCESS_SECONDS = Histogram("vitzoo_serve_preprocess_seconds", "Decode and preprocessing time per image",
                               buckets=TIME_BUCKETS, registry=REGISTRY)  # fmt: skip
REQUEST_SECONDS = Histogram("vitzoo_serve_request_seconds", "Time from the request's arrival to its answer, by route",
                            ["route"], buckets=TIME_BUCKETS, registry=REGISTRY)  # fmt: skip
READY = Gauge("vitzoo_serve_ready", "1 when the model is loaded and warm and the server not draining",
              registry=REGISTRY)  # fmt: skip


def render() -> bytes:
    return generate_latest(REGISTRY)
