"""The openvino backend (vitzoo.infer.openvino) on a small exported model: fp32, bf16 and NNCF int8 logits against
fp32 eager."""

import pytest
import torch

from conftest import randomize_

from vitzoo.infer import build_path
from vitzoo.infer.openvino import OpenVINORunner, quantize_int8, unavailable_reason
from vitzoo.model import ViTConfig, build_model

needs_openvino = pytest.mark.skipif(unavailable_reason("fp32") is not None, reason=str(unavailable_reason("fp32")))


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):  # the trimmed forward where the model has one, as vitzoo's exporter uses
        return getattr(self.model, "forward_logits", self.model.forward)(images)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 2-block model with O(1) random weights, exported to ONNX with a dynamic batch axis."""
    model = randomize_(build_model(ViTConfig(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                             num_classes=10))).eval()  # fmt: skip
    path = tmp_path_factory.mktemp("openvino") / "small.onnx"
    torch.onnx.export(
        _Logits(model).eval(), (torch.randn(2, 3, 32, 32),), str(path), dynamo=True, opset_version=18,
        input_names=["images"], output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
    )  # fmt: skip
    return model, path


def _images(n, seed):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _reference(model, images):
    with torch.inference_mode():
        return model(images)


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()


def test_unavailable_reason():
    assert isinstance(unavailable_reason("fp8"), str)
    assert isinstance(unavailable_reason("fp16"), str)


@needs_openvino
def test_fp32_matches_eager_at_two_batch_sizes(exported):
    model, path = exported
    runner = OpenVINORunner(path, "fp32", threads=2)
    for n, seed in ((1, 0), (5, 1), (1, 2)):
        images = _images(n, seed)
        logits = runner(images)
        assert logits.dtype == torch.float32 and logits.shape == (n, 10)
        assert (logits - _reference(model, images)).abs().max().item() < 1e-4


@needs_openvino
def test_bf16(exported):
    if unavailable_reason("bf16"):
        pytest.skip(unavailable_reason("bf16"))
    model, path = exported
    runner = OpenVINORunner(path, "bf16", threads=2)
    for n in (1, 4):
        images = _images(n, 10 + n)
        assert _cosine(runner(images), _reference(model, images)) >= 0.999


@pytest.mark.skipif(unavailable_reason("int8") is not None, reason=str(unavailable_reason("int8")))
def test_int8_calibrated(exported):
    model, path = exported
    runner = OpenVINORunner(path, "int8", threads=2, calibration=_images(16, 20))
    for n in (8, 3):
        images = _images(n, 30 + n)
        logits, reference = runner(images), _reference(model, images)
        assert logits.shape == (n, 10)
        assert _cosine(logits, reference) >= 0.99
        agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
        assert agree >= 0.6


@pytest.mark.skipif(unavailable_reason("int8") is not None, reason=str(unavailable_reason("int8")))
def test_int8_needs_calibration(exported):
    with pytest.raises(ValueError, match="calibration"):
        OpenVINORunner(exported[1], "int8")


@pytest.mark.skipif(unavailable_reason("int8") is not None, reason=str(unavailable_reason("int8")))
def test_quantize_int8_saves_ir_from_numpy_batches(exported, tmp_path):
    batches = [b.numpy() for b in _images(8, 40).split(4)]  # an iterable of numpy batches, as build_path passes
    quantized = quantize_int8(exported[1], batches, out_path=tmp_path / "small_int8.xml")
    assert (tmp_path / "small_int8.xml").exists() and (tmp_path / "small_int8.bin").exists()
    assert any(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())


@pytest.mark.skipif(unavailable_reason("int8") is not None, reason=str(unavailable_reason("int8")))
def test_an_int8_build_writes_nothing_to_stdout(capfd):
    """NNCF's progress bars and the exporter's messages go to stderr: stdout stays the caller's (`--format json`)."""
    model = randomize_(build_model(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                             num_classes=10))).eval()  # fmt: skip
    capfd.readouterr()
    runner = build_path(model, "int8", calibration=_images(8, 50))
    assert runner(_images(2, 51)).shape == (2, 10)
    assert capfd.readouterr().out == ""
