"""OpenVINO on CPU for an exported vitzoo model: fp32, bf16, and NNCF static post-training int8.

Takes vitzoo's ONNX export (`images` [batch, 3, H, W] -> `logits`, which OpenVINO reads directly) or an
`openvino.Model`. The configuration below (vitzoo's trimmed export, NNCF's transformer scheme with SmoothQuant, bf16
for what int8 leaves in float, TBB's auto partitioner at batch 1, one static-shape compile per batch size) is the
fastest of the candidates measured at equal fidelity; the study, with its figures and versions, is in
benchmarks/openvino_study.md.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from .quiet import stdout_to_stderr

PRECISIONS = ("fp32", "bf16", "int8")


def unavailable_reason(precision: str) -> str | None:
    """None when the openvino backend can run `precision` here, else a one-line reason."""
    if precision not in PRECISIONS:
        return f"the openvino backend runs {', '.join(PRECISIONS)}, not {precision!r}"
    try:
        import openvino
    except ImportError:
        return "openvino is not installed (pip install openvino)"
    # found, not imported: importing NNCF takes seconds, and only quantize_int8 needs it
    if precision == "int8" and importlib.util.find_spec("nncf") is None:
        return "int8 needs NNCF for the quantization (pip install nncf)"
    if precision == "bf16" and not _native_bf16(openvino.Core()):
        return "bf16 needs a CPU with AVX512-BF16 or AMX (OpenVINO's CPU lists no BF16 capability)"
    return None


def _native_bf16(core) -> bool:
    # OpenVINO lists "BF16" only where the CPU computes it natively; elsewhere bf16 would be emulated, slower than fp32
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _read(model):
    import openvino

    if isinstance(model, (str, Path)):
        return openvino.Core().read_model(str(model))
    return model


def _calibration_items(calibration) -> list[np.ndarray]:
    """One [1, C, H, W] float32 array per image: NNCF's `subset_size` counts dataset items (so it caps images, not
    batches), and its range statistics are gathered item by item."""
    if isinstance(calibration, (torch.Tensor, np.ndarray)):
        calibration = [calibration]
    items = []
    for batch in calibration:
        if isinstance(batch, torch.Tensor):
            batch = batch.detach().float().cpu().numpy()
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        items.extend(batch[i : i + 1] for i in range(len(batch)))
    if not items:
        raise ValueError("calibration holds no images")
    return items


def quantize_int8(model_or_path, calibration, out_path: str | Path | None = None, subset_size: int = 300):
    """NNCF static post-training int8 of an ONNX file or `openvino.Model`. Returns the quantized `openvino.Model`,
    also written as IR (.xml + .bin) to `out_path` when given.

    `calibration`: numpy float32 batches [B, C, H, W] (an iterable), or a tensor of images; at most `subset_size`
    images are used. Weights are int8 symmetric per output channel, activations int8 per tensor from the calibration
    ranges. NNCF's transformer model type decides what stays in float: LayerNorm, Softmax, GELU and the residual
    adds; every Linear, the patch Conv and the two attention matmuls run in int8, with SmoothQuant (alpha 0.95) moving
    activation outliers into the weights. Quantizing LayerNorm and the residuals too, or dropping SmoothQuant, lost
    fidelity; keeping the head or the attention matmuls in float gained none (benchmarks/openvino_study.md).
    NNCF's progress bars go to stderr.
    """
    import nncf
    import openvino

    items = _calibration_items(calibration)
    with stdout_to_stderr():
        quantized = nncf.quantize(
            _read(model_or_path), nncf.Dataset(items), subset_size=min(subset_size, len(items)),
            model_type=nncf.ModelType.TRANSFORMER,
        )  # fmt: skip
    if out_path is not None:
        # compress_to_fp16 off: what stays in float keeps its fp32 constants
        openvino.save_model(quantized, str(out_path), compress_to_fp16=False)
    return quantized


class OpenVINORunner:
    """`runner(images) -> logits`: an exported model compiled by OpenVINO for the CPU, torch tensors in and out.

    `precision` "fp32" or "bf16" sets the inference precision; "int8" first quantizes with `calibration` (see
    `quantize_int8`; required) unless the model is `quantized` already (an int8 IR that `vitzoo export` saved).
    `threads` defaults to torch's thread count, for a like-for-like comparison.

    One static-shape compile per input shape, cached (a compile takes about a second): a dynamic-batch compile ran
    slower at batch 1.
    """

    def __init__(self, model, precision: str = "fp32", threads: int | None = None, calibration=None,
                 quantized: bool = False):
        import openvino

        if precision not in PRECISIONS:
            raise ValueError(unavailable_reason(precision))
        if precision == "int8" and calibration is None and not quantized:
            raise ValueError("int8 needs calibration images (calibration=...): NNCF sets activation ranges from them")
        reason = unavailable_reason("fp32" if quantized else precision)  # a quantized IR needs no NNCF
        if reason is not None:
            raise RuntimeError(reason)
        self.precision = precision
        self.core = openvino.Core()
        self.model = quantize_int8(model, calibration) if precision == "int8" and not quantized else _read(model)
        if precision == "fp32":
            # explicit: OpenVINO's CPU default is bf16 wherever the CPU has it
            hint = "f32"
        else:
            # int8 leaves LayerNorm, Softmax, GELU, residuals and dequantized outputs in float: in bf16 they run
            # faster, at no measurable cost in cosine
            hint = "bf16" if _native_bf16(self.core) else "f32"
        self.config = {
            "INFERENCE_PRECISION_HINT": hint,
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
            # one stream, all threads on one request: what a single batch needs (THROUGHPUT with one request runs on
            # one thread; splitting a batch over single-thread streams gained little)
            "PERFORMANCE_HINT": "LATENCY",
        }
        # TBB's auto partitioner splits each node's work adaptively instead of into fixed equal chunks: faster at
        # batch 1, where each node's work is small, slightly slower at batch 8, so only for batch 1
        self._batch1_config = dict(self.config)
        if "TBB_PARTITIONER" in self.core.get_property("CPU", "SUPPORTED_PROPERTIES"):
            self._batch1_config["TBB_PARTITIONER"] = "AUTO"
        self._requests = {}  # input shape -> infer request of a static-shape compile

    def _request(self, shape: tuple[int, ...]):
        request = self._requests.get(shape)
        if request is None:
            model = self.model.clone()
            model.reshape({0: list(shape)})
            config = self._batch1_config if shape[0] == 1 else self.config
            with stdout_to_stderr():
                request = self.core.compile_model(model, "CPU", config).create_infer_request()
            self._requests[shape] = request
        return request

    def enable_profiling(self) -> None:
        """Per-node timing (OpenVINO's PERF_COUNT) for the compiles from now on: `node_times` reads it."""
        for config in (self.config, self._batch1_config):
            config["PERF_COUNT"] = True
        self._requests.clear()
        self._original_ops = {}  # input shape -> {runtime node name: the model's ops it runs}

    def node_times(self, shape: tuple[int, ...]) -> list[tuple[str, str, str, float]]:
        """(node type, the model's ops it runs (comma-separated), its kernel, microseconds) of each executed node in
        the last call at input `shape`; a fused node lists every op it took in."""
        request = self._requests[shape]
        originals = self._original_ops.get(shape)
        if originals is None:
            originals = self._original_ops[shape] = {
                op.get_friendly_name(): op.get_rt_info()["originalLayersNames"].astype(str)
                for op in request.get_compiled_model().get_runtime_model().get_ops()
            }
        return [(info.node_type, originals.get(info.node_name, info.node_name), info.exec_type,
                 info.real_time.total_seconds() * 1e6)
                for info in request.profiling_info if info.real_time.total_seconds() > 0]  # fmt: skip

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().float().cpu().numpy())
        out = self._request(tuple(x.shape)).infer({0: x})[0]
        return torch.from_numpy(np.array(out, dtype=np.float32))  # a copy: the request reuses its output buffer
