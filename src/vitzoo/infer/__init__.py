"""Inference paths: a model at a precision (fp32, bf16, fp16, int8) through a backend (eager, fast, compile,
cudagraph, onnxruntime, openvino), built by `build_path` and checked against fp32 eager. eval, predict, bench and
serve all run through it. See `build.py` (the backends) and `paths.py` (what a path is)."""

from .build import build_path
from .calibration import calibration_images
from .fidelity import lively_init_, logits_cosine, sample_photos
from .paths import (
    BACKENDS, DEFAULT_BACKEND, PRECISIONS, SUPPORTED, InferencePath, PathUnavailable, Runner, cpu_has_bf16, image_shape,
)  # fmt: skip

__all__ = [
    "BACKENDS", "DEFAULT_BACKEND", "PRECISIONS", "SUPPORTED", "InferencePath", "PathUnavailable", "Runner",
    "build_path", "calibration_images", "cpu_has_bf16", "image_shape", "lively_init_", "logits_cosine", "sample_photos",
]  # fmt: skip
