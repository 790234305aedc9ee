"""How close a path runs to this CPU's matrix units: the GEMM ceiling at each precision, measured in the same process
with the same threads, each path's effective rate against it, and where a path's time goes.

    ceiling = gemm_ceiling("bf16", model.cfg, batch_size=8)   # {"gflops": ..., "by_shape": {...}, "kernel": ...}
    rate = effective_gflops(macs_per_image, batch_size=8, ms=41.0)
    shares = op_class_breakdown(runner, images)             # {"gemm": 0.61, "attention": 0.14, ...}

The ceiling is the best rate of the fastest GEMM available here at that precision, over a square 2048^3 product and
the model's own linear shapes at the batch timed (qkv, proj, fc1, fc2 with M = batch x tokens):
- fp32: torch.mm (MKL's or oneDNN's sgemm, as torch dispatches);
- bf16: torch.mm on bf16 tensors (oneDNN: AMX tiles where the CPU has them, else AVX512-BF16 or emulation);
- int8: oneDNN's quantized linear on a prepacked weight (`torch.ops.onednn.qlinear_pointwise`, uint8 x int8 with
  int32 accumulation: AMX-INT8 or VNNI), the kernel Inductor's int8 path calls. `torch._int_mm` is not used: it
  does not reach AMX.
A path's effective rate is 2 x the model's full MACs per image (`vitzoo.profile`, attention matmuls included) x
images / time: a path that skips work (the trimmed last block) is credited with the full count.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from ..infer.x86_int8 import has_onednn_int8

SQUARE = (2048, 2048, 2048)
OP_CLASSES = ("gemm", "attention", "norm", "pointwise", "copies", "other")


def linear_shapes(cfg, batch_size: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of a block's linears at `batch_size` images: qkv, proj, fc1, fc2."""
    tokens = (cfg.img_size // cfg.patch_size) ** 2 + 1 + int(cfg.distilled)
    m, d = batch_size * tokens, cfg.embed_dim
    hidden = int(d * cfg.mlp_ratio)
    return [(m, d, 3 * d), (m, d, d), (m, d, hidden), (m, hidden, d)]


def _int8_linear(m: int, k: int, n: int) -> Callable[[], torch.Tensor]:
    x = torch.randint(0, 256, (m, k), dtype=torch.uint8)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    packed = torch.ops.onednn.qlinear_prepack(w, [m, k])
    w_scale, w_zp = torch.full((n,), 0.01), torch.zeros(n, dtype=torch.int64)
    return lambda: torch.ops.onednn.qlinear_pointwise.default(
        x, 0.02, 0, packed, w_scale, w_zp, None, 1.0, 0, torch.float32, "none", [], "none"
    )


def gemm_call(precision: str, m: int, k: int, n: int) -> Callable[[], torch.Tensor]:
    """One (m x k) @ (k x n) product at `precision`, as a callable, on random operands."""
    if precision == "int8":
        return _int8_linear(m, k, n)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    return lambda: torch.mm(a, b)


def unavailable(precision: str) -> str | None:
    """None where this process can measure a GEMM at `precision`, else one line why not."""
    if precision not in ("fp32", "bf16", "int8"):
        return f"no GEMM ceiling for {precision} (fp32, bf16, int8)"
    if precision == "int8" and not has_onednn_int8():
        return "int8: this torch has no oneDNN quantized linear (torch.ops.onednn.qlinear_pointwise)"
    return None


def _rate(call: Callable[[], torch.Tensor], flops: float, min_s: float) -> float:
    """GFLOP/s of `call`: best of batches of calls after a warm-up, at least `min_s` seconds of timing."""
    for _ in range(2):
        call()
    best, spent = float("inf"), 0.0
    while spent < min_s:
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return flops / best / 1e9


@torch.inference_mode()
def gemm_ceiling(precision: str, cfg=None, batch_size: int = 8, min_s: float = 0.3) -> dict:
    """The fastest rate of the GEMM at `precision` over 2048^3 and (given a model config) its linear shapes at
    `batch_size`: {"precision", "gflops" (the ceiling), "shape" (where it was reached), "by_shape", "kernel"}."""
    reason = unavailable(precision)
    if reason:
        raise ValueError(reason)
    shapes = [SQUARE] + (linear_shapes(cfg, batch_size) if cfg is not None else [])
    by_shape = {}
    for m, k, n in dict.fromkeys(shapes):
        by_shape[f"{m}x{k}x{n}"] = round(_rate(gemm_call(precision, m, k, n), 2.0 * m * k * n, min_s), 1)
    best = max(by_shape, key=by_shape.get)
    kernel = {"fp32": "torch.mm fp32", "bf16": "torch.mm bf16 (oneDNN)",
              "int8": "oneDNN qlinear (u8 x s8 -> s32), prepacked"}[precision]  # fmt: skip
    return {"precision": precision, "gflops": by_shape[best], "shape": best, "by_shape": by_shape, "kernel": kernel,
            "threads": torch.get_num_threads()}  # fmt: skip


def effective_gflops(macs_per_image: int, batch_size: int, ms: float) -> float:
    """2 x MACs x images / time, in GFLOP/s."""
    return 2.0 * macs_per_image * batch_size / (ms / 1000.0) / 1e9


# -- where the time goes ------------------------------------------------------------------------------------------------
# by words in an op's name, the first class that matches (Inductor's fused kernels: see op_class)
_CLASS_WORDS = (
    ("attention", ("scaled_dot_product", "flash_attention", "sdpa", "softmax", "bmm", "baddbmm", "attention", "attn")),
    ("gemm", ("linear", "addmm", "aten::mm", "matmul", "conv", "qlinear", "gemm", "fullyconnected")),
    ("norm", ("layer_norm", "layernorm", "mvn", "normalize")),
    ("copies", ("copy", "clone", "contiguous", "cat", "reorder", "transpose", "permute", "concat", "convert", "to_dense")),
    ("pointwise", ("gelu", "add", "mul", "div", "erf", "eltwise", "quantize", "dequantize", "sub", "where")),
)  # fmt: skip


def op_class(name: str) -> str:
    """The class of a profiled op or kernel by its name: gemm, attention, norm, pointwise, copies or other.

    An Inductor kernel ("cpp_fused_add_addmm_gelu_native_layer_norm_4") is named after every op it fused, the
    matmuls whose epilogues (bias, GELU, residual) it computes among them, while the matmuls themselves run in
    oneDNN or MKL calls of their own: so such a kernel is a norm if it normalizes, attention if it has a softmax,
    copies if it only moves data, else pointwise; never a GEMM."""
    lower = name.lower()
    if "cpp_fused" in lower:
        if "layer_norm" in lower:
            return "norm"
        if "softmax" in lower:
            return "attention"
        words = [w for w in lower.split("cpp_fused_", 1)[1].split("_") if w and not w.isdigit()]
        if words and all(w in ("clone", "copy", "cat", "permute", "transpose", "view", "unbind", "expand") for w in words):
            return "copies"
        return "pointwise"
    for klass, words in _CLASS_WORDS:
        if any(word in lower for word in words):
            return klass
    return "other"


# profiler events that only wrap others (their self time is bookkeeping, not work)
_WRAPPERS = ("Torch-Compiled Region", "CompiledFxGraph", "## Call CompiledFxGraph", "TorchDynamo Cache Lookup")


def shares(self_us: dict[tuple[str, str], float]) -> dict:
    """{(op name, its class): self time} as {"shares": {class: fraction}, "top": [(name, class, fraction), ...]}."""
    total = sum(self_us.values()) or 1.0
    by_class = dict.fromkeys(OP_CLASSES, 0.0)
    for (_, klass), us in self_us.items():
        by_class[klass] += us
    top = sorted(self_us.items(), key=lambda item: -item[1])[:8]
    return {"shares": {k: round(v / total, 3) for k, v in by_class.items()},
            "top": [(name, klass, round(us / total, 3)) for (name, klass), us in top]}  # fmt: skip


@torch.inference_mode()
def op_class_breakdown(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, runs: int = 5) -> dict:
    """The torch profiler's self CPU time of each op over `runs` calls of `run(images)` (after one warm-up), by
    class (`shares`). Inductor's kernels show by name only where the path was compiled with
    `torch._inductor.config.cpp.enable_kernel_profile` set (as `path_breakdown` does); else their time is in no
    named event."""
    from torch.profiler import ProfilerActivity, profile

    run(images)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            run(images)
    self_us = {}
    for event in prof.key_averages():
        if event.key.startswith(_WRAPPERS) or event.self_cpu_time_total <= 0:
            continue
        key = (event.key, op_class(event.key))
        self_us[key] = self_us.get(key, 0.0) + event.self_cpu_time_total
    return shares(self_us)


# OpenVINO's node types (its linears are FullyConnected*; MatMul nodes are attention's two products). A Subgraph
# (OpenVINO's own fusion) is classed by the model's ops it took in: a Softmax or SDPA among them, attention (a whole
# fused attention); a LayerNorm, norm; else pointwise.
_OPENVINO_CLASS = {
    "FullyConnected": "gemm", "Convolution": "gemm", "MatMul": "attention", "Softmax": "attention",
    "ScaledDotProductAttention": "attention", "MVN": "norm", "Eltwise": "pointwise", "Reorder": "copies",
    "Transpose": "copies", "Concat": "copies", "Concatenation": "copies", "Convert": "copies",
}  # fmt: skip


def openvino_node_class(node_type: str, ops: str) -> str:
    """The class of an executed OpenVINO node from its type and the model's ops it runs (comma-separated names)."""
    if node_type == "Subgraph":
        lower = ops.lower()
        if "softmax" in lower or "scaled_dot_product" in lower:
            return "attention"
        return "norm" if "layer_norm" in lower or "mvn" in lower else "pointwise"
    if node_type.startswith("FullyConnected"):
        return "gemm"
    return _OPENVINO_CLASS.get(node_type, "other")


def openvino_breakdown(runner, images: torch.Tensor, runs: int = 5) -> dict:
    """`shares` of an `OpenVINORunner`'s time by node type (its own per-node counters, summed over `runs` calls)."""
    runner.enable_profiling()
    runner(images)
    self_us: dict[tuple[str, str], float] = {}  # (node type (kernel), class) -> microseconds
    for _ in range(runs):
        runner(images)
        for node_type, name, kernel, us in runner.node_times(tuple(images.shape)):
            key = (f"{node_type} ({kernel})", openvino_node_class(node_type, name))
            self_us[key] = self_us.get(key, 0.0) + us
    return shares(self_us)


def path_breakdown(name: str, precision: str, backend: str, batch_sizes, calibration=None, family: str = "vitzoo"):
    """{batch size: the op-class breakdown} of one path on model `name` (random O(1) weights), built once: Inductor
    kernels profiled by name for compile paths, OpenVINO's node counters for openvino paths."""
    from ..factory import create_model
    from ..infer import build_path, lively_init_

    model = lively_init_(create_model(name)).eval()
    size = model.cfg.img_size
    if family == "timm":
        from .timm_twin import timm_twin

        model = timm_twin(model)
    if backend == "compile":
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True  # each generated kernel a named profiler event
    run = build_path(model, precision, backend, "cpu", calibration)
    out = {}
    for bs in batch_sizes:
        images = torch.randn(bs, 3, size, size, generator=torch.Generator().manual_seed(bs))
        if backend == "openvino":
            out[bs] = openvino_breakdown(run.fn, images)
        else:
            out[bs] = op_class_breakdown(run, images.to(run.path.dtype))
    return out


def _main(argv: list[str]) -> None:
    """`python -m vitzoo.bench.ceiling ceiling MODEL BATCH [PRECISION...]` or `... breakdown MODEL BATCH[,BATCH...]
    PRECISION BACKEND FAMILY [CALIBRATION.npy]`: one JSON line, for a benchmark that measures each in a process of
    its own."""
    import json

    import numpy as np

    from ..factory import create_model

    what, name = argv[0], argv[1]
    if what == "ceiling":
        batch = int(argv[2])
        with torch.device("meta"):
            cfg = create_model(name).cfg
        result = {p: gemm_ceiling(p, cfg, batch) if unavailable(p) is None else {"skipped": unavailable(p)}
                  for p in (argv[3:] or ["fp32", "bf16", "int8"])}  # fmt: skip
    else:
        precision, backend, family = argv[3], argv[4], argv[5]
        calibration = torch.from_numpy(np.load(argv[6])) if len(argv) > 6 else None
        batch_sizes = [int(b) for b in argv[2].split(",")]
        result = path_breakdown(name, precision, backend, batch_sizes, calibration, family)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
