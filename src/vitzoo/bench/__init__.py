"""Benchmarks: latency and throughput of the inference paths against peers (timm, OpenVINO, ONNX Runtime, Paddle
Inference), the seed's tables reproduced, and their reports."""

from .runner import COMPARE_FIELDS, RECORD_FIELDS, bench

__all__ = ["COMPARE_FIELDS", "RECORD_FIELDS", "bench"]
