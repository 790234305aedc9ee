"""OpenVINO IR (`.xml` + `.bin`) for OpenVINO's C++ and Python runtimes and OpenVINO Model Server: fp32, fp16, int8.

Converted from vitzoo's ONNX export (what `--backend openvino` runs): fp32 keeps fp32 weights; fp16 stores the
weights compressed to fp16 (`save_model(compress_to_fp16=True)`; OpenVINO computes in fp32, or bf16 where the CPU has
it, as its precision hint says); int8 is NNCF's static post-training quantization (`vitzoo.infer.openvino`'s
`quantize_int8`), so a server loads it in seconds instead of re-running NNCF. The description goes into the model's
`rt_info` under "vitzoo".
"""

from __future__ import annotations

from pathlib import Path

from .card import METADATA_KEY

PRECISIONS = ("fp32", "fp16", "int8")


def write(exported, example, out: Path, precision: str, calibration, dynamic: bool, metadata: str) -> list[Path]:
    import openvino

    from ..infer.onnx import export_onnx
    from ..infer.openvino import quantize_int8
    from ..infer.quiet import stdout_to_stderr

    onnx_file = out.with_name(out.stem + ".export.onnx")
    export_onnx(exported, onnx_file)  # dynamic: NNCF calibrates image by image; a fixed batch is set below
    if precision == "int8":
        model = quantize_int8(onnx_file, calibration)
    else:
        with stdout_to_stderr():
            model = openvino.Core().read_model(str(onnx_file))
    onnx_file.unlink()
    if not dynamic:
        model.reshape({0: list(example.shape)})
    model.set_rt_info(metadata, [METADATA_KEY])
    openvino.save_model(model, str(out), compress_to_fp16=precision == "fp16")
    return [out, out.with_suffix(".bin")]


def inspect(path: Path) -> tuple[str | None, tuple[list, list]]:
    """The description in the model's rt_info, and its own input and output shapes (-1 for a dynamic axis)."""
    import openvino

    model = openvino.Core().read_model(str(path))

    def dims(port):
        return [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]

    metadata = model.get_rt_info([METADATA_KEY]).astype(str) if model.has_rt_info([METADATA_KEY]) else None
    return metadata, (dims(model.inputs[0]), dims(model.outputs[0]))


def runner(path: Path, card, threads: int | None):
    from ..infer.openvino import OpenVINORunner

    # an int8 IR runs as it is, nothing re-quantized; fp16 weights are decompressed and computed in fp32
    return OpenVINORunner(path, "int8" if card.precision == "int8" else "fp32", threads, quantized=True)
