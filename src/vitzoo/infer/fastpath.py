"""The fast forward of a vitzoo model: the same logits as `model(x)` in eval mode, with less work.

What it changes, and why each is safe for logits (not for features: hooks on blocks see a trimmed last block):
- trim: the last block computes only the prefix tokens, the only ones the head reads (they still attend to every
  token); that block's MLP, projection and attention queries for the patch tokens would be thrown away.
- explicit bf16 attention on CPU: oneDNN's bf16 matmuls beat SDPA's flash kernel there (~1.5x measured on
  AVX512-BF16 without AMX).
- fused (eager only): residuals added into the branch's fresh output, GELU in place, the position-embedded tokens
  written into one buffer, and CPU linears through oneDNN's matmul, not MKL's that F.linear calls in fp32 (~10%
  faster on AVX-512 CPUs; a private torch op, so it is only used when it exists).

`TrimmedLogits(model)` (trim, and the bf16 attention choice) is what torch.compile and the ONNX export take: their
own passes fuse. `TrimmedLogits(model, fused=True)` is the `fast` eager backend. Call either under
torch.inference_mode (fused writes in place).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model import Block, DistilledVisionTransformer, VisionTransformer

_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def _linear(layer: nn.Linear, x: torch.Tensor, fused: bool) -> torch.Tensor:
    if fused and _ONEDNN_LINEAR is not None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16):
        return _ONEDNN_LINEAR(x, layer.weight, layer.bias, "none", [], "")
    return F.linear(x, layer.weight, layer.bias)


class TrimmedLogits(nn.Module):
    """images -> the logits of `model` (a vitzoo VisionTransformer in eval mode), computing only what the head reads.

    Holds the model's own modules (no copy of the weights): converting the model's dtype converts this too.
    """

    def __init__(self, model: VisionTransformer, fused: bool = False):
        super().__init__()
        if not isinstance(model, VisionTransformer):
            raise TypeError(f"the fast forward takes a vitzoo VisionTransformer, got {type(model).__name__}")
        self.model = model
        self.fused = fused
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = self._tokens(images)
        for block in m.blocks[:-1]:
            x = self._block(block, x)
        x = self._block(m.blocks[-1], x, num_outputs=m.num_prefix_tokens)
        x = m.norm(x)
        if isinstance(m, DistilledVisionTransformer) and isinstance(m.head, nn.Linear):
            cls_logits, dist_logits = _linear(m.head, x[:, 0], self.fused), _linear(m.head_dist, x[:, 1], self.fused)
            return cls_logits.add_(dist_logits).mul_(0.5) if self.fused else (cls_logits + dist_logits) / 2
        return m.forward_head(x)

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        if not self.fused:
            return m._tokens(images)
        x = m.patch_embed(images)
        n = m.num_prefix_tokens
        # one buffer written once: the position-embedded patches go straight into place (no concat, then add)
        tokens = x.new_empty(x.shape[0], n + x.shape[1], x.shape[2])
        torch.add(x, m.pos_embed[:, n:], out=tokens[:, n:])
        tokens[:, :n] = torch.cat(m._prefix_params(), dim=1) + m.pos_embed[:, :n]
        return tokens

    def _block(self, block: Block, x: torch.Tensor, num_outputs: int | None = None) -> torch.Tensor:
        fused, attn = self.fused, block.attn
        B, N, C = x.shape
        qkv = _linear(attn.qkv, block.norm1(x), fused)
        q, k, v = qkv.reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if num_outputs is not None:
            q, x = q[:, :, :num_outputs], x[:, :num_outputs]
        if x.dtype == torch.bfloat16 and x.device.type == "cpu":
            y = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        y = _linear(attn.proj, y.transpose(1, 2).reshape(B, q.shape[2], C), fused)
        x = y.add_(x) if fused else x + y
        h = _linear(block.mlp.fc1, block.norm2(x), fused)
        h = torch.ops.aten.gelu_(h) if fused else F.gelu(h)
        y = _linear(block.mlp.fc2, h, fused)
        return y.add_(x) if fused else x + y
