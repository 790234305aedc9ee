"""Numerical parity with timm, an independent implementation, on the same random weights.

timm is configured from its own registered architectures (not from vitzoo's spec table), so a wrong depth, width,
eps or bias in the table shows up here. ViT_small_patch16_224 cannot be expressed by current timm (its attention scale
is 768^-0.5, the full width): timm's VisionTransformer is built to its shape and its explicit attention path given
that scale by hand.
"""

import copy
from functools import partial

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

import vitzoo
from vitzoo.infer import build_path

from conftest import randomize_

# PaddleClas name -> timm's registered architecture of the same shape (independent of vitzoo.specs)
TIMM_NAMES = {
    "ViT_base_patch16_224": "vit_base_patch16_224",
    "ViT_base_patch16_384": "vit_base_patch16_384",
    "ViT_base_patch32_384": "vit_base_patch32_384",
    "ViT_large_patch16_224": "vit_large_patch16_224",
    "ViT_large_patch16_384": "vit_large_patch16_384",
    "ViT_large_patch32_384": "vit_large_patch32_384",
    "DeiT_tiny_patch16_224": "deit_tiny_patch16_224",
    "DeiT_small_patch16_224": "deit_small_patch16_224",
    "DeiT_base_patch16_224": "deit_base_patch16_224",
    "DeiT_base_patch16_384": "deit_base_patch16_384",
    "DeiT_tiny_distilled_patch16_224": "deit_tiny_distilled_patch16_224",
    "DeiT_small_distilled_patch16_224": "deit_small_distilled_patch16_224",
    "DeiT_base_distilled_patch16_224": "deit_base_distilled_patch16_224",
    "DeiT_base_distilled_patch16_384": "deit_base_distilled_patch16_384",
}
LOGIT_TOL = 1e-6  # O(1) logits, same kernels as timm: equal to rounding
EXPLICIT_TOL = 3e-6  # ViT_small: timm runs it through its explicit attention, vitzoo through SDPA
FAST_TOL = 1e-5  # the fast path's oneDNN matmuls round differently from MKL's
VIT_SMALL_SCALE = 768**-0.5  # models.md: qk_scale = embed_dim ** -0.5, not head_dim ** -0.5 (= 96 ** -0.5)


def timm_vit_small():
    model = TimmViT(
        img_size=224, patch_size=16, embed_dim=768, depth=8, num_heads=8, mlp_ratio=3.0, qkv_bias=False,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-5), num_classes=1000,
    )  # fmt: skip
    for block in model.blocks:
        block.attn.fused_attn = False  # the explicit path honours .scale; timm's SDPA call does not pass it
        block.attn.scale = VIT_SMALL_SCALE
    return model


def build_pair(name: str):
    reference = timm_vit_small() if name == "ViT_small_patch16_224" else timm.create_model(TIMM_NAMES[name])
    randomize_(reference)
    ours = vitzoo.create_model(name)
    ours.load_state_dict(reference.state_dict(), strict=True)  # canonical names: timm's, unchanged
    return ours.eval(), reference.eval()


def test_every_model_has_a_reference():
    assert set(TIMM_NAMES) | {"ViT_small_patch16_224"} == set(vitzoo.list_models())


@pytest.mark.parametrize("name", [n if "tiny" in n or n == "ViT_small_patch16_224" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in vitzoo.list_models()])  # fast tier: the tiny models and ViT_small's own scale
def test_logits_match_timm(name):
    ours, reference = build_pair(name)
    size = ours.cfg.img_size
    batch = 1 if "large" in name or size == 384 else 2
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x)
        got = ours(x)
    assert got.shape == expected.shape == (batch, 1000)
    assert expected.abs().max() > 1.0, "weights too small for the comparison to mean anything"
    # the same kernels on the same weights: equal to rounding (a wrong LayerNorm eps moves logits ~1e-5)
    tol = EXPLICIT_TOL if name == "ViT_small_patch16_224" else LOGIT_TOL
    torch.testing.assert_close(got, expected, atol=tol, rtol=0)
    with torch.inference_mode():  # what eval and predict run: the model itself, and the fast path
        torch.testing.assert_close(ours(x), expected, atol=tol, rtol=0)
        fast = build_path(copy.deepcopy(ours), "fp32", "fast")(x)
    torch.testing.assert_close(fast, expected, atol=FAST_TOL, rtol=0)


def test_a_planted_eps_bug_would_fail_the_parity_test():
    """LayerNorm eps 1e-5 instead of DeiT's 1e-6: the logits move by more than the tolerance above."""
    ours, reference = build_pair("DeiT_tiny_patch16_224")
    planted = vitzoo.create_model("DeiT_tiny_patch16_224", norm_eps=1e-5).eval()
    planted.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (planted(x) - reference(x)).abs().max() > 2 * EXPLICIT_TOL
        assert (ours(x) - reference(x)).abs().max() <= LOGIT_TOL


@pytest.mark.parametrize("name", ["DeiT_tiny_patch16_224", "DeiT_tiny_distilled_patch16_224"])
def test_features_pre_logits_and_intermediates_match_timm(name):
    ours, reference = build_pair(name)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        feats, ref_feats = ours.forward_features(x), reference.forward_features(x)
        torch.testing.assert_close(feats, ref_feats, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            ours.forward_head(feats, pre_logits=True), reference.forward_head(ref_feats, pre_logits=True), atol=1e-5, rtol=0
        )
        for kwargs in ({"indices": [2, 5, 11]}, {"indices": 3, "norm": True}, {"indices": [-1], "output_fmt": "NLC"}):
            final, inter = ours.forward_intermediates(x, **kwargs)
            ref_final, ref_inter = reference.forward_intermediates(x, **kwargs)
            torch.testing.assert_close(final, ref_final, atol=1e-5, rtol=0)
            assert len(inter) == len(ref_inter)
            for a, b in zip(inter, ref_inter):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_distilled_training_returns_both_heads_like_timm():
    ours, reference = build_pair("DeiT_tiny_distilled_patch16_224")
    ours.train().set_distilled_training(True)
    reference.train().set_distilled_training(True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got, expected = ours(x), reference(x)
    assert isinstance(got, tuple) and len(got) == 2
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_vit_small_scale_against_an_independent_computation():
    """Block 0 of ViT_small recomputed by hand from its weights, with scale 768^-0.5 (not 96^-0.5)."""
    assert abs(VIT_SMALL_SCALE - 0.036084) < 1e-6
    model = randomize_(vitzoo.create_model("ViT_small_patch16_224")).eval()
    assert model.blocks[0].attn.scale == pytest.approx(VIT_SMALL_SCALE, rel=1e-12)
    sd = {k: v.double() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        tokens = model._tokens(x).double()
        got = model.blocks[0](tokens.float()).double()

    def layer_norm(t, w, b):
        mu = t.mean(-1, keepdim=True)
        var = ((t - mu) ** 2).mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-5) * w + b

    h = layer_norm(tokens, sd["blocks.0.norm1.weight"], sd["blocks.0.norm1.bias"])
    qkv = h @ sd["blocks.0.attn.qkv.weight"].T  # no qkv bias in this model
    assert "blocks.0.attn.qkv.bias" not in sd
    q, k, v = (qkv[..., i * 768 : (i + 1) * 768].reshape(1, 197, 8, 96).transpose(1, 2) for i in range(3))
    attn = torch.softmax(torch.einsum("bhnd,bhmd->bhnm", q, k) * VIT_SMALL_SCALE, dim=-1)
    out = torch.einsum("bhnm,bhmd->bhnd", attn, v).transpose(1, 2).reshape(1, 197, 768)
    y = tokens + out @ sd["blocks.0.attn.proj.weight"].T + sd["blocks.0.attn.proj.bias"]
    h = layer_norm(y, sd["blocks.0.norm2.weight"], sd["blocks.0.norm2.bias"])
    h = torch.nn.functional.gelu(h @ sd["blocks.0.mlp.fc1.weight"].T + sd["blocks.0.mlp.fc1.bias"])
    expected = y + h @ sd["blocks.0.mlp.fc2.weight"].T + sd["blocks.0.mlp.fc2.bias"]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # and the head-width scale would have been visibly different
    wrong = torch.softmax(torch.einsum("bhnd,bhmd->bhnm", q, k) * 96**-0.5, dim=-1)
    assert (wrong - attn).abs().max() > 1e-2
