"""An inference path: a model run at a precision through a backend on a device, built by one function.

    runner = build_path(model, "int8", "openvino", calibration=images)
    logits = runner(images)          # fp32 images in (any batch size), fp32 logits out

Backends (what each computes is checked against fp32 eager in tests/test_infer_paths.py):
- eager: the model exactly as model.py writes it, weights and inputs in the precision.
- fast: eager with the inference tricks of `TrimmedLogits(fused=True)` (the last block computes only the prefix
  tokens, in-place residuals, oneDNN linears on CPU): the same logits, less work.
- compile: torch.compile (inductor, frozen weights) of the trimmed forward.
- cudagraph: the trimmed forward captured as CUDA graphs, one per batch size (CUDA only).
- onnxruntime: vitzoo's ONNX export (trimmed) in onnxruntime (fp32).
- openvino: vitzoo's ONNX export (trimmed) in OpenVINO on CPU: fp32, bf16, and int8 through NNCF's static
  post-training quantization calibrated on images the caller names.
A path the machine cannot run raises PathUnavailable with a one-line reason; nothing falls back to another path.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from .torch_paths import TORCH_DTYPES, CudaGraphs, compile_model

PRECISIONS = (*TORCH_DTYPES, "int8")
BACKENDS = ("eager", "fast", "compile", "cudagraph", "onnxruntime", "openvino")
# what each backend can run; int8 goes through OpenVINO + NNCF (chosen by measurement: benchmarks/cpu_engines.md)
SUPPORTED = {
    "eager": ("fp32", "bf16", "fp16"),
    "fast": ("fp32", "bf16", "fp16"),
    "compile": ("fp32", "bf16", "fp16"),
    "cudagraph": ("fp32", "bf16", "fp16"),
    "onnxruntime": ("fp32",),
    "openvino": ("fp32", "bf16", "int8"),
}
DEFAULT_BACKEND = {"int8": "openvino"}


class PathUnavailable(ValueError):
    """This machine cannot run the path (no CUDA, no bf16 in the CPU, a package not installed): one line why."""


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX): without them torch and OpenVINO emulate bf16, slower than fp32."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if check is not None and check():
        return True
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class InferencePath:
    """How a model is run: weights and activations in `precision`, through `backend`, on `device`."""

    precision: str = "fp32"
    backend: str | None = None  # None: eager, or the precision's own default (int8: openvino)
    device: str = "cpu"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose {', '.join(PRECISIONS)}")
        if self.backend is None:
            object.__setattr__(self, "backend", DEFAULT_BACKEND.get(self.precision, "eager"))
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose {', '.join(BACKENDS)}")
        if self.precision not in SUPPORTED[self.backend]:
            runs = [b for b, ps in SUPPORTED.items() if self.precision in ps]
            raise ValueError(
                f"backend {self.backend} does not run {self.precision} (it runs {', '.join(SUPPORTED[self.backend])}); "
                f"{self.precision} runs on: {', '.join(runs)}"
            )
        object.__setattr__(self, "device", str(torch.device(self.device)))

    @classmethod
    def parse(cls, text: str, device: str = "cpu") -> "InferencePath":
        """"PRECISION-BACKEND" ("fp32-eager", "bf16-compile", "int8-openvino"); "PRECISION" alone takes its default."""
        precision, _, backend = text.partition("-")
        return cls(precision, backend or None, device)

    @property
    def name(self) -> str:
        return f"{self.precision}-{self.backend}"

    @property
    def on_cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype inputs are fed in (fp32 for int8 and the exported backends, which take fp32 images)."""
        if self.backend in ("onnxruntime", "openvino"):
            return torch.float32
        return TORCH_DTYPES.get(self.precision, torch.float32)

    def fields(self) -> dict:
        return {"precision": self.precision, "backend": self.backend, "device": self.device}

    def unavailable_reason(self) -> str | None:
        """None if this machine can run the path, else one line saying why not."""
        if self.on_cuda and not torch.cuda.is_available():
            return f"{self.name} on {self.device}: no CUDA device here"
        if self.backend == "cudagraph" and not self.on_cuda:
            return "the cudagraph backend needs a CUDA device (--device cuda)"
        if self.backend == "openvino":
            if self.on_cuda:
                return "the openvino backend runs on the CPU only"
            from .openvino import unavailable_reason

            return unavailable_reason(self.precision)
        if self.backend == "onnxruntime":
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                return "the onnxruntime backend needs onnxruntime (pip install onnxruntime)"
        if self.precision == "bf16" and not self.on_cuda and not cpu_has_bf16():
            return "bf16 on this CPU: it has no AVX512-BF16 or AMX, so bf16 would be emulated (slower than fp32)"
        return None

    def build(self, model: nn.Module, calibration=None, workdir: str | Path | None = None) -> "Runner":
        return build_path(model, self.precision, self.backend, self.device, calibration, workdir)


def image_shape(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model takes; vitzoo's and timm's ViTs alike (both keep them on their patch embedding)."""
    embed = model.patch_embed
    size = embed.img_size
    height, width = (size, size) if isinstance(size, int) else size
    return embed.proj.in_channels, height, width


class Runner:
    """A built path: `runner(images)` takes fp32 images [B, C, H, W] (any batch size) and returns fp32 logits.

    `notes` says what the path changes against the model as written (trimming, fusing, quantizing).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], path: InferencePath, notes: str = "", keep=None):
        self.fn = fn
        self.path = path
        self.notes = notes
        self._keep = keep  # what must live as long as the runner (a temporary folder of exported files)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.fn(images.to(self.path.device, self.path.dtype)).float()

    def __repr__(self) -> str:
        return f"Runner({self.path.name} on {self.path.device}{': ' + self.notes if self.notes else ''})"


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
    from ..model import VisionTransformer
    from .fastpath import TrimmedLogits

    path = InferencePath(precision, backend, device)
    reason = path.unavailable_reason()
    if reason:
        raise PathUnavailable(reason)
    model = model.eval().to(path.device)
    trimmed = "the last block computes only the prefix tokens the head reads"
    vitzoo_model = isinstance(model, VisionTransformer)

    if path.backend in ("onnxruntime", "openvino"):
        keep = None
        if workdir is None:
            keep = tempfile.TemporaryDirectory(prefix="vitzoo-infer-")
            workdir = keep.name
        from .onnx import export_onnx

        onnx_file = export_onnx(model.float(), Path(workdir) / "model.onnx")
        export = f"ONNX export: {trimmed}" if vitzoo_model else "ONNX export"  # a foreign model is exported as it is
        if path.backend == "onnxruntime":
            from .onnx import OrtRunner

            return Runner(OrtRunner(onnx_file, path.device), path, export, keep)
        from .openvino import OpenVINORunner

        batches = _calibration_batches(calibration)
        if path.precision == "int8" and not batches:
            raise ValueError("int8 needs calibration images: name a folder or list file (--calibration)")
        runner = OpenVINORunner(onnx_file, path.precision, calibration=batches or None)
        note = export + ("; NNCF static int8" if path.precision == "int8" else "")
        return Runner(runner, path, note, keep)

    model = model.to(path.dtype)
    if path.backend == "eager":
        return Runner(model, path)
    if not vitzoo_model:  # a foreign model (timm's, say) has no trimmed forward: run it as it is
        fast, note = model, ""
    else:
        fast, note = TrimmedLogits(model, fused=path.backend == "fast"), trimmed
    if path.backend == "fast":
        return Runner(fast, path, note + ("; in-place residuals, oneDNN linears" if vitzoo_model else ""))
    if path.backend == "compile":
        return Runner(compile_model(fast, path.device), path, "torch.compile, frozen weights" + (f"; {note}" if note else ""))
    return Runner(CudaGraphs(fast), path, "CUDA graphs" + (f"; {note}" if note else ""))
