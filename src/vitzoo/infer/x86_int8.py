"""int8 on the CPU's matrix units through PyTorch itself (the `int8-compile` path).

PT2E static post-training quantization with the X86 Inductor quantizer (torchao's `X86InductorQuantizer`: weights
int8 symmetric per output channel, activations uint8 per tensor, calibrated on the caller's images), then
torch.compile with frozen weights: Inductor lowers each quantize -> linear -> dequantize to oneDNN's
`qlinear_pointwise` on a prepacked weight (AMX-INT8 where the CPU has it, else VNNI), with the bias and a following
GELU or residual add fused into it. The linears and the patch embedding run in int8; attention, LayerNorm and the
residual stream stay in floating point, bf16 where the CPU has native bf16 (autocast around the compiled graph:
Inductor's "int8-mixed-bf16"), else fp32.

Needs torchao (the deploy extra installs it with executorch); `unavailable_reason` says so in one line.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Iterable

import torch
from torch import nn


def has_onednn_int8() -> bool:
    """Whether this torch has oneDNN's quantized linear (x86 builds): what int8-compile and the int8 ceiling run."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")


def unavailable_reason() -> str | None:
    if importlib.util.find_spec("torchao") is None:
        return "int8-compile needs torchao's X86 Inductor quantizer (pip install torchao)"
    if not has_onednn_int8():
        return "int8-compile needs torch built with oneDNN's quantized linear (x86)"
    return None


class QuantizedCompiled:
    """The quantized graph compiled by Inductor (frozen weights; one compilation per batch size), run under bf16
    autocast where `mixed_bf16`."""

    def __init__(self, quantized: nn.Module, mixed_bf16: bool):
        from .torch_paths import Compiled

        # as compile_model, less its .eval(): an exported graph refuses train()/eval()
        self.compiled = Compiled(quantized, {"freezing": True}, dynamic=False)
        self.mixed_bf16 = mixed_bf16

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        autocast = torch.autocast("cpu", torch.bfloat16) if self.mixed_bf16 else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            return self.compiled(images).float()


@torch.no_grad()
def quantize_x86(model: nn.Module, calibration: Iterable[torch.Tensor], example: torch.Tensor) -> nn.Module:
    """`model` (fp32, eval; images -> logits) quantized for Inductor's x86 int8 lowering, calibrated on every batch
    of `calibration`. The batch dimension stays dynamic, so any batch size runs."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config,
    )  # fmt: skip

    batch = torch.export.Dim("batch", min=1, max=4096)
    exported = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},)).module()
    config = get_default_x86_inductor_quantization_config()
    quantizer = X86InductorQuantizer()
    for layer in (nn.Linear, nn.Conv2d):  # the matrix products with weights; attention's stay in float
        quantizer.set_module_type_qconfig(layer, config)
    prepared = prepare_pt2e(exported, quantizer)
    seen = 0
    for images in calibration:
        prepared(torch.as_tensor(images).float())
        seen += 1
    if not seen:
        raise ValueError("int8 needs calibration images: name a folder or list file (--calibration)")
    return convert_pt2e(prepared)


def build_int8_compile(model: nn.Module, calibration: Iterable[torch.Tensor], mixed_bf16: bool) -> QuantizedCompiled:
    """quantize_x86 + Inductor: what `build_path(model, "int8", "compile", calibration=...)` runs."""
    batches = [torch.as_tensor(b).float() for b in calibration]
    if not batches:
        raise ValueError("int8 needs calibration images: name a folder or list file (--calibration)")
    first = batches[0]  # export's example has batch 2: a batch of 1 would be specialized, not kept dynamic
    example = first[:2] if len(first) >= 2 else first.expand(2, *first.shape[1:]).contiguous()
    return QuantizedCompiled(quantize_x86(model, batches, example), mixed_bf16)
