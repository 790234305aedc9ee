"""Wall-clock latency of a forward pass, measured the way the seed did: random input, warm-up excluded.

CPU runs are timed with perf_counter; CUDA runs with events, the GPU idle (synchronised) before each run, so launch
overhead counts as it does for a user. Several candidates timed together alternate run by run (A B B A A B ...), so
that a machine whose speed drifts (a shared CPU, clocks) moves all of them alike.
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from ..infer.paths import image_shape


@dataclass(frozen=True)
class Timing:
    batch_size: int
    ms_median: float
    ms_min: float
    ms_max: float
    runs: int
    peak_mem_mb: float | None = None  # CUDA: peak allocated by torch; CPU: peak resident set of the process
    contended_runs: int | None = None  # runs begun while other processes kept the CPU busy (when waiting for quiet)

    @property
    def images_per_s(self) -> float:
        return 1000.0 * self.batch_size / self.ms_median

    @classmethod
    def of(cls, batch_size: int, times_ms: list[float], peak_mem_mb: float | None = None, contended_runs=None):
        median, low, high = statistics.median(times_ms), min(times_ms), max(times_ms)
        return cls(batch_size, median, low, high, len(times_ms), peak_mem_mb, contended_runs)


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


def _time_once_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


# -- peak memory ------------------------------------------------------------------------------------------------------
def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the process's peak resident set (VmHWM) to the current one
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak since the process began


# -- a shared machine ---------------------------------------------------------------------------------------------
def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine since boot (Linux); None elsewhere."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def wait_for_quiet_cpu(max_wait_s: float, busy_below: float = 0.2, window_s: float = 0.25) -> bool:
    """Sleep until the other processes leave the CPU nearly idle (busy share over a `window_s` window, while this
    process sleeps, below `busy_below`). False if that did not happen within `max_wait_s`, or cannot be told."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = _cpu_times()
        time.sleep(window_s)
        after = _cpu_times()
        if before is None or after is None:
            return False
        busy, total = after[0] - before[0], after[1] - before[1]
        if total > 0 and busy / total < busy_below:
            return True
        if time.monotonic() > deadline:
            return False


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


# -- timing -----------------------------------------------------------------------------------------------------------
@torch.inference_mode()
def time_alternating(
    candidates: Mapping[str, Callable[[], object]],
    batch_size: int,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    runs: int = 5,
    quiet_wait_s: float = 0.0,
) -> dict[str, Timing]:
    """Time zero-argument forwards (`name -> fn`), each warmed up on its own, then run in alternation.

    Peak memory is taken over each candidate's last warm-up forward (with none, its first timed one). On a shared
    CPU, `quiet_wait_s` > 0 waits (up to that long) before each round for other processes to leave the CPU idle;
    rounds begun without that are counted in `contended_runs`.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    device = torch.device(device)
    names = list(candidates)
    peaks = {}
    for name in names:
        for i in range(warmup):
            if i == warmup - 1:
                _reset_peak_memory(device)
            candidates[name]()
        _sync(device)
        if warmup:
            peaks[name] = _peak_memory_mb(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    wait = quiet_wait_s > 0 and device.type == "cpu"
    contended = 0
    for r in range(runs):
        if wait and not wait_for_quiet_cpu(quiet_wait_s):
            contended += 1
        for name in names if r % 2 == 0 else names[::-1]:  # A B, B A, A B, ...: drift hits all alike
            if not warmup and r == 0:
                _reset_peak_memory(device)
            times[name].append(_time_once_ms(candidates[name], device))
            if not warmup and r == 0:
                peaks[name] = _peak_memory_mb(device)
    contended_runs = contended if wait else None
    return {name: Timing.of(batch_size, times[name], round(peaks[name], 1), contended_runs) for name in names}


@torch.inference_mode()
def time_cell(
    fn: Callable[[], object],
    batch_size: int,
    device: str | torch.device = "cpu",
    warmup: int = 1,
    runs: int = 3,
    budget_s: float = 1.0,
    max_runs: int = 1000,
) -> Timing:
    """One cell of a table: `warmup` untimed forwards, then at least `runs` timed ones, more (up to `max_runs`)
    while the cell, warm-up included, has taken less than `budget_s`. A slow forward gets its `runs` and no more; a
    fast one as many as fit, for a steadier median."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    device = torch.device(device)
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    while len(times) < runs or (len(times) < max_runs and time.perf_counter() - start < budget_s):
        times.append(_time_once_ms(fn, device))
    return Timing.of(batch_size, times)


def random_images(model: nn.Module, batch_size: int, device=None, dtype=None, seed: int | None = None) -> torch.Tensor:
    """A batch of random images of the model's input size, on its device and in its dtype unless told otherwise;
    the same images on every device for a given `seed`."""
    param = next(model.parameters())
    shape = (batch_size, *image_shape(model))
    device, dtype = device or param.device, dtype or param.dtype
    if seed is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


@torch.inference_mode()
def measure_latency(model: nn.Module, batch_size: int, warmup: int = 2, runs: int = 5) -> Timing:
    """Median/min/max milliseconds per forward of a batch of random images, after `warmup` untimed forwards.

    The first forwards on CPU are much slower (oneDNN creates its primitives), hence the warm-up.
    """
    x = random_images(model, batch_size)
    model.eval()
    return time_alternating({"model": lambda: model(x)}, batch_size, x.device, warmup, runs)["model"]
