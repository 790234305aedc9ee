"""The benchmark's "paddle" peer: PaddleClas's own ViT code under Paddle Inference (oneDNN), holding vitzoo's weights.

Tiny models with O(1) random weights, so a wrong transpose, eps, scale or head average cannot hide in the tolerance.
"""

import numpy as np
import pytest
import torch

from vitzoo.model import ViTConfig, build_model

from conftest import randomize_

pytest.importorskip("paddle")
from vitzoo.bench.paddle_inference import (  # noqa: E402  (needs paddle only when used; imported after the skip)
    PaddlePredictor,
    export_paddle,
    paddleclas_model,
    unavailable_reason,
)

if (_reason := unavailable_reason("fp32")) is not None:
    pytest.skip(_reason, allow_module_level=True)

TINY = ViTConfig(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
SHAPES = {
    "deit": TINY,
    "deit_distilled": TINY.replace(distilled=True),
    # PaddleClas's ViT_small style: no qkv bias, a qk_scale that is not head_dim**-0.5, mlp_ratio 3, eps 1e-5
    "vit_style": TINY.replace(qkv_bias=False, qk_scale=64**-0.5, mlp_ratio=3, norm_eps=1e-5),
}
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=list(SHAPES))
def exported(request, tmp_path_factory):
    model = randomize_(build_model(SHAPES[request.param])).eval()
    prefix = export_paddle(model, tmp_path_factory.mktemp("paddle") / request.param)
    return model, prefix


def images(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def vitzoo_logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_fp32_logits_match_vitzoo_at_any_batch_size(exported):
    model, prefix = exported
    predict = PaddlePredictor(prefix, "fp32")
    for batch in (4, 1, 7):  # the predictor is reshaped per call: a new batch size after the first must work
        x = images(batch, seed=batch)
        expected = vitzoo_logits(model, x)
        assert expected.abs().max() > 1.0  # O(1) logits
        got = predict(x)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=TOLERANCE, msg=f"batch {batch}")
    got = predict(images(3).numpy())  # numpy in, torch out
    torch.testing.assert_close(got, vitzoo_logits(model, images(3)), rtol=0, atol=TOLERANCE)


def test_bf16_close_to_fp32(exported):
    if (reason := unavailable_reason("bf16")) is not None:
        pytest.skip(reason)
    model, prefix = exported
    x = images(32, seed=2)
    expected = vitzoo_logits(model, x)
    got = PaddlePredictor(prefix, "bf16")(x)
    assert not torch.equal(got, expected)  # really reduced precision, not fp32 again
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=-1)
    assert cosine.min() >= 0.999, cosine.min()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9


def test_other_precisions_have_a_reason():
    for precision in ("int8", "fp16"):
        reason = unavailable_reason(precision)
        assert isinstance(reason, str) and precision in reason


def test_errors_name_the_prefix(exported, tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match="nothing"):
        PaddlePredictor(missing)
    with pytest.raises(RuntimeError, match="bf8"):
        PaddlePredictor(missing, precision="bf8")
    _, prefix = exported
    predict = PaddlePredictor(prefix)
    with pytest.raises(RuntimeError) as err:
        predict(np.zeros((1, 3, 48, 48), np.float32))  # the wrong image size: Paddle's own error, with our prefix
    assert str(prefix) in str(err.value)
    with pytest.raises(ValueError, match="B, C, H, W"):
        predict(np.zeros((3, 32, 32), np.float32))


def test_unexpressible_shapes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="qk_scale=0"):
        paddleclas_model(TINY.replace(qk_scale=0.0))
    model = build_model(TINY)
    model.head = torch.nn.Linear(64, 5)  # weights that no longer fit the config
    with pytest.raises(ValueError, match="head.weight"):
        export_paddle(model, tmp_path / "odd")
