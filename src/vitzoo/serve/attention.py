"""What the model looks at: the class token's attention and attention rollout, as numbers or a PNG overlay.

- class token: the last block's attention from the class token to each patch, averaged over heads.
- rollout (Abnar & Zuidema, 2020): each block's head-averaged attention plus the identity (the residual path),
  rows renormalised, multiplied through the blocks; the class token's row over the patches.
Both are computed in the model worker (from the fp32 model's softmax attention); the overlay is drawn in the HTTP
process from the small grids and the preprocessed image.
"""

from __future__ import annotations

import io

import numpy as np
import torch

MEMORY_BUDGET = 256 << 20  # bytes of attention maps held at once; larger batches go through in chunks


@torch.inference_mode()
def attention_grids(model, images: torch.Tensor) -> list[dict]:
    """For each image [3, H, W] of the batch: {"cls": [gh, gw], "rollout": [gh, gw]} nested lists of floats."""
    prefix, grid = model.num_prefix_tokens, model.cfg.grid_size
    tokens = prefix + grid * grid
    per_image = len(model.blocks) * model.cfg.num_heads * tokens * tokens * 4  # every block's maps, fp32
    chunk = max(1, MEMORY_BUDGET // per_image)  # ViT-L/16 at 384 keeps ~0.5 GB of maps per image
    answers = []
    for batch in images.split(chunk):
        maps = [m.float().mean(dim=1) for m in model.get_attention_maps(batch)]  # [B, N, N] per block
        cls = maps[-1][:, 0, prefix:]
        eye = torch.eye(tokens, dtype=torch.float32, device=batch.device)
        rollout = eye.expand_as(maps[0])
        for attn in maps:
            attn = 0.5 * attn + 0.5 * eye
            rollout = (attn / attn.sum(dim=-1, keepdim=True)) @ rollout
        rollout = rollout[:, 0, prefix:]
        for c, r in zip(cls.reshape(-1, grid, grid).tolist(), rollout.reshape(-1, grid, grid).tolist()):
            answers.append({"cls": c, "rollout": r})
    return answers


# a perceptual colour map (matplotlib's "inferno", 9 stops), so the page needs no plotting library
_STOPS = np.array([
    [0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
    [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164],
], dtype=np.float64)  # fmt: skip
_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_STOPS)), _STOPS[:, c]) for c in range(3)],
                axis=1).round().astype(np.uint8)  # fmt: skip


def input_pixels(image: np.ndarray, mean, std) -> np.ndarray:
    """The preprocessed image [3, H, W] (normalized) back to the uint8 RGB [H, W, 3] the model saw."""
    pixels = image.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return (pixels * 255).round().clip(0, 255).astype(np.uint8)


def overlay_png(pixels: np.ndarray, grid: list, alpha: float = 0.6) -> bytes:
    """`grid` (attention over the patches) stretched to min..max, coloured, upsampled and blended over `pixels`."""
    from PIL import Image

    heat = np.asarray(grid, dtype=np.float32)
    span = float(heat.max() - heat.min())
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    height, width = pixels.shape[:2]
    heat = np.asarray(Image.fromarray(heat).resize((width, height), Image.BILINEAR))
    colours = _LUT[(heat.clip(0, 1) * 255).astype(np.uint8)]
    blended = pixels.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha
    out = io.BytesIO()
    Image.fromarray(blended.round().clip(0, 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()
