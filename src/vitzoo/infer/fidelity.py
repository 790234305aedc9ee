"""How close a fast path's logits stay to fp32 eager's: cosine similarity on real photographs.

The photographs are scikit-image's sample images (installed with scikit-image, no download), preprocessed by the
model's own eval transform. Random weights at DeiT's init give near-zero activations, under which a lossy path looks
better than it is; `lively_init_` gives every layer O(1) activations instead.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

# the colour photographs among scikit-image's samples
SAMPLE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
    "motorcycle_left.png", "retina.jpg", "hubble_deep_field.jpg", "ihc.png",
)  # fmt: skip


def sample_photos(
    name: str | None, img_size: int | None = None, limit: int = len(SAMPLE_PHOTOS), transform=None
) -> torch.Tensor | None:
    """[n, 3, H, W] real photographs through model `name`'s eval transform (or `transform`); None without
    scikit-image."""
    try:
        import skimage.data
    except ImportError:
        return None
    from ..data.transforms import eval_transform

    folder = Path(skimage.data.__file__).parent
    transform = transform or eval_transform(name, img_size=img_size)
    return torch.stack([transform(folder / f) for f in SAMPLE_PHOTOS[:limit]])


def logits_cosine(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """The lowest, over the batch, cosine similarity between each image's logits and the reference's (in fp32)."""
    return torch.nn.functional.cosine_similarity(logits.float().cpu(), reference.float().cpu(), dim=-1).min().item()


@torch.no_grad()
def lively_init_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights under which activations stay O(1) through every block (fan-in scaled matrices, LayerNorm
    gains near 1, biases and tokens of a few tenths), so numerical error shows in the logits as it would with
    trained weights."""
    device = next(model.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)  # drawn where the weights live: fast on a GPU
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, device=device)
        if "norm" in name:
            value = 1 + 0.2 * noise if name.endswith("weight") else 0.2 * noise
        elif p.dim() >= 2 and name.endswith("weight"):  # Linear and Conv weights
            value = noise / math.sqrt(p[0].numel())
        else:  # biases, pos_embed and the prefix tokens
            value = (0.5 if p.dim() == 3 else 0.2) * noise
        p.copy_(value)
    return model
