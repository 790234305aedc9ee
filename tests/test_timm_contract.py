"""timm's model contract on all 15 models: the checks of timm's tests/test_models.py (forward, backward with every
parameter receiving a gradient, forward_features, reset_classifier(0)), torch.export with a dynamic batch, and what
timm users and libraries read: num_features, pretrained_cfg / default_cfg, feature_info."""

import pytest
import torch
from timm.data import create_transform, resolve_data_config

import vitzoo
from vitzoo.specs import get_spec

MODELS = vitzoo.list_models()


@pytest.mark.parametrize("name", MODELS)
def test_what_timm_reads(name):
    spec = get_spec(name)
    with torch.device("meta"):
        model = vitzoo.create_model(name)
    width, size = spec.arch.embed_dim, spec.arch.img_size
    assert model.num_features == width
    config = resolve_data_config(model=model)
    timm_protocol = vitzoo.eval_transform(name, "timm")
    assert config["input_size"] == (3, size, size)
    assert config["mean"] == tuple(spec.eval.mean) and config["std"] == tuple(spec.eval.std)
    assert config["crop_pct"] == (1.0 if size >= 384 else 0.9) and config["interpolation"] == "bicubic"
    assert model.default_cfg is model.pretrained_cfg
    assert model.pretrained_cfg["first_conv"] == "patch_embed.proj"
    heads = model.pretrained_cfg["classifier"]
    assert heads == (("head", "head_dist") if spec.arch.distilled else "head")
    # timm's own transform from that config is the model's timm protocol: the same resize and crop
    transform = create_transform(**config)
    resize, crop = transform.transforms[0], transform.transforms[1]
    assert resize.size == timm_protocol.resize_short and crop.size == (size, size)
    assert [f["module"] for f in model.feature_info] == [f"blocks.{i}" for i in range(spec.arch.depth)]
    assert all(f["num_chs"] == width and f["reduction"] == spec.arch.patch_size for f in model.feature_info)
    assert all(isinstance(model.get_submodule(f["module"]), vitzoo.Block) for f in model.feature_info)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_features_reset_and_export(name):
    """At a grid of 2x2 patches (the architecture is the same; only pos_embed's length changes), to keep the large
    models affordable on a CPU."""
    spec = get_spec(name)
    size = 2 * spec.arch.patch_size
    torch.manual_seed(0)
    model = vitzoo.create_model(name, num_classes=7, img_size=size)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad}"
    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 4 + model.num_prefix_tokens, model.num_features)
        model.reset_classifier(0)
        pooled = model(x)
    assert pooled.shape == (2, model.num_features)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    with torch.no_grad():
        x3 = torch.randn(3, 3, size, size)
        torch.testing.assert_close(exported.module()(x3), model(x3), atol=1e-5, rtol=0)
