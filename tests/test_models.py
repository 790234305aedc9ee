"""The 15 models' structure against their definitions, and the timm-style features users rely on.

The definitions are PaddleClas's (`ppcls/arch/backbone/model_zoo/vision_transformer.py` and
`distilled_vision_transformer.py`), after ViT (arXiv:2010.11929) and DeiT (arXiv:2012.12877).
"""

import pytest
import torch

import vitzoo
from vitzoo.model import DropPath

from conftest import randomize_

# PaddleClas's configurations: width, depth, heads, MLP hidden, qkv bias, scale, LN eps, tokens, state dict keys.
# ViT_small_patch16_224 is PaddleClas's (and early timm's) 768-wide model: qk_scale 768**-0.5, eps 1e-5, no qkv bias.
ARCH = {
    "ViT_small_patch16_224": (768, 8, 8, 2304, False, 768**-0.5, 1e-5, 197, 96),
    "ViT_base_patch16_224": (768, 12, 12, 3072, True, 0.125, 1e-6, 197, 152),
    "ViT_base_patch16_384": (768, 12, 12, 3072, True, 0.125, 1e-6, 577, 152),
    "ViT_base_patch32_384": (768, 12, 12, 3072, True, 0.125, 1e-6, 145, 152),
    "ViT_large_patch16_224": (1024, 24, 16, 4096, True, 0.125, 1e-6, 197, 296),
    "ViT_large_patch16_384": (1024, 24, 16, 4096, True, 0.125, 1e-6, 577, 296),
    "ViT_large_patch32_384": (1024, 24, 16, 4096, True, 0.125, 1e-6, 145, 296),
    "DeiT_tiny_patch16_224": (192, 12, 3, 768, True, 0.125, 1e-6, 197, 152),
    "DeiT_small_patch16_224": (384, 12, 6, 1536, True, 0.125, 1e-6, 197, 152),
    "DeiT_base_patch16_224": (768, 12, 12, 3072, True, 0.125, 1e-6, 197, 152),
    "DeiT_base_patch16_384": (768, 12, 12, 3072, True, 0.125, 1e-6, 577, 152),
    "DeiT_tiny_distilled_patch16_224": (192, 12, 3, 768, True, 0.125, 1e-6, 198, 155),
    "DeiT_small_distilled_patch16_224": (384, 12, 6, 1536, True, 0.125, 1e-6, 198, 155),
    "DeiT_base_distilled_patch16_224": (768, 12, 12, 3072, True, 0.125, 1e-6, 198, 155),
    "DeiT_base_distilled_patch16_384": (768, 12, 12, 3072, True, 0.125, 1e-6, 578, 155),
}


def meta_model(name, **kwargs):
    with torch.device("meta"):
        return vitzoo.create_model(name, **kwargs)


def test_list_models_is_the_seed_order():
    assert vitzoo.list_models() == list(ARCH)
    assert vitzoo.list_models("distilled") == [n for n in ARCH if "distilled" in n]
    assert vitzoo.list_models("vit_large*") == [n for n in ARCH if n.startswith("ViT_large")]


@pytest.mark.parametrize("name", list(ARCH))
def test_architecture_matches_the_definitions(name):
    dim, depth, heads, hidden, qkv_bias, scale, eps, tokens, keys = ARCH[name]
    model = meta_model(name)
    sd = model.state_dict()
    assert len(sd) == keys
    assert sd["pos_embed"].shape == (1, tokens, dim)
    assert len(model.blocks) == depth
    for block in model.blocks:
        assert block.attn.num_heads == heads
        assert block.attn.scale == pytest.approx(scale, rel=1e-12)
        assert (block.attn.qkv.bias is not None) == qkv_bias
        assert block.attn.qkv.weight.shape == (3 * dim, dim)
        assert block.mlp.fc1.weight.shape == (hidden, dim)
        assert block.mlp.act.approximate == "none"  # exact erf GELU
        assert block.norm1.eps == block.norm2.eps == eps
    assert model.norm.eps == eps
    distilled = "distilled" in name
    assert ("dist_token" in sd) == ("head_dist.weight" in sd) == distilled
    assert sd["head.weight"].shape == (1000, dim)


def test_names_match_case_insensitively():
    assert type(meta_model("deit_tiny_distilled_patch16_224")) is vitzoo.DistilledVisionTransformer
    assert meta_model("VIT_BASE_PATCH16_224").model_name == "ViT_base_patch16_224"


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(vitzoo.UnknownModelError) as err:
        vitzoo.create_model("ViT_huge_patch14_224")
    message = str(err.value)
    assert "ViT_huge_patch14_224" in message
    assert all(name in message for name in vitzoo.list_models())


def test_img_size_not_divisible_by_patch():
    with pytest.raises(ValueError, match=r"img_size 300 is not divisible by the patch size 16.*288 or 304"):
        vitzoo.create_model("DeiT_tiny_patch16_224", img_size=300)
    with pytest.raises(ValueError, match="patch size 32"):
        meta_model("ViT_base_patch32_384", img_size=400)


def test_wrong_input_size_names_the_expected_size():
    model = vitzoo.create_model("DeiT_tiny_patch16_224")
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 3, 224, 224\), got \(1, 3, 256, 256\)"):
        model(torch.zeros(1, 3, 256, 256))
    with pytest.raises(ValueError, match=r"\(B, 3, 224, 224\)"):
        model(torch.zeros(1, 1, 224, 224))


def test_other_img_size_sizes_the_pos_embed_grid():
    model = vitzoo.create_model("DeiT_tiny_distilled_patch16_224", img_size=384, num_classes=10).eval()
    assert model.pos_embed.shape == (1, 24 * 24 + 2, 192)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 384)).shape == (1, 10)
    assert meta_model("ViT_base_patch32_384", img_size=224).pos_embed.shape == (1, 7 * 7 + 1, 768)


def test_distilled_heads_eval_average_and_training_pair(images):
    model = randomize_(vitzoo.create_model("DeiT_tiny_distilled_patch16_224"))
    model.eval()
    with torch.no_grad():
        tokens = model.forward_features(images)
        cls_logits, dist_logits = model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])
        torch.testing.assert_close(model(images), (cls_logits + dist_logits) / 2)
        model.train()  # training without distillation switched on: still the average, as timm
        torch.testing.assert_close(model(images), (cls_logits + dist_logits) / 2)
        model.set_distilled_training(True)
        out = model(images)
        assert isinstance(out, tuple)
        torch.testing.assert_close(out[0], cls_logits)
        torch.testing.assert_close(out[1], dist_logits)
        model.eval()  # eval mode always averages
        torch.testing.assert_close(model(images), (cls_logits + dist_logits) / 2)


def test_attention_maps_explicit_path_equals_sdpa(images):
    model = randomize_(vitzoo.create_model("DeiT_tiny_patch16_224")).eval()
    with torch.no_grad():
        sdpa_logits = model(images)
        maps = model.get_attention_maps(images)
        assert len(maps) == 12
        assert maps[0].shape == (2, 3, 197, 197)
        torch.testing.assert_close(maps[5].sum(-1), torch.ones(2, 3, 197))
        last = model.get_attention_maps(images, indices=[-1])
        torch.testing.assert_close(last[0], maps[11])
        # the explicit path gives the same block outputs as the SDPA path
        x = model._tokens(images)
        for block in model.blocks:
            fused = block(x)
            explicit, attn = block(x, return_attn=True)
            torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
            x = fused
        # fused_attn off (as timm's flag) takes the explicit path for the whole model
        for block in model.blocks:
            block.attn.fused_attn = False
        torch.testing.assert_close(model(images), sdpa_logits, atol=1e-5, rtol=1e-5)
        # and the map is softmax(q k^T * scale), computed here from the qkv weights
        x = model._tokens(images)
        qkv = model.blocks[0].attn.qkv(model.blocks[0].norm1(x)).reshape(2, 197, 3, 3, 64)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
        expected = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1)
        torch.testing.assert_close(maps[0], expected, atol=1e-5, rtol=1e-5)


def test_a_block_asked_for_its_first_outputs_gives_those_of_the_full_block(images):
    model = randomize_(vitzoo.create_model("DeiT_tiny_distilled_patch16_224")).eval()
    with torch.no_grad():
        x = model._tokens(images)
        block = model.blocks[0]
        torch.testing.assert_close(block(x, num_outputs=2), block(x)[:, :2], atol=1e-5, rtol=0)
        trimmed, attn = block(x, return_attn=True, num_outputs=2)
        assert trimmed.shape == (2, 2, 192) and attn.shape == (2, 3, 2, 198)  # two queries over every token


def test_forward_intermediates_options(images):
    model = randomize_(vitzoo.create_model("DeiT_tiny_distilled_patch16_224")).eval()
    with torch.no_grad():
        only = model.forward_intermediates(images, indices=[1, 4], intermediates_only=True, output_fmt="NLC")
        assert [t.shape for t in only] == [(2, 196, 192)] * 2
        final, inter = model.forward_intermediates(images, indices=2, return_prefix_tokens=True)
        assert len(inter) == 2
        patches, prefix = inter[-1]
        assert patches.shape == (2, 192, 14, 14) and prefix.shape == (2, 2, 192)
        torch.testing.assert_close(final, model.forward_features(images))
    with pytest.raises(IndexError, match="out of range for a model of 12 blocks"):
        model.forward_intermediates(images, indices=[12])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(images, output_fmt="NHWC")


@pytest.mark.parametrize("name", ["DeiT_tiny_patch16_224", "DeiT_tiny_distilled_patch16_224"])
def test_reset_classifier(name, images):
    model = vitzoo.create_model(name).eval()
    model.reset_classifier(7)
    assert model.head.weight.shape == (7, 192)
    if "distilled" in name:
        assert model.head_dist.weight.shape == (7, 192)
    with torch.no_grad():
        assert model(images).shape == (2, 7)
        model.reset_classifier(0)
        pre = model(images)
        torch.testing.assert_close(pre, model.forward_head(model.forward_features(images), pre_logits=True))
        assert pre.shape == (2, 192)


def test_gradient_checkpointing_gives_the_same_gradients(images):
    model = randomize_(vitzoo.create_model("DeiT_tiny_distilled_patch16_224")).train()
    model.set_distilled_training(True)

    def grads():
        model.zero_grad()
        cls_logits, dist_logits = model(images)
        (cls_logits.square().mean() + dist_logits.mean()).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    for k in plain:
        torch.testing.assert_close(checkpointed[k], plain[k], atol=1e-6, rtol=1e-5)
    assert plain["dist_token"].abs().sum() > 0


def test_no_weight_decay_names_are_parameters():
    plain, distilled = meta_model("DeiT_tiny_patch16_224"), meta_model("DeiT_tiny_distilled_patch16_224")
    assert plain.no_weight_decay() == {"pos_embed", "cls_token"}
    assert distilled.no_weight_decay() == {"pos_embed", "cls_token", "dist_token"}
    assert distilled.no_weight_decay() <= dict(distilled.named_parameters()).keys()


def test_init_and_stochastic_depth():
    torch.manual_seed(0)
    model = vitzoo.create_model("DeiT_small_patch16_224", drop_path_rate=0.1)
    rates = [b.drop_path.p if isinstance(b.drop_path, DropPath) else 0.0 for b in model.blocks]
    assert rates == pytest.approx([0.1 * i / 11 for i in range(12)])
    w = model.blocks[3].mlp.fc1.weight
    assert abs(w.std().item() - 0.02) < 0.002 and w.abs().max() <= 2.0
    assert model.blocks[3].mlp.fc1.bias.abs().max() == 0
    assert abs(model.pos_embed.std().item() - 0.02) < 0.003
    assert torch.equal(model.norm.weight, torch.ones(384))
    # stochastic depth drops whole samples in training only
    x = torch.ones(1000, 4, 8)
    dp = DropPath(0.25).train()
    kept = dp(x)[:, 0, 0]
    assert set(kept.unique().tolist()) <= {0.0, torch.tensor(1 / 0.75).item()}
    assert 0.18 < (kept == 0).float().mean() < 0.32
    assert torch.equal(dp.eval()(x), x)


def test_model_moves_dtype_and_runs_in_bfloat16(images):
    model = vitzoo.create_model("DeiT_tiny_patch16_224").eval().to(torch.bfloat16)
    with torch.no_grad():
        assert model(images.bfloat16()).dtype == torch.bfloat16
