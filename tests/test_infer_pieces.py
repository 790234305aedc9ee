"""The fast paths' pieces against fp32 eager: bf16/fp16 weights, the trimmed forward, torch.compile, ONNX.

Fidelity is measured on real photographs (scikit-image's samples through the model's eval transform) with weights
that give O(1) activations, under which numerical error shows.
"""

import copy
import functools
import os
import sys

import pytest
import torch

import vitzoo
from vitzoo.cli.main import main
from vitzoo.infer.torch_paths import CudaGraphRunner, compile_model, to_precision
from vitzoo.infer.fidelity import lively_init_, logits_cosine, sample_photos

pytest.importorskip("skimage")
MODELS = ["DeiT_tiny_patch16_224", "DeiT_tiny_distilled_patch16_224"]


@functools.cache
def make_case(name):
    """(name, fp32 model with lively weights, photos, fp32 eager logits)."""
    model = lively_init_(vitzoo.create_model(name)).eval()
    photos = sample_photos(name)
    with torch.no_grad():
        reference = model(photos)
    return name, model, photos, reference


@pytest.fixture(params=MODELS)
def case(request):
    return make_case(request.param)


def test_photos_are_real_and_the_reference_is_not_degenerate(case):
    _, _, photos, reference = case
    assert photos.shape == (8, 3, 224, 224)
    assert photos.std() > 0.5 and reference.std() > 0.5  # O(1) logits: error cannot hide under a tiny signal
    assert len(set(reference.argmax(-1).tolist())) > 1


@pytest.mark.parametrize("precision, bound", [("bf16", 0.999), ("fp16", 0.9999)])
def test_half_precision_weights_keep_the_logits(case, precision, bound):
    _, model, photos, reference = case
    fast = to_precision(copy.deepcopy(model), precision)
    dtype = next(fast.parameters()).dtype
    assert dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert all(p.dtype == dtype for p in fast.parameters())  # weights in that precision, not autocast
    with torch.inference_mode():
        logits = fast(photos.to(dtype))
    assert logits.dtype == dtype
    assert logits_cosine(logits, reference) >= bound


def test_the_model_computes_the_same_in_every_mode(case):
    """model.py has no inference-mode tricks: a hook on the last block sees every token under inference_mode too."""
    _, model, photos, reference = case
    seen = []
    handle = model.blocks[-1].register_forward_hook(lambda module, inputs, out: seen.append(out.shape))
    try:
        with torch.inference_mode():
            torch.testing.assert_close(model(photos), reference, atol=1e-5, rtol=0)
        with torch.no_grad():
            model(photos)
    finally:
        handle.remove()
    tokens = model.cfg.num_tokens
    assert seen == [(8, tokens, model.embed_dim)] * 2


@pytest.mark.parametrize("fused, fused_attn", [(False, True), (True, True), (True, False)])
def test_the_trimmed_forward_gives_the_models_logits_and_writes_no_input(case, fused, fused_attn):
    from vitzoo.infer.fastpath import TrimmedLogits

    _, model, photos, reference = case
    before = photos.clone()
    trimmed = TrimmedLogits(model, fused=fused, fused_attn=fused_attn)
    with torch.inference_mode():
        torch.testing.assert_close(trimmed(photos), reference, atol=1e-5, rtol=0)
    assert torch.equal(photos, before)
    params = dict(model.named_parameters())
    assert all(torch.isfinite(p).all() for p in params.values())
    with torch.inference_mode():  # the fused path wrote nothing into the weights
        torch.testing.assert_close(model(photos), reference, atol=1e-5, rtol=0)


def test_the_fused_forward_shares_the_models_weights_and_leaves_its_modules_alone():
    from vitzoo.infer.fastpath import TrimmedLogits

    _, model, photos, reference = make_case(MODELS[1])
    model = copy.deepcopy(model)
    modules = [type(m) for m in model.modules()]
    fast = TrimmedLogits(model, fused=True, fused_attn=False)
    assert [type(m) for m in model.modules()] == modules and all(b.attn.fused_attn for b in model.blocks)
    assert {id(p) for p in fast.parameters()} == {id(p) for p in model.parameters()}  # the same tensors: no copy
    model.to(torch.bfloat16)  # converted in place after the fast forward was built: it runs the converted weights
    assert all(p.dtype == torch.bfloat16 for p in fast.parameters())
    with torch.inference_mode():
        assert logits_cosine(fast(photos.bfloat16()), reference) >= 0.999


def test_stdout_to_stderr_moves_python_and_descriptor_writes_and_restores(capfd):
    from vitzoo.infer.quiet import stdout_to_stderr

    with pytest.raises(RuntimeError), stdout_to_stderr():
        print("from print")
        sys.stdout.flush()
        os.write(1, b"from fd 1\n")
        raise RuntimeError
    print("after")
    out, err = capfd.readouterr()
    assert out == "after\n" and err == "from print\nfrom fd 1\n"


def test_fused_forward_matches_timm():
    import timm

    from vitzoo.infer.fastpath import TrimmedLogits

    ours = lively_init_(vitzoo.create_model("DeiT_small_distilled_patch16_224")).eval()
    theirs = timm.create_model("deit_small_distilled_patch16_224").eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(TrimmedLogits(ours, fused=True)(x), theirs(x), atol=1e-4, rtol=0)


def test_onnx_export_runs_in_onnxruntime_within_1e4(case, tmp_path):
    pytest.importorskip("onnxruntime")
    from vitzoo.infer.onnx import OrtRunner, export_onnx

    name, model, photos, reference = case
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    runner = OrtRunner(path)
    for batch in (1, 3, 8):  # exported at batch 2: the batch axis is dynamic
        torch.testing.assert_close(runner(photos[:batch]), reference[:batch], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_onnx_opset_23_writes_attention_with_the_models_scale(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from vitzoo.infer.onnx import OrtRunner, export_onnx

    model = lively_init_(vitzoo.create_model("ViT_small_patch16_224")).eval()  # scale 768^-0.5, no qkv bias
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
    default = {node.op_type for node in onnx.load(str(export_onnx(model, tmp_path / "18.onnx"))).graph.node}
    assert "Attention" not in default and "Softmax" in default  # opset 18 spells attention out
    path = export_onnx(model, tmp_path / "23.onnx", opset=23)
    assert "Attention" in {node.op_type for node in onnx.load(str(path)).graph.node}
    torch.testing.assert_close(OrtRunner(path)(x), expected, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_export_cli_with_a_weights_file(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from safetensors.torch import save_file

    from vitzoo.infer.onnx import OrtRunner

    model = lively_init_(vitzoo.create_model(MODELS[1])).eval()
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    out = tmp_path / "m.onnx"
    weights = str(tmp_path / "w.safetensors")
    assert main(["export", "--model", MODELS[1], "--weights", weights, "--format", "onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    import re

    found = re.search(r"onnx fp32 vs fp32 eager on .*: max \|logit difference\| (\S+),", printed)
    assert found and float(found.group(1)) <= 1e-4, printed
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(OrtRunner(out)(x), model(x), atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.slow
def test_compile_fp32_and_bf16():
    """torch.compile with frozen weights (inductor, oneDNN on CPU), on the smallest model: compiling is slow (~20 s
    on 2 cores). Deselect with -k 'not compile'."""
    _, model, photos, reference = make_case(MODELS[0])
    with torch.inference_mode():
        fp32 = compile_model(copy.deepcopy(model))
        torch.testing.assert_close(fp32(photos), reference, atol=1e-4, rtol=0)
        bf16 = compile_model(to_precision(copy.deepcopy(model), "bf16"))
        assert logits_cosine(bf16(photos.bfloat16()), reference) >= 0.999


def test_cuda_graphs_are_guarded_off_cuda():
    model = vitzoo.create_model(MODELS[0])
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA input"):
        CudaGraphRunner(model, torch.randn(1, 3, 224, 224))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graphs_replay_the_eager_logits():
    from vitzoo.infer.torch_paths import CudaGraphs

    _, model, photos, reference = make_case(MODELS[1])

    gpu = copy.deepcopy(model).cuda()
    graphs = CudaGraphs(gpu)
    with torch.inference_mode():
        torch.testing.assert_close(graphs(photos.cuda()).cpu(), reference, atol=1e-3, rtol=0)
