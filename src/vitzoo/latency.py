"""Wall-clock latency of a model's forward pass, measured the way the seed did: random input, warm-up excluded."""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Timing:
    batch_size: int
    ms_median: float
    ms_min: float
    ms_max: float
    runs: int

    @property
    def images_per_s(self) -> float:
        return 1000.0 * self.batch_size / self.ms_median


def device_name(device: str | torch.device = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(model: nn.Module, batch_size: int, warmup: int = 2, runs: int = 5) -> Timing:
    """Median/min/max milliseconds per forward of a batch of random images, after `warmup` untimed forwards.

    The first forwards on CPU are much slower (oneDNN creates its primitives), hence the warm-up.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    param = next(model.parameters())
    cfg = model.cfg
    x = torch.randn(batch_size, cfg.in_chans, cfg.img_size, cfg.img_size, device=param.device, dtype=param.dtype)
    model.eval()
    for _ in range(warmup):
        model(x)
    _sync(param.device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model(x)
        _sync(param.device)
        times.append((time.perf_counter() - start) * 1000.0)
    return Timing(batch_size, statistics.median(times), min(times), max(times), runs)
