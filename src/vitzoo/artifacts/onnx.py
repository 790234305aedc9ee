"""ONNX files for ONNX Runtime (and any runtime that reads ONNX): fp32, fp16, int8 as static QDQ.

- fp32: torch's dynamo exporter (`vitzoo.infer.onnx.export_onnx`).
- fp16: the fp32 graph converted by onnxruntime's own float16 tool (`onnxruntime.transformers.float16`), inputs and
  outputs left in fp32 so callers feed the same images; ops ONNX Runtime's CPU provider has no fp16 kernel for stay in
  fp32 (its `op_block_list`), so the file runs on CPU as well as on a GPU.
- int8: `onnxruntime.quantization.quantize_static` in QDQ format: weights int8 symmetric per output channel,
  activations int8 from calibration images (ranges by MinMax), only the MatMul/Gemm/Conv inputs quantized: LayerNorm,
  Softmax, GELU and the residual adds stay in float, as for OpenVINO's int8.
The description (`card.py`) goes into the file's `metadata_props` under "vitzoo".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .card import METADATA_KEY

PRECISIONS = ("fp32", "fp16", "int8")
# ONNX Runtime's CPU provider has no fp16 kernels for these (1.2x): kept in fp32 by the converter
FP16_KEEP_FP32 = ("LayerNormalization", "Softmax", "Gelu", "Erf", "ReduceMean", "Pow", "Sqrt", "Div")


def write(exported, example, out: Path, precision: str, calibration, dynamic: bool, metadata: str) -> list[Path]:
    """`exported` (fp32 images -> fp32 logits, fp32 weights) as ONNX at `out`; returns the files written."""
    import onnx

    from ..infer.onnx import export_onnx

    fp32 = out.with_name(out.stem + ".fp32.onnx") if precision != "fp32" else out
    export_onnx(exported, fp32, batch=None if dynamic else example.shape[0])
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True, op_block_list=list(FP16_KEEP_FP32))
        fp32.unlink()
    elif precision == "int8":
        model = _quantize(fp32, out, calibration, 1 if dynamic else example.shape[0])
        fp32.unlink()
    else:
        model = onnx.load(str(fp32))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata
    onnx.save(model, str(out))
    return [out]


class _Images:
    """onnxruntime's CalibrationDataReader protocol (`get_next` -> feed dict or None) over [batch, C, H, W] arrays
    (the file's fixed batch, else one image at a time)."""

    def __init__(self, name: str, images: np.ndarray, batch: int):
        self._items = iter([{name: images[i : i + batch]} for i in range(0, len(images) - batch + 1, batch)])

    def get_next(self):
        return next(self._items, None)


def _quantize(fp32: Path, out: Path, calibration: np.ndarray, batch: int):
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = fp32.with_name(fp32.stem + ".prep.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
    quantize_static(
        str(prepared), str(out), _Images(name, calibration, batch), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        calibrate_method=CalibrationMethod.MinMax, extra_options={"ActivationSymmetric": False},
    )  # fmt: skip
    prepared.unlink()
    return onnx.load(str(out))


def inspect(path: Path) -> tuple[str | None, tuple[list, list]]:
    """The description inside the file, and its own input and output shapes (-1 for a dynamic axis)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def dims(value):
        return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]

    metadata = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    return metadata, (dims(model.graph.input[0]), dims(model.graph.output[0]))


def runner(path: Path, card, threads: int | None):
    from ..infer.onnx import OrtRunner

    return OrtRunner(path, threads=threads)
