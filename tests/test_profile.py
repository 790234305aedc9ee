"""Params and FLOPs counted from the model reproduce the seed's printed figures, in both conventions."""

import re

import pytest

import vitzoo

from conftest import SEED_PAGE


def seed_page_rows():
    """{model: [cells...]} from the seed page's markdown tables."""
    rows = {}
    for line in SEED_PAGE.read_text(encoding="utf-8").splitlines():
        cells = [re.sub(r"<br\s*/?>", "", c).strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in vitzoo.SPECS:
            rows.setdefault(cells[0], []).append(cells[1:])
    return rows


def closed_form_seed_macs(name):
    """models.md: Np*D*(3P^2+1) + depth*N*(4D^2 + 2*D*hidden) + heads_out*D*classes."""
    cfg = vitzoo.get_spec(name).arch
    d, p, n_patches = cfg.embed_dim, cfg.patch_size, (cfg.img_size // cfg.patch_size) ** 2
    n = n_patches + (2 if cfg.distilled else 1)
    hidden = int(d * cfg.mlp_ratio)
    heads_out = 2 if cfg.distilled else 1
    return n_patches * d * (3 * p * p + 1) + cfg.depth * n * (4 * d * d + 2 * d * hidden) + heads_out * d * 1000


@pytest.mark.parametrize("name", vitzoo.list_models())
def test_seed_params_and_flops_to_the_printed_digit(name):
    prof = vitzoo.profile(name)
    seed = vitzoo.get_spec(name).seed
    assert f"{prof.params_seed / 1e6:.2f}" == f"{seed.params_m:.2f}"
    assert f"{prof.macs_seed / 1e9:.2f}" == f"{seed.flops_g:.2f}"
    assert prof.macs_seed == closed_form_seed_macs(name)


@pytest.mark.parametrize("name", vitzoo.list_models())
def test_full_count_adds_attention_and_tokens(name):
    cfg = vitzoo.get_spec(name).arch
    prof = vitzoo.profile(name)
    n_patches = (cfg.img_size // cfg.patch_size) ** 2
    n = n_patches + (2 if cfg.distilled else 1)
    d = cfg.embed_dim
    tokens = n * d + (2 if cfg.distilled else 1) * d  # pos_embed and the prefix tokens
    assert prof.params_full == prof.params_seed + tokens
    attention = cfg.depth * 2 * n * n * d  # q.k^T and attn.v per block
    conv_bias = n_patches * d  # paddle.flops counts the conv bias as a MAC; torch's counter does not
    assert prof.macs_full == prof.macs_seed + attention - conv_bias


def test_figures_quoted_in_models_md():
    vit_b, tiny = vitzoo.profile("ViT_base_patch16_224"), vitzoo.profile("DeiT_tiny_patch16_224")
    assert vit_b.macs_seed == 16_848_651_264 and tiny.macs_seed == 1_074_888_960
    assert vit_b.params_full == 86_567_656
    assert round(vit_b.macs_full / 1e9, 2) == 17.56  # performance.md: all matmuls included
    assert round(vitzoo.profile("ViT_large_patch16_384").macs_full / 1e9, 1) == 191.1


def test_profile_of_a_real_model_equals_profile_by_name():
    model = vitzoo.create_model("DeiT_tiny_distilled_patch16_224").train()
    prof = vitzoo.profile(model)
    assert model.training  # the mode is restored
    by_name = vitzoo.profile("deit_tiny_distilled_patch16_224")
    assert prof == by_name
    assert prof.params_full == sum(p.numel() for p in model.parameters())
    text = str(prof)
    assert "seed convention" in text and "5.87 M params" in text and "1.08 G MACs" in text


def test_profile_at_another_img_size():
    prof = vitzoo.profile("DeiT_base_patch16_224", img_size=384)
    assert prof.img_size == 384 and f"{prof.macs_seed / 1e9:.2f}" == "49.35"


@pytest.mark.skipif(not SEED_PAGE.exists(), reason="the seed page (shared/seed) is not beside this checkout")
def test_spec_table_holds_the_seed_pages_figures():
    rows = seed_page_rows()
    assert set(rows) == set(vitzoo.SPECS)
    for name, (accuracy, speed) in rows.items():
        seed = vitzoo.get_spec(name).seed
        top1, top5, ref1, ref5, flops, params = accuracy
        assert (float(top1), float(top5), float(ref1)) == (seed.top1, seed.top5, seed.ref_top1)
        assert (None if ref5 == "-" else float(ref5)) == seed.ref_top5
        assert (float(flops), float(params)) == (seed.flops_g, seed.params_m)
        assert [float(v) for v in speed[2:5]] == [seed.latency_ms[bs] for bs in (1, 4, 8)]


