"""Loading timm / DeiT checkpoints, resampling, head replacement, conversion, and every kind of bad file."""

import os
import pickle
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed

import vitzoo

from conftest import randomize_

NAME, TIMM = "DeiT_tiny_distilled_patch16_224", "deit_tiny_distilled_patch16_224"


@pytest.fixture(scope="module")
def reference():
    """timm's distilled DeiT with O(1) random weights: the independent implementation."""
    return randomize_(timm.create_model(TIMM), seed=7).eval()


@pytest.fixture
def x():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before), "a failed load changed the model"


@pytest.mark.parametrize("layout", ["state_dict.pth", "deit_release.pth", "timm.safetensors", "ddp.pth"])
def test_timm_and_deit_files_give_timms_logits(tmp_path, reference, x, layout):
    sd = reference.state_dict()
    path = tmp_path / layout
    if layout == "state_dict.pth":
        torch.save(sd, path)
    elif layout == "deit_release.pth":  # facebookresearch/deit: {'model': sd, 'optimizer': ..., 'epoch': ...}
        torch.save({"model": sd, "epoch": 299, "args": {"lr": 5e-4}}, path)
    elif layout == "ddp.pth":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        save_file(sd, path)
    model = vitzoo.create_model(NAME, weights=path).eval()
    assert model.load_report.loaded == 155
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=0)


def test_format_is_sniffed_not_taken_from_the_extension(tmp_path, reference):
    wrong = tmp_path / "weights.pdparams"  # really a safetensors file
    save_file(reference.state_dict(), wrong)
    report = vitzoo.load_weights(vitzoo.create_model(NAME), wrong)
    assert report.format == "safetensors"


@pytest.mark.parametrize("size", [384, 160])
def test_other_resolution_matches_timms_resampling(tmp_path, reference, size):
    path = tmp_path / "w.safetensors"
    save_file(reference.state_dict(), path)
    model = vitzoo.create_model(NAME, img_size=size, weights=path).eval()
    grid = size // 16
    expected = resample_abs_pos_embed(reference.pos_embed.detach(), new_size=[grid, grid], num_prefix_tokens=2)
    torch.testing.assert_close(model.pos_embed.detach(), expected, atol=1e-6, rtol=0)
    assert model.load_report.resampled and "(1, 198, 192) ->" in model.load_report.resampled[0]
    assert torch.equal(model.pos_embed[:, :2], reference.pos_embed[:, :2])  # prefix tokens kept as they are
    # timm itself, loading the same file at that size, gives the same logits
    timm_model = timm.create_model(
        TIMM, img_size=size, pretrained=True, pretrained_cfg_overlay={"file": str(path), "num_classes": 1000}
    ).eval()
    xs = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model(xs), timm_model(xs), atol=1e-4, rtol=0)


def test_other_num_classes_drops_the_heads_and_says_so(tmp_path, reference, caplog):
    path = tmp_path / "w.pth"
    torch.save(reference.state_dict(), path)
    torch.manual_seed(0)
    model = vitzoo.create_model(NAME, num_classes=10)
    head_before = model.head.weight.clone()
    with caplog.at_level("INFO", logger="vitzoo"):
        report = vitzoo.load_weights(model, path)
    assert set(report.dropped) == {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
    assert "1000 classes, model 10" in str(report) and "dropped" in caplog.text
    assert torch.equal(model.head.weight, head_before)
    assert torch.equal(model.blocks[5].attn.qkv.weight, reference.blocks[5].attn.qkv.weight)


@pytest.mark.slow
def test_convert_cli_to_safetensors_and_back(tmp_path, reference, x):
    src = tmp_path / "deit.pth"
    torch.save({"model": reference.state_dict()}, src)
    dst = tmp_path / "out" / "deit.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "vitzoo", "convert", str(src), str(dst), "--model", NAME.lower()],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "loaded 155 tensors" in proc.stdout
    converted = load_file(dst)
    assert converted.keys() == reference.state_dict().keys()
    assert all(torch.equal(converted[k], v) for k, v in reference.state_dict().items())
    assert not [p for p in dst.parent.iterdir() if p.name != dst.name]  # no temp file left behind

    # a broken source leaves an existing output untouched
    before = dst.read_bytes()
    broken = tmp_path / "broken.pth"
    broken.write_bytes(src.read_bytes()[:1000])
    proc = subprocess.run(
        [sys.executable, "-m", "vitzoo", "convert", str(broken), str(dst), "--model", NAME],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and str(broken) in proc.stderr
    assert dst.read_bytes() == before
    with pytest.raises(vitzoo.WeightsError, match="output format"):
        from vitzoo.weights.convert import convert

        convert(src, tmp_path / "out.bin", vitzoo.create_model(NAME))


# -- bad input: each names the file and the problem, runs nothing, loads nothing ----------------------------------


def write_variant(tmp_path, reference, variant):
    sd = dict(reference.state_dict())
    path = tmp_path / f"{variant}.pth"
    if variant == "missing":
        del sd["blocks.3.mlp.fc2.bias"]
    elif variant == "extra":
        sd["blocks.12.norm1.weight"] = torch.ones(192)
    elif variant == "other_width":
        sd = timm.create_model("deit_small_distilled_patch16_224").state_dict()
    elif variant == "other_patch":
        sd["patch_embed.proj.weight"] = torch.zeros(192, 3, 32, 32)
    elif variant == "plain_model":
        sd = timm.create_model("deit_tiny_patch16_224").state_dict()
    elif variant == "integer_tensor":
        sd["norm.bias"] = torch.zeros(192, dtype=torch.int64)
    torch.save(sd, path)
    return path


@pytest.mark.parametrize(
    "variant, message",
    [
        ("missing", r"missing 1 tensor\(s\): blocks\.3\.mlp\.fc2\.bias"),
        ("extra", r"unexpected 1: blocks\.12\.norm1\.weight"),
        ("other_width", r"tensor \w+.* has shape \(1, 1, 384\), DeiT_tiny_distilled_patch16_224 needs \(1, 1, 192\)"),
        ("other_patch", r"patch_embed\.proj\.weight has shape \(192, 3, 32, 32\)"),
        ("plain_model", r"missing .*dist_token.*distilled checkpoint and a plain model"),
        ("integer_tensor", r"norm\.bias holds torch\.int64"),
    ],
)
def test_a_file_of_another_model_is_refused_and_nothing_loads(tmp_path, reference, variant, message):
    path = write_variant(tmp_path, reference, variant)
    model = vitzoo.create_model(NAME)
    before = snapshot(model)
    with pytest.raises(vitzoo.WeightsError, match=message) as err:
        vitzoo.load_weights(model, path)
    assert str(path) in str(err.value)
    assert_unchanged(model, before)


@pytest.mark.parametrize("kind", ["pth", "safetensors", "legacy_pth"])
@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_truncated_or_corrupt_files(tmp_path, reference, kind, damage):
    path = tmp_path / f"w.{kind}"
    if kind == "safetensors":
        save_file(reference.state_dict(), path)
    else:
        torch.save(reference.state_dict(), path, _use_new_zipfile_serialization=(kind == "pth"))
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # keep the magic bytes so the format is still recognised, wreck the rest
        data[16:4096] = os.urandom(4080)
    path.write_bytes(bytes(data))
    model = vitzoo.create_model(NAME)
    before = snapshot(model)
    with pytest.raises(vitzoo.WeightsError) as err:
        vitzoo.load_weights(model, path)
    assert str(path) in str(err.value)
    assert_unchanged(model, before)


@pytest.mark.parametrize("content", [b"", b"hello, not weights\n", b"\x00" * 64])
def test_unknown_or_empty_file(tmp_path, content):
    path = tmp_path / "weights.bin"
    path.write_bytes(content)
    with pytest.raises(vitzoo.WeightsError, match="empty|unknown weight format") as err:
        vitzoo.load_weights(vitzoo.create_model(NAME), path)
    assert str(path) in str(err.value)


def test_missing_file_and_unknown_name():
    with pytest.raises(vitzoo.WeightsError, match="no_such.pth"):
        vitzoo.create_model(NAME, weights="/nonexistent/no_such.pth")


class _Exploit:
    """Pickles to a call of os.system: what a hostile checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_a_torch_file_that_runs_code_is_refused(tmp_path, reference, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"model": dict(reference.state_dict()), "extra": _Exploit(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=(container == "zip"))
    model = vitzoo.create_model(NAME)
    before = snapshot(model)
    with pytest.raises(vitzoo.WeightsError, match="without running code") as err:
        vitzoo.load_weights(model, path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    assert_unchanged(model, before)


def test_plain_pickle_with_code_is_refused_as_pdparams(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps({"x": _Exploit(marker)}, protocol=4))
    with pytest.raises(vitzoo.WeightsError, match=r"refused global (posix|os)\.system") as err:
        vitzoo.load_weights(vitzoo.create_model(NAME), path)
    assert str(path) in str(err.value) and not marker.exists()
