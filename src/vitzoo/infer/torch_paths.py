"""The torch backends' pieces: weights in bf16/fp16, torch.compile, CUDA graphs.

Each takes an eval-mode module (vitzoo's, its trimmed forward, or any nn.Module mapping images to logits) and gives
something to call on a batch under torch.inference_mode. `vitzoo.infer.build_path` puts them together.
"""

from __future__ import annotations

import torch
from torch import nn

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_of(precision: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[precision]
    except KeyError:
        raise ValueError(f"{precision!r} is not a torch weight precision; choose {', '.join(TORCH_DTYPES)}") from None


def to_precision(model: nn.Module, precision: str) -> nn.Module:
    """The model with its weights in `precision` (in place; not autocast: every matmul reads weights of that type).

    Feed it inputs of the same dtype. LayerNorm, softmax and SDPA accumulate in fp32 inside their kernels.
    """
    return model.to(dtype_of(precision))


def strict_fp32(enable: bool = True) -> None:
    """fp32 means fp32 on CUDA too: no TF32 in matmuls or convolutions (the seed's table is FP32)."""
    torch.set_float32_matmul_precision("highest" if enable else "high")
    torch.backends.cudnn.allow_tf32 = not enable


class Compiled:
    """A torch.compile'd model whose (lazy, per input shape) compilations run under the given inductor settings.

    torch.compile's `options` do not carry `freezing`: inductor reads it from its global config as it compiles,
    which happens at the first call of each shape, so each call sets it for its duration.
    """

    def __init__(self, model: nn.Module, inductor_config: dict, **compile_kwargs):
        self.model = model
        self.inductor_config = inductor_config
        self.compiled = torch.compile(model, **compile_kwargs)

    def __call__(self, *args, **kwargs):
        import torch._inductor.config as inductor_config

        with inductor_config.patch(self.inductor_config):
            return self.compiled(*args, **kwargs)


def compile_model(model: nn.Module, device: str | torch.device = "cpu", cuda_graphs: bool | None = None) -> Compiled:
    """torch.compile for inference: inductor with the weights frozen into the graph as constants.

    Freezing lets inductor pre-pack the weights for oneDNN on CPU (and fuse bias and GELU into the matmuls) and
    fold them on GPU; call the result under torch.inference_mode (or no_grad) and do not change the weights
    afterwards. Shapes are static: one compilation per batch size. On CUDA, `cuda_graphs` (default: on) replays each
    compiled batch size as a CUDA graph.
    """
    config = {"freezing": True}
    if torch.device(device).type == "cuda":
        config["triton.cudagraphs"] = True if cuda_graphs is None else cuda_graphs
    return Compiled(model.eval(), config, dynamic=False)


class CudaGraphRunner:
    """One eager forward captured as a CUDA graph for a fixed input shape, replayed per call.

    Small batches on a fast GPU are bound by kernel launches (~100 per ViT forward); a replay launches them all at
    once. The output tensor is reused by the next call: clone it to keep it.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, warmup: int = 3):
        if example.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA input, got one on {example.device}")
        self.model = model.eval()
        self.static_input = example.clone()
        with torch.inference_mode():
            side = torch.cuda.Stream(example.device)
            side.wait_stream(torch.cuda.current_stream(example.device))
            with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
                for _ in range(warmup):
                    self.model(self.static_input)
            torch.cuda.current_stream(example.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_output = self.model(self.static_input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.static_input.shape:
            raise ValueError(f"captured for input {tuple(self.static_input.shape)}, got {tuple(x.shape)}")
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output


class CudaGraphs:
    """A CUDA graph per batch size, captured on first use: `CudaGraphs(model)(x)` for any batch."""

    def __init__(self, model: nn.Module):
        self.model = model.eval()
        self.runners: dict[tuple, CudaGraphRunner] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device)
        if key not in self.runners:
            self.runners[key] = CudaGraphRunner(self.model, x)
        return self.runners[key](x)
