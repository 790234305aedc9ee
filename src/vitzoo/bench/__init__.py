"""Benchmarks: latency and throughput of the inference paths against peers (timm, OpenVINO, ONNX Runtime, Paddle
Inference), the seed's tables reproduced, and their reports."""

from .runner import CEILING_FIELDS, COMPARE_FIELDS, RECORD_FIELDS, run_bench
from .table import run_table

__all__ = ["CEILING_FIELDS", "COMPARE_FIELDS", "RECORD_FIELDS", "run_bench", "run_table"]
