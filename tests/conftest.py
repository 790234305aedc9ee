import functools
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


def train_tiny_digits_run(root: Path, per_class: int = 12, epochs: int = 2):
    """A tiny custom ViT trained by `vitzoo train` on real digits (scikit-learn's, 16x16): (run folder, train folder,
    val folder). The run folder holds model.json, so it is a model for eval, predict, bench, export and serve."""
    import sys

    pytest.importorskip("sklearn")
    sys.path.append(str(ROOT / "benchmarks"))
    from train_digits import write_digits

    from vitzoo.train import train

    train_dir, val_dir = write_digits(root / "digits", size=16, per_class=per_class)
    settings = dict(model="custom", width=32, depth=2, heads=2, patch_size=4, img_size=16, data=str(train_dir),
                    val=str(val_dir), epochs=epochs, batch_size=16, lr=5e-3, warmup_epochs=0.5, workers=0,
                    progress=False, plot=False, threads=1, output=str(root / "run"))  # fmt: skip
    train(settings)
    return root / "run", train_dir, val_dir


@functools.cache
def lively_case(name: str):
    """A model with random O(1)-activation weights, scikit-image's photographs through its eval transform, and its
    fp32 eager logits of them: what the inference-path tests compare a path with."""
    import vitzoo
    from vitzoo.infer import lively_init_, sample_photos

    model = lively_init_(vitzoo.create_model(name)).eval()
    photos = sample_photos(name)
    with torch.no_grad():
        reference = model(photos)
    return model, photos, reference
