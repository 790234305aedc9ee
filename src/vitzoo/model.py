"""The Vision Transformer of ViT and DeiT, and DeiT's distilled variant.

One implementation for all 15 models. Parameter names are timm's (shared by DeiT and PaddleClas), so a state dict
moves between vitzoo, timm and DeiT unchanged. The architecture is ViT's (Dosovitskiy et al., arXiv:2010.11929;
google-research/vision_transformer) and DeiT's (Touvron et al., arXiv:2012.12877; facebookresearch/deit), with each
model's configuration as PaddleClas defines it (`ppcls/arch/backbone/model_zoo/vision_transformer.py` and
`distilled_vision_transformer.py`) and the layout of timm's `timm/models/vision_transformer.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class ViTConfig:
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None  # None: head_dim ** -0.5
    norm_eps: float = 1e-6
    distilled: bool = False
    num_classes: int = 1000
    in_chans: int = 3
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            lower = self.img_size // self.patch_size * self.patch_size
            raise ValueError(
                f"img_size {self.img_size} is not divisible by the patch size {self.patch_size}; "
                f"use a multiple of {self.patch_size}, e.g. {max(lower, self.patch_size)} or {lower + self.patch_size}"
            )

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return 2 if self.distilled else 1

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2 + self.num_prefix_tokens

    def replace(self, **changes) -> "ViTConfig":
        return replace(self, **changes)


class PatchEmbed(nn.Module):
    """Image [B, C, H, W] -> patch tokens [B, Np, D] by a strided convolution."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.img_size, self.img_size) or x.shape[1] != self.proj.in_channels:
            raise ValueError(
                f"expected input of shape (B, {self.proj.in_channels}, {self.img_size}, {self.img_size}), "
                f"got {tuple(x.shape)}; build the model with img_size={x.shape[-1]} to use another size"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool, qk_scale: float | None, attn_drop: float, proj_drop: float
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else self.head_dim**-0.5
        # as timm: True runs F.scaled_dot_product_attention, False the explicit softmax(q k^T * scale) v
        self.fused_attn = True
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, return_attn: bool = False, num_queries: int | None = None):
        """Self-attention over x [B, N, C]; with `num_queries`, only the first that many tokens' outputs (they still
        attend to every token). `return_attn` also returns the attention map (through the explicit path)."""
        B, N, C = x.shape
        # qkv rows are [q | k | v], each head-contiguous: q, k, v are views [B, heads, N, head_dim], no copies.
        qkv = self.qkv(x)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if num_queries is not None:
            q = q[:, :, :num_queries]
        drop = self.attn_drop if self.training else 0.0
        if self.fused_attn and not return_attn:
            attn = None
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = F.dropout(attn, drop) @ v
        # SDPA's CPU and CUDA kernels return [B, heads, n, d] as a transposed [B, n, heads, d]: the reshape is a view
        x = self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, q.shape[2], C)))
        return (x, attn) if return_attn else x


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf); the tanh approximation is off by ~5e-4
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig, drop_path: float):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.qk_scale, cfg.attn_drop_rate, cfg.drop_rate)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.drop_rate)

    def forward(self, x: torch.Tensor, return_attn: bool = False, num_outputs: int | None = None):
        """x [B, N, D] -> [B, N, D]; with `num_outputs`, only the first that many tokens' outputs [B, n, D]."""
        if return_attn:
            y, attn = self.attn(self.norm1(x), return_attn=True, num_queries=num_outputs)
        else:
            y, attn = self.attn(self.norm1(x), num_queries=num_outputs), None
        if num_outputs is not None:
            x = x[:, :num_outputs]
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, attn) if return_attn else x


class VisionTransformer(nn.Module):
    """ViT: patch tokens plus a class token, pre-norm Transformer blocks, a linear head on the class token."""

    def __init__(self, cfg: ViTConfig, init: bool = True):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.embed_dim = self.num_features = cfg.embed_dim  # timm's name for the pre-logits width
        # timm's feature contract (detection and segmentation heads read it): each block's output tokens
        self.feature_info = [
            {"num_chs": cfg.embed_dim, "reduction": cfg.patch_size, "module": f"blocks.{i}"} for i in range(cfg.depth)
        ]
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.embed_dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        # stochastic depth grows linearly over the blocks (plain Python: the model may be built on the meta device)
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head = self._new_head(cfg.num_classes)
        if init:
            self.init_weights()

    # -- construction ---------------------------------------------------------------------------------------------
    def _new_head(self, num_classes: int) -> nn.Module:
        """A head for `num_classes` classes (Identity for 0), initialised, on the model's device and dtype."""
        if num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(self.embed_dim, num_classes, device=self.cls_token.device, dtype=self.cls_token.dtype)
        if not head.weight.is_meta:
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        return head

    @torch.no_grad()
    def init_weights(self) -> None:
        """DeiT's init for training from scratch: trunc_normal(0.02) tokens and Linear weights, zero biases."""
        if self.pos_embed.is_meta:
            return
        for p in self._prefix_params() + [self.pos_embed]:
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _prefix_params(self) -> list[nn.Parameter]:
        return [self.cls_token]

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for `num_classes` classes (0 removes it: the model then returns pre-logits)."""
        self.num_classes = num_classes
        self.head = self._new_head(num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    # -- forward --------------------------------------------------------------------------------------------------
    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with the prefix token(s) in front and the position embedding added to all of them."""
        x = self.patch_embed(x)
        prefix = torch.cat(self._prefix_params(), dim=1)
        return self.pos_drop(torch.cat((prefix.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed)

    def _run_block(self, block: Block, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> final normalised tokens [B, N, D] (prefix tokens first)."""
        x = self._tokens(x)
        for block in self.blocks:
            x = self._run_block(block, x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; the same computation in every mode (vitzoo.infer's fast paths trim and fuse, and say so)."""
        return self.forward_head(self.forward_features(x))

    # -- inspection -----------------------------------------------------------------------------------------------
    def _block_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        depth = len(self.blocks)
        if indices is None:
            return list(range(depth))
        if isinstance(indices, int):  # the last n blocks, as timm
            if not 0 < indices <= depth:
                raise ValueError(f"asked for the last {indices} blocks; the model has {depth}")
            return list(range(depth - indices, depth))
        for i in indices:
            if not -depth <= i < depth:
                raise IndexError(f"block index {i} out of range for a model of {depth} blocks")
        return sorted({i % depth for i in indices})

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        return_prefix_tokens: bool = False,
        intermediates_only: bool = False,
    ):
        """Outputs of chosen blocks (all by default; an int n means the last n; negative indices count from the end).

        `output_fmt` "NCHW" gives patch tokens as a [B, D, h, w] map, "NLC" the token sequence [B, Np, D].
        With `return_prefix_tokens`, each entry is (patch_output, prefix_tokens [B, n_prefix, D]).
        Returns (final features, intermediates) like timm, or only the intermediates.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        wanted = self._block_indices(indices)
        grid = self.cfg.grid_size
        x = self._tokens(x)
        intermediates = []
        last = len(self.blocks) - 1 if not intermediates_only else wanted[-1]
        for i, block in enumerate(self.blocks[: last + 1]):
            x = self._run_block(block, x)
            if i in wanted:
                y = self.norm(x) if norm else x
                prefix, patches = y[:, : self.num_prefix_tokens], y[:, self.num_prefix_tokens :]
                if output_fmt == "NCHW":
                    patches = patches.reshape(x.shape[0], grid, grid, -1).permute(0, 3, 1, 2)
                intermediates.append((patches, prefix) if return_prefix_tokens else patches)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def get_attention_maps(self, x: torch.Tensor, indices: int | Sequence[int] | None = None) -> list[torch.Tensor]:
        """Softmax attention [B, heads, N, N] of the chosen blocks (all by default), through the explicit path."""
        wanted = self._block_indices(indices)
        x = self._tokens(x)
        maps = []
        for i, block in enumerate(self.blocks[: wanted[-1] + 1]):
            if i in wanted:
                x, attn = block(x, return_attn=True)
                maps.append(attn)
            else:
                x = block(x)
        return maps


class DistilledVisionTransformer(VisionTransformer):
    """DeiT's distilled model: a second prefix token whose output feeds a second head, trained from a teacher.

    Eval returns the average of the two heads. With `set_distilled_training(True)`, training mode returns the pair
    (cls_logits, dist_logits) for the distillation loss, as DeiT does.
    """

    def __init__(self, cfg: ViTConfig, init: bool = True):
        super().__init__(cfg.replace(distilled=True), init=False)
        self.distilled_training = False
        self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.head_dist = self._new_head(cfg.num_classes)
        if init:
            self.init_weights()

    def _prefix_params(self) -> list[nn.Parameter]:
        return [self.cls_token, self.dist_token]

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"dist_token"}

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        self.head_dist = self._new_head(num_classes)

    def set_distilled_training(self, enable: bool = True) -> None:
        self.distilled_training = enable

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        if pre_logits:
            return (x[:, 0] + x[:, 1]) / 2
        cls_logits, dist_logits = self.head(x[:, 0]), self.head_dist(x[:, 1])
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return cls_logits, dist_logits
        return (cls_logits + dist_logits) / 2


def build_model(cfg: ViTConfig) -> VisionTransformer:
    return (DistilledVisionTransformer if cfg.distilled else VisionTransformer)(cfg)
