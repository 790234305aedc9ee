"""A checkpoint's head count, where its source states it, against the model's: tensors of a 3-head and a 6-head
DeiT-tiny have the same shapes, so only the statement can tell them apart. A mismatch is refused, naming both
numbers, and the model keeps its weights."""

import json

import pytest
import torch
from safetensors.torch import save_file

import vitzoo
from vitzoo.weights import WeightsError, convert, load_weights, write_pdparams

from conftest import randomize_
from test_weights_npz import google_arrays, write_npz

NAME = "DeiT_tiny_patch16_224"  # 192 wide, 3 heads


def six_heads():
    """DeiT-tiny's shapes with 6 heads of 32: every tensor fits a 3-head checkpoint."""
    return vitzoo.create_model(NAME, num_heads=6)


def refused(model, source, stated):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=rf"states {stated} attention heads; .* has 6") as e:
        load_weights(model, source)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    return str(e.value)


def test_hugging_face_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                                    intermediate_size=768, layer_norm_eps=1e-6, qkv_bias=True, num_labels=1000)  # fmt: skip
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "hf")
    assert "config.json" in refused(six_heads(), tmp_path / "hf", 3)
    load_weights(vitzoo.create_model(NAME), tmp_path / "hf")  # the right count loads


def test_google_npz_query_kernels(tmp_path):
    write_npz(tmp_path / "g.npz", google_arrays())  # DeiT-tiny shaped, 3 heads
    assert "query kernels" in refused(six_heads(), tmp_path / "g.npz", 3)
    load_weights(vitzoo.create_model(NAME), tmp_path / "g.npz")


def test_paddleclas_file_of_a_known_name(tmp_path):
    state = randomize_(vitzoo.create_model(NAME)).state_dict()
    write_pdparams(state, tmp_path / f"{NAME}_pretrained.pdparams")
    assert "PaddleClas's DeiT_tiny_patch16_224" in refused(six_heads(), tmp_path / f"{NAME}_pretrained.pdparams", 3)
    write_pdparams(state, tmp_path / "renamed.pdparams")  # a name that states nothing: the shapes are all we have
    load_weights(six_heads(), tmp_path / "renamed.pdparams")


def test_vitzoo_safetensors_carry_the_architecture(tmp_path):
    save_file(randomize_(vitzoo.create_model(NAME)).state_dict(), tmp_path / "plain.safetensors")
    convert(tmp_path / "plain.safetensors", tmp_path / "vitzoo.safetensors", vitzoo.create_model(NAME))
    from safetensors import safe_open

    with safe_open(tmp_path / "vitzoo.safetensors", "pt") as f:
        arch = json.loads(f.metadata()["vitzoo_arch"])
    assert arch["num_heads"] == 3 and arch["embed_dim"] == 192 and arch["depth"] == 12
    assert "vitzoo metadata" in refused(six_heads(), tmp_path / "vitzoo.safetensors", 3)
    report = load_weights(vitzoo.create_model(NAME), tmp_path / "vitzoo.safetensors")
    assert report.num_heads == 3
    load_weights(six_heads(), tmp_path / "plain.safetensors")  # timm's files say nothing: loaded as before
