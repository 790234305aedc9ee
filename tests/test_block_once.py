"""The transformer block is written once, in model.py: a change planted there reaches every inference path.

Each path is built after the plant (the exported ones trace the model as it is then) and must give the planted eager
model's logits, not the unplanted ones.
"""

import copy

import pytest
import torch

from vitzoo.infer import InferencePath, build_path, lively_init_, logits_cosine
from vitzoo.model import Mlp, ViTConfig, build_model

TINY = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
PATHS = ["fp32-eager", "fp32-fast", pytest.param("fp32-compile", marks=pytest.mark.slow), "fp32-onnxruntime",
         "fp32-openvino", "bf16-fast"]  # fmt: skip


@pytest.mark.parametrize("name", PATHS)
def test_a_change_planted_in_the_block_reaches_every_path(name, monkeypatch):
    path = InferencePath.parse(name)
    reason = path.unavailable_reason()
    if reason:
        pytest.skip(reason)
    model = lively_init_(build_model(TINY)).eval()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = model(images)
    mlp_forward = Mlp.forward
    monkeypatch.setattr(Mlp, "forward", lambda self, x: 2 * mlp_forward(self, x))  # the MLP branch doubled
    with torch.inference_mode():
        planted = model(images)
    assert (planted - before).abs().max() > 0.5  # the plant moves the logits well beyond any path's rounding

    logits = build_path(copy.deepcopy(model), path.precision, path.backend)(images)
    if path.precision == "fp32":
        torch.testing.assert_close(logits, planted, atol=1e-4, rtol=0)
    else:
        assert logits_cosine(logits, planted) >= 0.999
        assert (logits - planted).abs().max() < (logits - before).abs().max() / 10
