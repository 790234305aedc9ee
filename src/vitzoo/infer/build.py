"""An inference path built by one function: a model run at a precision through a backend on a device.

    runner = build_path(model, "int8", "openvino", calibration=images)
    logits = runner(images)          # fp32 images in (any batch size), fp32 logits out

Backends (what each computes is checked against fp32 eager in tests/test_infer_paths.py):
- eager: the model exactly as model.py writes it, weights and inputs in the precision.
- fast: the trimmed forward (`TrimmedLogits(fused=True)`: the last block computes only the prefix tokens) with
  oneDNN linears and in-place GELU on CPU: the same logits, less work.
- compile: torch.compile (inductor, frozen weights) of the trimmed forward; int8: PT2E static quantization with the
  X86 Inductor quantizer, calibrated on images the caller names, compiled to oneDNN's quantized linears
  (`x86_int8`), the rest in bf16 where the CPU has it.
- cudagraph: the trimmed forward captured as CUDA graphs, one per batch size (CUDA only).
- onnxruntime: vitzoo's ONNX export (trimmed) in onnxruntime (fp32).
- openvino: vitzoo's ONNX export (trimmed) in OpenVINO on CPU: fp32, bf16, and int8 through NNCF's static
  post-training quantization calibrated on images the caller names.
A path the machine cannot run raises PathUnavailable with a one-line reason; nothing falls back to another path.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..model import VisionTransformer
from .fastpath import TrimmedLogits
from .onnx import OrtRunner, export_onnx
from .openvino import OpenVINORunner
from .paths import InferencePath, Runner, cpu_has_amx, cpu_has_bf16
from .torch_paths import CudaGraphs, compile_model
from .x86_int8 import build_int8_compile

TRIMMED = "the last block computes only the prefix tokens the head reads"


def _calibration_batches(calibration, batch_size: int = 8) -> list:
    """Calibration images as numpy batches: a tensor [N, C, H, W] split, or an iterable of tensors/arrays."""
    if calibration is None:
        return []
    if isinstance(calibration, torch.Tensor):
        calibration = calibration.split(batch_size)
    return [b.detach().float().cpu().numpy() if isinstance(b, torch.Tensor) else b for b in calibration]


def build_path(
    model: nn.Module,
    precision: str = "fp32",
    backend: str | None = None,
    device: str = "cpu",
    calibration: torch.Tensor | Iterable | None = None,
    workdir: str | Path | None = None,
) -> Runner:
    """`model` (a vitzoo model with fp32 weights) run at `precision` through `backend` on `device`.

    The model is put in eval mode and, for the torch backends, converted to the precision in place (keep a copy if
    you need the fp32 one). int8 needs `calibration`: preprocessed images ([N, C, H, W], or batches of them) whose
    activation ranges set the quantization (`calibration_images` reads them from a folder or list file). Exported
    backends write their files to `workdir` (default: a temporary folder kept as long as the runner).
    Raises PathUnavailable (one line) where this machine cannot run the path.
    """
    path = InferencePath(precision, backend, device).require()
    model = model.eval().to(path.device)
    vitzoo_model = isinstance(model, VisionTransformer)
    if path.backend in ("onnxruntime", "openvino"):
        return _build_exported(model.float(), path, calibration, workdir, vitzoo_model)

    model = model.to(path.dtype)
    if path.backend == "eager":
        return Runner(model, path)
    if path.backend == "compile" and path.precision == "int8":
        # the whole forward, not the trimmed one: Inductor's int8 lowering of the trimmed last block (its queries
        # sliced to the prefix tokens) answered far from the quantized graph it compiled (cosine 0.954 on DeiT_small)
        mixed = cpu_has_bf16()  # build_int8_compile refuses missing calibration images
        runner = build_int8_compile(model, map(torch.from_numpy, _calibration_batches(calibration)), mixed_bf16=mixed)
        how = "PT2E x86 int8 (oneDNN qlinear), the rest in " + ("bf16" if mixed else "fp32")
        return Runner(runner, path, _joined("torch.compile, frozen weights", how))
    if vitzoo_model:
        # explicit attention for bf16 on a CPU without AMX, where oneDNN's bf16 matmuls beat SDPA's kernel; with AMX,
        # SDPA's is the faster (benchmarks/openvino_study.md)
        sdpa = not (path.precision == "bf16" and not path.on_cuda and not cpu_has_amx())
        trimmed, note = TrimmedLogits(model, fused=path.backend == "fast", fused_attn=sdpa), TRIMMED
    else:  # a foreign model (timm's, say) has no trimmed forward: run it as it is
        trimmed, note = model, ""
    if path.backend == "fast":
        return Runner(trimmed, path, note + ("; oneDNN linears, GELU in place" if vitzoo_model else ""))
    if path.backend == "compile":
        return Runner(compile_model(trimmed, path.device), path, _joined("torch.compile, frozen weights", note))
    return Runner(CudaGraphs(trimmed), path, _joined("CUDA graphs", note))


def _build_exported(model: nn.Module, path: InferencePath, calibration, workdir, vitzoo_model: bool) -> Runner:
    batches = _calibration_batches(calibration)
    if path.precision == "int8" and not batches:
        raise ValueError("int8 needs calibration images: name a folder or list file (--calibration)")
    keep = None
    if workdir is None:
        keep = tempfile.TemporaryDirectory(prefix="vitzoo-infer-")
        workdir = keep.name
    onnx_file = export_onnx(model, Path(workdir) / "model.onnx")
    note = f"ONNX export: {TRIMMED}" if vitzoo_model else "ONNX export"  # a foreign model is exported as it is
    if path.backend == "onnxruntime":
        return Runner(OrtRunner(onnx_file, path.device), path, note, keep)
    runner = OpenVINORunner(onnx_file, path.precision, calibration=batches or None)
    return Runner(runner, path, _joined(note, "NNCF static int8" if path.precision == "int8" else ""), keep)


def _joined(*notes: str) -> str:
    return "; ".join(n for n in notes if n)
