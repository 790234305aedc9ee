"""OpenVINO on CPU for an exported vitzoo model: fp32, bf16, and NNCF static post-training int8.

The input is vitzoo's ONNX export (`images` [batch, 3, H, W] -> `logits`), which OpenVINO reads directly, or an
`openvino.Model`. Choices below were measured on ViT_base_patch16_224 and DeiT_small_patch16_224 (2 threads, AVX512
VNNI + BF16, no AMX); the study and its numbers: benchmarks/cpu_engines.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16", "int8")
# OpenVINO's names for the inference precision hint
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def unavailable_reason(precision: str) -> str | None:
    """None when the openvino backend can run `precision` here, else a one-line reason."""
    if precision not in PRECISIONS:
        return f"the openvino backend runs {', '.join(PRECISIONS)}, not {precision!r}"
    try:
        import openvino
    except ImportError:
        return "openvino is not installed (pip install openvino)"
    if precision == "int8":
        try:
            import nncf  # noqa: F401
        except ImportError:
            return "int8 needs NNCF for the quantization (pip install nncf)"
    if precision == "bf16":
        # without native bf16 matmuls OpenVINO emulates bf16, slower than fp32; "BF16" is listed only with
        # AVX512-BF16 or AMX
        if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            return "bf16 needs a CPU with AVX512-BF16 or AMX (OpenVINO's CPU does not list BF16)"
    return None


def _read(model):
    import openvino

    if isinstance(model, (str, Path)):
        return openvino.Core().read_model(str(model))
    return model


def _calibration_items(calibration) -> list[np.ndarray]:
    """One [1, C, H, W] float32 array per image: NNCF's `subset_size` counts dataset items, and per-image items keep
    its per-sample statistics (the mean over samples of each min and max) what NNCF was tuned with."""
    if isinstance(calibration, torch.Tensor):
        calibration = [calibration]
    items = []
    for batch in calibration:
        batch = batch.detach().float().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch, np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        items.extend(batch[i : i + 1] for i in range(len(batch)))
    if not items:
        raise ValueError("calibration holds no images")
    return items


def quantize_int8(model_or_path, calibration, out_path: str | Path | None = None, subset_size: int = 300):
    """NNCF static post-training int8 of an ONNX file or `openvino.Model`: weights symmetric per output channel,
    activations per tensor with ranges from `calibration` (numpy float32 batches [B, C, H, W], or a tensor of
    images), at most `subset_size` images. Returns the quantized `openvino.Model`; written as IR (.xml + .bin) to
    `out_path` when given."""
    import nncf
    import openvino

    items = _calibration_items(calibration)
    quantized = nncf.quantize(
        _read(model_or_path), nncf.Dataset(items), subset_size=min(subset_size, len(items)),
        model_type=nncf.ModelType.TRANSFORMER,
    )  # fmt: skip
    if out_path is not None:
        # compress_to_fp16 off: the layers left in float keep their fp32 weights
        openvino.save_model(quantized, str(out_path), compress_to_fp16=False)
    return quantized


class OpenVINORunner:
    """`runner(images) -> logits`: an exported model compiled by OpenVINO for the CPU, torch tensors in and out.

    `precision` "fp32" or "bf16" sets the inference precision; "int8" first quantizes with `calibration` (see
    `quantize_int8`). `threads` defaults to torch's thread count, for a like-for-like comparison.
    """

    def __init__(self, model, precision: str = "fp32", threads: int | None = None, calibration=None):
        import openvino

        reason = unavailable_reason(precision)
        if reason is not None:
            raise RuntimeError(reason)
        if precision == "int8" and calibration is None:
            raise ValueError("int8 needs calibration images (calibration=...) for NNCF's activation ranges")
        self.precision = precision
        self.core = openvino.Core()
        self.model = quantize_int8(model, calibration) if precision == "int8" else _read(model)
        self.config = {
            # explicit even for fp32: OpenVINO's CPU default is bf16 wherever the CPU has it
            "INFERENCE_PRECISION_HINT": _OV_PRECISION.get(precision, "f32"),
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",
        }
        self._compiled = {}  # batch size -> infer request of a static-shape compile

    def _request(self, shape):
        request = self._compiled.get(shape)
        if request is None:
            model = self.model.clone()
            model.reshape({0: list(shape)})
            request = self.core.compile_model(model, "CPU", self.config).create_infer_request()
            self._compiled[shape] = request
        return request

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().float().cpu().contiguous().numpy()
        out = self._request(tuple(x.shape)).infer({0: x})[0]
        return torch.from_numpy(np.array(out, dtype=np.float32))  # a copy: the request reuses its output buffer
