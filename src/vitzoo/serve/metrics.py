"""The server's Prometheus metrics (GET /metrics), in a registry of their own.

They are all recorded in the HTTP process: the model worker sends each answer back with its batch's size and times,
and the HTTP side records them, so one process holds every number and no multiprocess collector is needed.
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
READY = Gauge("vitzoo_serve_ready", "1 when a model worker is loaded and warm", registry=REGISTRY)
WORKERS_READY = Gauge("vitzoo_serve_workers_ready", "Model workers loaded and warm", registry=REGISTRY)


def record_batch(answer: dict) -> None:
    """Batch numbers arrive with each of the batch's answers: count the batch once, with its first answer."""
    QUEUE_SECONDS.observe(answer["queue_s"])
    if answer["batch_position"] == 0:
        BATCH_SIZE.observe(answer["batch_size"])
        MODEL_SECONDS.observe(answer["model_s"])


def render() -> bytes:
    return generate_latest(REGISTRY)
