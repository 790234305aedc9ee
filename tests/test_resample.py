"""pos_embed resampling against its two upstream formulas: timm's loader and DeiT's fine-tune code."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

import vitzoo
from vitzoo.train.recipe import load_config
from vitzoo.weights.resample import resample_pos_embed


def deit_finetune_resample(pos_embed: torch.Tensor, new_size: int, num_extra_tokens: int) -> torch.Tensor:
    """facebookresearch/deit main.py's fine-tune interpolation, written out as DeiT has it."""
    embedding_size = pos_embed.shape[-1]
    orig_size = int((pos_embed.shape[-2] - num_extra_tokens) ** 0.5)
    extra_tokens = pos_embed[:, :num_extra_tokens]
    pos_tokens = pos_embed[:, num_extra_tokens:]
    pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
    pos_tokens = F.interpolate(pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False)
    pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra_tokens, pos_tokens), dim=1)


@pytest.mark.parametrize("prefix", [1, 2])
@pytest.mark.parametrize("old, new", [(14, 24), (24, 14)])  # 224 -> 384 and 384 -> 224 at patch 16
def test_both_methods_match_their_upstream_formula(prefix, old, new):
    pos = torch.randn(1, prefix + old * old, 64, generator=torch.Generator().manual_seed(old + prefix))
    timm_way = resample_abs_pos_embed(pos, (new, new), num_prefix_tokens=prefix)  # timm's defaults
    torch.testing.assert_close(resample_pos_embed(pos, new, prefix, "timm"), timm_way, atol=1e-6, rtol=0)
    deit_way = deit_finetune_resample(pos, new, prefix)
    torch.testing.assert_close(resample_pos_embed(pos, new, prefix, "deit"), deit_way, atol=1e-6, rtol=0)
    assert (timm_way - deit_way).abs().max() > 1e-2  # the two really differ, growing too: the choice matters


def test_load_weights_resamples_as_asked_and_names_it(tmp_path):
    src = vitzoo.create_model("DeiT_tiny_patch16_224")
    with torch.no_grad():
        src.pos_embed.normal_()
    save_file(src.state_dict(), tmp_path / "w224.safetensors")
    models = {}
    for method in ("timm", "deit"):
        model = vitzoo.create_model("DeiT_tiny_patch16_224", img_size=384, weights=tmp_path / "w224.safetensors",
                                    pos_embed_resample=method)  # fmt: skip
        assert f"({method})" in str(model.load_report)
        expected = resample_pos_embed(src.pos_embed.detach(), 24, 1, method)
        torch.testing.assert_close(model.pos_embed.detach(), expected, atol=0, rtol=0)
        models[method] = model
    assert not torch.equal(models["timm"].pos_embed, models["deit"].pos_embed)
    with pytest.raises(ValueError, match="unknown pos_embed resampling"):
        vitzoo.create_model("DeiT_tiny_patch16_224", weights=tmp_path / "w224.safetensors", pos_embed_resample="x")


def test_the_deit_384_finetune_recipe_resamples_as_deit():
    assert load_config("deit_384_finetune").pos_embed_resample == "deit"
    assert load_config(None).pos_embed_resample == "timm"  # loading elsewhere stays timm's, which timm users get
    assert math.isclose(load_config("deit_384_finetune").lr, 5e-6)
