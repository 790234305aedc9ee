"""ExecuTorch programs (`.pte`) for phones and embedded devices, delegated to XNNPACK: fp32 and int8.

fp32: `torch.export.export` -> `to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])` -> `.to_executorch()`.
int8: XNNPACK's quantizer (weights int8 symmetric per output channel, activations int8 per tensor) on the exported
graph (`torchao`'s `prepare_pt2e`/`convert_pt2e`), calibrated by running the prepared graph on calibration images,
then exported and lowered as fp32 is; only the linear and convolution layers are quantized (LayerNorm, softmax,
GELU and the residual adds stay in fp32, as for the other int8 files).
A `.pte` has no place for free-form metadata: its description is the sidecar only. The batch is fixed (`--batch N`,
default 1: what a phone classifies).
"""

from __future__ import annotations

from pathlib import Path

import torch

PRECISIONS = ("fp32", "int8")
DEFAULT_BATCH = 1


def write(exported, example, out: Path, precision: str, calibration, dynamic: bool, metadata: str) -> list[Path]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from ..infer.quiet import stdout_to_stderr

    with torch.no_grad(), stdout_to_stderr():
        module = exported
        if precision == "int8":
            module = _quantized(exported, example, calibration)
        program = torch.export.export(module, (example,))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    out.write_bytes(lowered.buffer)
    return [out]


def _quantized(exported, example, calibration):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config,
    )  # fmt: skip
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    config = get_symmetric_quantization_config(is_per_channel=True)
    quantizer.set_module_type(torch.nn.Linear, config).set_module_type(torch.nn.Conv2d, config)
    prepared = prepare_pt2e(torch.export.export(exported, (example,)).module(), quantizer)
    batch = example.shape[0]
    images = torch.as_tensor(calibration).float()
    for start in range(0, len(images) - batch + 1, batch):
        prepared(images[start : start + batch])
    return convert_pt2e(prepared)


def inspect(path: Path) -> tuple[None, tuple[list, list]]:
    """No description inside a .pte (the sidecar only); the program's own input and output shapes."""
    method = _program(path).metadata("forward")
    return None, (list(method.input_tensor_meta(0).sizes()), list(method.output_tensor_meta(0).sizes()))


def _program(path: Path):
    from executorch.runtime import Runtime

    try:
        return Runtime.get().load_program(str(path))
    except Exception as e:  # the runtime raises RuntimeError (and others) for a truncated or foreign file
        raise ValueError(f"{path}: ExecuTorch cannot load this program: {str(e).splitlines()[0][:200]}") from None


def runner(path: Path, card, threads: int | None):
    method = _program(path).load_method("forward")
    return lambda images: method.execute([images.float().contiguous()])[0]
