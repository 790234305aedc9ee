"""Google .npz checkpoints (original, AugReg, big_vision), with timm's own npz loader as the independent oracle.

Each test writes a Google-layout file from random O(1)-scale arrays, loads it with timm's `_load_weights` and with
vitzoo, and compares logits on the same images.
"""

import math

import numpy as np
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import _load_weights as timm_load_npz

import vitzoo
from vitzoo.weights.google import google_to_canonical, is_google_layout

NAME, TIMM_NAME = "DeiT_tiny_patch16_224", "deit_tiny_patch16_224"
DIM, HEADS, DEPTH, PATCH, GRID, CLASSES = 192, 3, 12, 16, 14, 1000
TOL = 1e-5  # an independent implementation agrees to a few 1e-6; a wrong LayerNorm eps moves logits ~1e-5


def google_arrays(seed: int = 0, grid: int = GRID, classes: int = CLASSES) -> dict[str, np.ndarray]:
    """The original release's keys for a DeiT-tiny shaped ViT; kernels ~ N(0, 1/fan_in), norms ~ 1, biases ~ 0.2."""
    rng = np.random.default_rng(seed)

    def kernel(*shape, fan_in):
        return (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)

    def bias(*shape):
        return (0.2 * rng.standard_normal(shape)).astype(np.float32)

    def scale(*shape):
        return (1 + 0.2 * rng.standard_normal(shape)).astype(np.float32)

    head_dim = DIM // HEADS
    arrays = {
        "embedding/kernel": kernel(PATCH, PATCH, 3, DIM, fan_in=3 * PATCH * PATCH),
        "embedding/bias": bias(DIM),
        "cls": (0.5 * rng.standard_normal((1, 1, DIM))).astype(np.float32),
        "Transformer/posembed_input/pos_embedding": (0.5 * rng.standard_normal((1, 1 + grid * grid, DIM))).astype(
            np.float32
        ),
        "Transformer/encoder_norm/scale": scale(DIM),
        "Transformer/encoder_norm/bias": bias(DIM),
        "head/kernel": kernel(DIM, classes, fan_in=DIM),
        "head/bias": bias(classes),
    }
    for i in range(DEPTH):
        block = f"Transformer/encoderblock_{i}/"
        attention = block + "MultiHeadDotProductAttention_1/"
        for n in ("query", "key", "value"):
            arrays[f"{attention}{n}/kernel"] = kernel(DIM, HEADS, head_dim, fan_in=DIM)
            arrays[f"{attention}{n}/bias"] = bias(HEADS, head_dim)
        arrays[f"{attention}out/kernel"] = kernel(HEADS, head_dim, DIM, fan_in=DIM)
        arrays[f"{attention}out/bias"] = bias(DIM)
        for norm in ("LayerNorm_0", "LayerNorm_2"):
            arrays[f"{block}{norm}/scale"] = scale(DIM)
            arrays[f"{block}{norm}/bias"] = bias(DIM)
        arrays[f"{block}MlpBlock_3/Dense_0/kernel"] = kernel(DIM, 4 * DIM, fan_in=DIM)
        arrays[f"{block}MlpBlock_3/Dense_0/bias"] = bias(4 * DIM)
        arrays[f"{block}MlpBlock_3/Dense_1/kernel"] = kernel(4 * DIM, DIM, fan_in=4 * DIM)
        arrays[f"{block}MlpBlock_3/Dense_1/bias"] = bias(DIM)
    return arrays


def to_big_vision(arrays: dict, prefix: str, stacked: bool, class_pos: bool = True) -> dict:
    """The same parameters as big_vision writes them: per-type module numbering, top-level pos_embedding,
    blocks optionally stacked on a leading layer axis; `class_pos=False` drops the class token's position row
    (big_vision adds the position embedding before prepending the class token)."""
    renames = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0", "LayerNorm_2": "LayerNorm_1",
               "MlpBlock_3": "MlpBlock_0"}  # fmt: skip
    out, per_layer = {}, {}
    for key, value in arrays.items():
        for old, new in renames.items():
            key = key.replace(f"/{old}/", f"/{new}/")
        if key == "Transformer/posembed_input/pos_embedding":
            out["pos_embedding"] = value if class_pos else value[:, 1:]
        elif stacked and key.startswith("Transformer/encoderblock_"):
            index, rest = key[len("Transformer/encoderblock_") :].split("/", 1)
            per_layer.setdefault(rest, {})[int(index)] = value
        else:
            out[key] = value
    for rest, layers in per_layer.items():
        out[f"Transformer/encoderblock/{rest}"] = np.stack([layers[i] for i in range(DEPTH)])
    return {prefix + k: v for k, v in out.items()}


def write_npz(path, arrays: dict):
    np.savez(path, **arrays)
    return path


def timm_reference(path, model=None):
    """timm's model with `path` loaded by timm's own npz reader (every tensor is overwritten: reusable)."""
    model = model if model is not None else timm.create_model(TIMM_NAME, pretrained=False)
    with torch.no_grad():
        timm_load_npz(model, str(path))
    return model.eval()


def assert_same_logits(ours, reference, images):
    with torch.no_grad():
        diff = (ours.eval()(images) - reference(images)).abs().max().item()
    assert diff <= TOL, f"max |logit difference| {diff:.2e}"


@pytest.fixture(scope="module")
def arrays():
    return google_arrays()


@pytest.fixture(scope="module")
def timm_model():
    return timm.create_model(TIMM_NAME, pretrained=False)


@pytest.fixture(scope="module")
def plain_npz(arrays, tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("npz") / "ViT-Ti_16.npz", arrays)


def test_plain_keys_match_timm(plain_npz, timm_model, images):
    ours = vitzoo.create_model(NAME, weights=plain_npz)
    report = ours.load_report
    assert (report.format, report.layout) == ("npz", "google")
    assert report.loaded == 152 and len(report.mapped) == 152
    assert not report.resampled and not report.dropped
    assert_same_logits(ours, timm_reference(plain_npz, timm_model), images)


def test_augreg_prefix_matches_timm(arrays, tmp_path, timm_model, images):
    """AugReg: every key under opt/target/; the optimizer's other entries are not parameters and are ignored."""
    prefixed = {f"opt/target/{k}": v for k, v in arrays.items()}
    prefixed["opt/state/step"] = np.array(1000, dtype=np.int64)
    path = write_npz(tmp_path / "augreg.npz", prefixed)
    ours = vitzoo.create_model(NAME, weights=path)
    assert ours.load_report.loaded == 152
    assert_same_logits(ours, timm_reference(path, timm_model), images)  # timm finds the prefix by itself


@pytest.mark.parametrize("prefix", ["params/", "params/img/"])
@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "numbered"])
def test_big_vision_matches_timm(arrays, tmp_path, timm_model, images, prefix, stacked):
    path = write_npz(tmp_path / "big_vision.npz", to_big_vision(arrays, prefix, stacked))
    ours = vitzoo.create_model(NAME, weights=path)
    assert ours.load_report.loaded == 152
    assert_same_logits(ours, timm_reference(path, timm_model), images)


def test_big_vision_position_embedding_without_class_row(arrays, tmp_path, images):
    """big_vision adds pos_embedding (g*g rows) before prepending cls; timm's no_embed_class model does the same."""
    path = write_npz(tmp_path / "big_vision.npz", to_big_vision(arrays, "params/", stacked=True, class_pos=False))
    ours = vitzoo.create_model(NAME, weights=path)
    assert not ours.load_report.resampled
    torch.testing.assert_close(ours.pos_embed[:, 0], torch.zeros(1, DIM), rtol=0, atol=0)
    no_embed_class = timm.create_model("vit_tiny_patch16_224", pretrained=False, no_embed_class=True)
    reference = timm_reference(path, no_embed_class)
    assert_same_logits(ours, reference, images)


def test_other_resolution_resamples_pos_embed(arrays, plain_npz):
    ours = vitzoo.create_model(NAME, img_size=384, weights=plain_npz)
    report = ours.load_report
    assert len(report.resampled) == 1 and "pos_embed" in report.resampled[0]
    assert "pos_embed" in str(report)
    pos_224 = torch.from_numpy(arrays["Transformer/posembed_input/pos_embedding"])
    expected = resample_abs_pos_embed(pos_224, new_size=[24, 24], num_prefix_tokens=1)
    assert ours.pos_embed.shape == (1, 1 + 24 * 24, DIM)
    torch.testing.assert_close(ours.pos_embed.detach(), expected, rtol=0, atol=1e-5)
    # everything else is loaded unchanged
    kernel = arrays["Transformer/encoderblock_3/MlpBlock_3/Dense_1/kernel"]
    torch.testing.assert_close(ours.blocks[3].mlp.fc2.weight.detach(), torch.from_numpy(kernel.T.copy()))


def test_missing_kernel_is_an_error_and_loads_nothing(arrays, tmp_path):
    missing = "Transformer/encoderblock_5/MlpBlock_3/Dense_1/kernel"
    path = write_npz(tmp_path / "incomplete.npz", {k: v for k, v in arrays.items() if k != missing})
    model = vitzoo.create_model(NAME)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(vitzoo.WeightsError) as info:
        vitzoo.load_weights(model, path)
    assert str(path) in str(info.value) and missing in str(info.value)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_truncated_file_is_an_error(plain_npz, tmp_path):
    data = plain_npz.read_bytes()
    path = tmp_path / "truncated.npz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(vitzoo.WeightsError) as info:
        vitzoo.create_model(NAME, weights=path)
    assert str(path) in str(info.value)


def test_pre_logits_is_reported_as_a_different_model(arrays, tmp_path):
    """ImageNet-21k files carry a representation layer (pre_logits) these models do not have."""
    with_pre_logits = dict(arrays, **{"pre_logits/kernel": np.eye(DIM, dtype=np.float32),
                                      "pre_logits/bias": np.zeros(DIM, dtype=np.float32)})  # fmt: skip
    path = write_npz(tmp_path / "in21k.npz", with_pre_logits)
    with pytest.raises(vitzoo.WeightsError) as info:
        vitzoo.create_model(NAME, weights=path)
    assert str(path) in str(info.value) and "pre_logits" in str(info.value)


def test_inconsistent_attention_shapes_are_an_error(arrays):
    bad = dict(arrays)
    bad["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/kernel"] = np.zeros((DIM, 6, 32), np.float32)
    with pytest.raises(ValueError, match="key/kernel"):
        google_to_canonical(bad)


def test_layout_detection(arrays):
    assert is_google_layout(arrays)
    assert is_google_layout({f"opt/target/{k}": v for k, v in arrays.items()})
    assert is_google_layout(to_big_vision(arrays, "params/img/", stacked=True))
    canonical = ["cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "head.weight"]
    assert not is_google_layout(canonical)
