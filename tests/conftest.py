import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SEED_PAGE = ROOT.parent / "shared" / "seed" / "000_2a49b8a5e6560a2b.txt"


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights that make every part of the network matter: O(1) activations, not the near-zero init.

    With DeiT's init (std 0.02) logits sit near 0 and a wrong GELU, scale or eps hides under any tolerance.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        leaf = name.rsplit(".", 1)[-1]
        if "norm" in name and leaf == "weight":
            p.copy_(1 + 0.2 * noise)
        elif leaf == "bias":
            p.copy_(0.2 * noise)
        elif p.dim() >= 2 and leaf == "weight":
            p.copy_(noise / math.sqrt(p[0].numel()))
        else:  # pos_embed, cls_token, dist_token
            p.copy_(0.5 * noise)
    return model


@pytest.fixture
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
