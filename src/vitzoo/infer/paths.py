"""What an inference path is: a model run at a precision through a backend on a device, and whether this machine
can run it. `vitzoo.infer.build.build_path` builds one; `Runner` is what it returns.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .openvino import unavailable_reason as openvino_unavailable_reason
from .torch_paths import TORCH_DTYPES
from .x86_int8 import unavailable_reason as x86_int8_unavailable_reason

PRECISIONS = (*TORCH_DTYPES, "int8")
BACKENDS = ("eager", "fast", "compile", "cudagraph", "onnxruntime", "openvino")
# what each backend can run; int8 by default through OpenVINO + NNCF (chosen by measurement:
# benchmarks/cpu_engines.md), or through PyTorch's own x86 int8 (`x86_int8`: PT2E + Inductor, oneDNN's qlinear)
SUPPORTED = {
    "eager": ("fp32", "bf16", "fp16"),
    "fast": ("fp32", "bf16", "fp16"),
    "compile": ("fp32", "bf16", "fp16", "int8"),
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


def cpu_has_amx() -> bool:
    """Intel's matrix units (AMX) for bf16: where oneDNN's bf16 kernels, SDPA's flash attention among them, are fastest."""
    return "amx_bf16" in _cpu_flags()


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
        if self.backend == "compile" and self.precision == "int8":
            if self.on_cuda:
                return "int8-compile runs on the CPU (oneDNN's quantized linear); on CUDA use bf16 or fp16"
            return x86_int8_unavailable_reason()
        if self.on_cuda and not torch.cuda.is_available():
            return f"{self.name} on {self.device}: no CUDA device here"
        if self.backend == "cudagraph" and not self.on_cuda:
            return "the cudagraph backend needs a CUDA device (--device cuda)"
        if self.backend == "openvino":
            if self.on_cuda:
                return "the openvino backend runs on the CPU only"
            return openvino_unavailable_reason(self.precision)
        if self.backend == "onnxruntime":
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                return "the onnxruntime backend needs onnxruntime (pip install onnxruntime)"
        if self.precision == "bf16" and not self.on_cuda and not cpu_has_bf16():
            return "bf16 on this CPU: it has no AVX512-BF16 or AMX, so bf16 would be emulated (slower than fp32)"
        return None

    def require(self) -> "InferencePath":
        """This path, if this machine can run it; else PathUnavailable with `unavailable_reason()`'s line."""
        reason = self.unavailable_reason()
        if reason:
            raise PathUnavailable(reason)
        return self


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
