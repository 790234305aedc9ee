"""Resample a pos_embed to another patch grid, so a 224 checkpoint builds a 384 model and the reverse."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


METHODS = ("timm", "deit")


def resample_pos_embed(
    pos_embed: torch.Tensor, new_grid: int, num_prefix_tokens: int, method: str = "timm"
) -> torch.Tensor:
    """[1, prefix + g*g, D] -> [1, prefix + new_grid^2, D]: bicubic on the 2-D grid, prefix tokens kept as they are.

    "timm": timm's `resample_abs_pos_embed` (bicubic, antialias=True): what timm does when it loads weights.
    "deit": DeiT's fine-tune code (`F.interpolate(..., 'bicubic', align_corners=False)`, no antialias). The two
    differ even when growing: antialiased bicubic uses the kernel a = -0.5, plain bicubic a = -0.75.
    """
    if method not in METHODS:
        raise ValueError(f"unknown pos_embed resampling {method!r}; choose {', '.join(METHODS)}")
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = math.isqrt(grid.shape[1])
    if old * old != grid.shape[1]:
        raise ValueError(f"pos_embed has {grid.shape[1]} patch tokens: not a square grid")
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    antialias = method == "timm"
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
