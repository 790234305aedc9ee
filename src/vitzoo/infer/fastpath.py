"""The trimmed forward of a vitzoo model: the same logits as `model(x)` in eval mode, with less work.

It runs the model's own code (its `_tokens`, blocks, norm and `forward_head`), so what model.py computes is what the
fast, compile, cudagraph, ONNX and OpenVINO paths compute. What it changes, and why each is safe for logits (not for
features: hooks on the last block see only the prefix tokens):
- trim: the last block computes only the prefix tokens, the only ones the head reads (they still attend to every
  token); that block's MLP, projection and attention queries for the patch tokens would be thrown away.
- `fused_attn=False`: the blocks' explicit attention instead of SDPA (build_path asks for it for bf16 on a CPU
  without AMX, where oneDNN's bf16 matmuls beat SDPA's flash kernel; with AMX SDPA's is faster;
  benchmarks/openvino_study.md).
- `fused=True` (the `fast` eager backend): modules swapped for faster ones doing the same math, the blocks' code
  unchanged: CPU linears through oneDNN's matmul rather than the MKL sgemm that F.linear calls in fp32, and GELU in
  place. Call it under torch.inference_mode.

`TrimmedLogits` works on a copy of the model's module tree that holds the model's own parameters: the model is left
as it is, no weight is copied, and converting the model's dtype in place (as `nn.Module.to` does) converts this too.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..model import VisionTransformer

_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


class OneDNNLinear(nn.Module):
    """An nn.Linear's own weight and bias, multiplied on CPU by oneDNN (a private torch op, so only where it exists)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16):
            return _ONEDNN_LINEAR(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


class InplaceGELU(nn.Module):
    """GELU written into its input (a linear's fresh output in the MLP): one activation-sized buffer less."""

    def __init__(self, gelu: nn.GELU):
        super().__init__()
        self.approximate = gelu.approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.gelu_(x, approximate=self.approximate)


def _swap_in_fused(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is nn.Linear and _ONEDNN_LINEAR is not None:
            setattr(module, name, OneDNNLinear(child))
        elif type(child) is nn.GELU:
            setattr(module, name, InplaceGELU(child))
        else:
            _swap_in_fused(child)


class TrimmedLogits(nn.Module):
    """images -> the logits of `model` (a vitzoo VisionTransformer), computing only what the head reads."""

    def __init__(self, model: VisionTransformer, fused: bool = False, fused_attn: bool = True):
        super().__init__()
        if not isinstance(model, VisionTransformer):
            raise TypeError(f"the trimmed forward takes a vitzoo VisionTransformer, got {type(model).__name__}")
        shared = {id(t): t for t in (*model.parameters(), *model.buffers())}  # deepcopy hands these back as they are
        self.model = copy.deepcopy(model, memo=shared)
        for block in self.model.blocks:
            block.attn.fused_attn = fused_attn
        if fused:
            _swap_in_fused(self.model)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m._tokens(images)
        for block in m.blocks[:-1]:
            x = block(x)
        x = m.blocks[-1](x, num_outputs=m.num_prefix_tokens)
        return m.forward_head(m.norm(x))
