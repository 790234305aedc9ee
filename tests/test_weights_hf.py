"""Hugging Face transformers checkpoints: written by transformers itself (random O(1) weights), loaded by vitzoo,
compared on the logits. Nothing is downloaded: the models are built from configs and saved to tmp folders.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import vitzoo
from vitzoo.weights import load_weights

from conftest import randomize_

transformers = pytest.importorskip("transformers")

# vitzoo's DeiT_tiny_patch16_224 shape; layer_norm_eps set to the 1e-6 vitzoo uses (transformers' default is 1e-12)
TINY = dict(
    hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768, image_size=224,
    patch_size=16, qkv_bias=True, layer_norm_eps=1e-6, hidden_act="gelu", num_labels=1000,
)  # fmt: skip
TOL = 1e-5  # an independent implementation agrees to a few 1e-6; a wrong LayerNorm eps moves logits ~1e-5


def hf_model(model_cls, config_cls, seed=0, model_kwargs=None, **overrides):
    config = config_cls(**{**TINY, **overrides})
    return randomize_(model_cls(config, **(model_kwargs or {})), seed=seed).eval()


def save(model, folder, **kwargs):
    model.save_pretrained(folder, **kwargs)
    return folder


def assert_close(ours, theirs):
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs().max().item()
    assert diff < TOL, f"max abs diff {diff:.3g}"


def state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


# -- transformers' models, built once ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_vit():
    return hf_model(transformers.ViTForImageClassification, transformers.ViTConfig)


@pytest.fixture(scope="module")
def vit_folder(hf_vit, tmp_path_factory):
    return save(hf_vit, tmp_path_factory.mktemp("hf_vit"))


@pytest.fixture(scope="module")
def hf_deit():
    return hf_model(transformers.DeiTForImageClassificationWithTeacher, transformers.DeiTConfig, seed=1)


@pytest.fixture(scope="module")
def deit_folder(hf_deit, tmp_path_factory):
    return save(hf_deit, tmp_path_factory.mktemp("hf_deit"))


@pytest.fixture(scope="module")
def hf_vit_logits(hf_vit):
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))  # the conftest `images`
    with torch.no_grad():
        return hf_vit(pixel_values=images).logits


def vit_file_tensors(vit_folder):
    return load_file(vit_folder / "model.safetensors")


# -- loads that must reproduce transformers' outputs ------------------------------------------------------------------
def test_vit_folder_safetensors(vit_folder, hf_vit_logits, images):
    assert (vit_folder / "model.safetensors").is_file()
    model = vitzoo.create_model("DeiT_tiny_patch16_224", weights=vit_folder).eval()
    report = model.load_report
    assert (report.format, report.layout) == ("huggingface", "huggingface")
    assert report.loaded == len(model.state_dict()) and not report.dropped
    assert "blocks.11.attn.qkv.weight" in report.mapped
    with torch.no_grad():
        assert_close(model(images), hf_vit_logits)


def test_vit_folder_pytorch_model_bin(vit_folder, hf_vit_logits, images, tmp_path):
    # transformers 5 writes safetensors even with safe_serialization=False, so write the .bin as older versions did
    shutil.copy(vit_folder / "config.json", tmp_path / "config.json")
    torch.save(vit_file_tensors(vit_folder), tmp_path / "pytorch_model.bin")
    model = vitzoo.create_model("DeiT_tiny_patch16_224", weights=tmp_path).eval()
    assert model.load_report.format == "huggingface"
    with torch.no_grad():
        assert_close(model(images), hf_vit_logits)


def test_vit_folder_sharded(hf_vit, hf_vit_logits, images, tmp_path):
    save(hf_vit, tmp_path, max_shard_size="5MB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    model = vitzoo.create_model("DeiT_tiny_patch16_224", weights=tmp_path).eval()
    with torch.no_grad():
        assert_close(model(images), hf_vit_logits)


def test_bare_safetensors_file(vit_folder, hf_vit_logits, images, tmp_path):
    file = tmp_path / "weights.safetensors"
    shutil.copy(vit_folder / "model.safetensors", file)
    model = vitzoo.create_model("DeiT_tiny_patch16_224", weights=file).eval()
    assert (model.load_report.format, model.load_report.layout) == ("safetensors", "huggingface")
    with torch.no_grad():
        assert_close(model(images), hf_vit_logits)


def test_transformers5_in_memory_names(hf_vit, hf_vit_logits, images, tmp_path):
    """torch.save(model.state_dict()) of a transformers 5 model: its in-memory names (layers.{i}.attention.q_proj)."""
    state = hf_vit.state_dict()
    if not any(".layers.0.attention.q_proj." in k for k in state):
        pytest.skip("this transformers keeps the hub names in memory")
    file = tmp_path / "state_dict.pth"
    torch.save(state, file)
    model = vitzoo.create_model("DeiT_tiny_patch16_224", weights=file).eval()
    assert model.load_report.layout == "huggingface"
    with torch.no_grad():
        assert_close(model(images), hf_vit_logits)


def test_deit_with_teacher(hf_deit, deit_folder, images):
    with torch.no_grad():
        theirs = hf_deit(pixel_values=images)
    model = vitzoo.create_model("DeiT_tiny_distilled_patch16_224", weights=deit_folder).eval()
    assert model.load_report.format == "huggingface"
    with torch.no_grad():
        assert_close(model(images), theirs.logits)  # eval: the average of the two heads
        model.train().set_distilled_training(True)  # dropout and drop path are 0: training mode is deterministic
        cls_logits, dist_logits = model(images)
    assert_close(cls_logits, theirs.cls_logits)
    assert_close(dist_logits, theirs.distillation_logits)


@pytest.mark.slow
def test_vit_base_patch32_384(tmp_path):
    """A full-size ViT at 384 (about 10 s on 2 cores): the base width, 12 heads, a 12x12 grid."""
    hf = hf_model(
        transformers.ViTForImageClassification, transformers.ViTConfig, seed=2, hidden_size=768,
        num_attention_heads=12, intermediate_size=3072, image_size=384, patch_size=32,
    )  # fmt: skip
    model = vitzoo.create_model("ViT_base_patch32_384", weights=save(hf, tmp_path)).eval()
    image = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_close(model(image), hf(pixel_values=image).logits)


def test_bare_backbone_without_pooler(images, tmp_path):
    """A ViTModel (no classifier) loads into a headless model: the pre-logits are its normalised class token."""
    hf = hf_model(transformers.ViTModel, transformers.ViTConfig, seed=3, model_kwargs={"add_pooling_layer": False})
    keys = load_file(save(hf, tmp_path) / "model.safetensors")
    assert not any(k.startswith("vit.") for k in keys)  # no prefix at all
    model = vitzoo.create_model("DeiT_tiny_patch16_224", num_classes=0, weights=tmp_path).eval()
    with torch.no_grad():
        assert_close(model(images), hf(pixel_values=images).last_hidden_state[:, 0])


# -- files that must be refused, naming the file, leaving the model as it was -----------------------------------------
@pytest.fixture
def tiny_vit():
    model = randomize_(vitzoo.create_model("DeiT_tiny_patch16_224"), seed=5)
    return model, state_of(model)


def test_folder_without_weights(tiny_vit, vit_folder, tmp_path):
    model, before = tiny_vit
    shutil.copy(vit_folder / "config.json", tmp_path / "config.json")
    with pytest.raises(vitzoo.WeightsError, match="model.safetensors") as err:
        load_weights(model, tmp_path)
    assert str(tmp_path) in str(err.value)
    assert_unchanged(model, before)


def test_config_not_json(tiny_vit, vit_folder, tmp_path):
    model, before = tiny_vit
    shutil.copy(vit_folder / "model.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text('{"model_type": "vit", ')
    with pytest.raises(vitzoo.WeightsError, match="JSON") as err:
        load_weights(model, tmp_path)
    assert str(tmp_path / "config.json") in str(err.value)
    assert_unchanged(model, before)


def test_config_of_another_model(tiny_vit, vit_folder, tmp_path):
    model, before = tiny_vit
    shutil.copy(vit_folder / "model.safetensors", tmp_path / "model.safetensors")
    config = json.loads((vit_folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "swin"}))
    with pytest.raises(vitzoo.WeightsError, match="'swin'") as err:
        load_weights(model, tmp_path)
    assert str(tmp_path / "config.json") in str(err.value)
    assert_unchanged(model, before)


@pytest.mark.parametrize("as_folder", [False, True], ids=["file", "folder"])
def test_missing_layer_tensor(tiny_vit, vit_folder, tmp_path, as_folder):
    model, before = tiny_vit
    tensors = vit_file_tensors(vit_folder)
    del tensors["vit.encoder.layer.5.intermediate.dense.weight"]
    if as_folder:
        shutil.copy(vit_folder / "config.json", tmp_path / "config.json")
        source = tmp_path
        save_file(tensors, tmp_path / "model.safetensors")
    else:
        source = tmp_path / "broken.safetensors"
        save_file(tensors, source)
    with pytest.raises(vitzoo.WeightsError, match=r"vit\.encoder\.layer\.5\.intermediate\.dense\.weight") as err:
        load_weights(model, source)
    assert str(source) in str(err.value)
    assert_unchanged(model, before)


def test_missing_one_of_query_key_value(tiny_vit, vit_folder, tmp_path):
    model, before = tiny_vit
    tensors = vit_file_tensors(vit_folder)
    del tensors["vit.encoder.layer.3.attention.attention.value.bias"]
    file = tmp_path / "no_value.safetensors"
    save_file(tensors, file)
    with pytest.raises(vitzoo.WeightsError, match="layer 3 .*not of value") as err:
        load_weights(model, file)
    assert str(file) in str(err.value)
    assert_unchanged(model, before)


def test_pooler_is_reported_not_dropped(tmp_path):
    """A ViTModel's pooler (dense + tanh) has no place in vitzoo: refusing beats silently losing a layer."""
    hf = hf_model(transformers.ViTModel, transformers.ViTConfig, seed=4, model_kwargs={"add_pooling_layer": True})
    model = vitzoo.create_model("DeiT_tiny_patch16_224", num_classes=0)
    before = state_of(model)
    with pytest.raises(vitzoo.WeightsError, match=r"unexpected 2: pooler\.dense\.bias, pooler\.dense\.weight"):
        load_weights(model, save(hf, tmp_path))
    assert_unchanged(model, before)


def test_deit_single_head_with_distillation_token(tmp_path):
    """transformers' DeiTForImageClassification: two prefix tokens, one head; no vitzoo model has that shape."""
    hf = hf_model(transformers.DeiTForImageClassification, transformers.DeiTConfig, seed=6)
    model = vitzoo.create_model("DeiT_tiny_distilled_patch16_224")
    before = state_of(model)
    with pytest.raises(vitzoo.WeightsError, match="DeiTForImageClassificationWithTeacher") as err:
        load_weights(model, save(hf, tmp_path))
    assert str(tmp_path) in str(err.value)
    assert_unchanged(model, before)
