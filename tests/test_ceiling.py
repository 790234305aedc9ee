"""The CPU's GEMM ceiling, the effective rate of a path against it, where a path's time goes, and the int8-compile
path (PT2E x86 int8 + Inductor) against fp32 eager on real photographs."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys

import pytest
import torch

import vitzoo
from vitzoo.bench import CEILING_FIELDS, ceiling
from vitzoo.cli.main import main
from vitzoo.infer import PathUnavailable, build_path, logits_cosine
from vitzoo.infer import x86_int8

from conftest import lively_case

pytest.importorskip("skimage")

NAME = "DeiT_tiny_distilled_patch16_224"  # two prefix tokens: the trimmed forward keeps both


def case():
    return lively_case(NAME)


def test_linear_shapes_are_the_blocks_products():
    with torch.device("meta"):
        cfg = vitzoo.create_model("ViT_base_patch16_224").cfg
        distilled = vitzoo.create_model(NAME).cfg
    assert ceiling.linear_shapes(cfg, 8) == [(1576, 768, 2304), (1576, 768, 768), (1576, 768, 3072), (1576, 3072, 768)]
    assert ceiling.linear_shapes(distilled, 1)[0][0] == 198  # 196 patches, class and distillation tokens


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_the_gemm_the_ceiling_times_computes_the_product(precision):
    """Each timed kernel multiplies: its answer on small operands against the product in fp64."""
    if ceiling.unavailable(precision):
        pytest.skip(ceiling.unavailable(precision))
    m, k, n = 64, 96, 80
    if precision == "int8":
        x = torch.randint(0, 256, (m, k), dtype=torch.uint8)
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        packed = torch.ops.onednn.qlinear_prepack(w, [m, k])
        w_scale, w_zp = torch.full((n,), 0.01), torch.zeros(n, dtype=torch.int64)
        got = torch.ops.onednn.qlinear_pointwise.default(x, 0.02, 3, packed, w_scale, w_zp, None, 1.0, 0,
                                                         torch.float32, "none", [], "none")  # fmt: skip
        expected = ((x.double() - 3) * 0.02) @ (w.double() * 0.01).T
        torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)
    # and the ceiling itself: a positive rate at every shape, the best of them reported
    with torch.device("meta"):
        cfg = vitzoo.create_model(NAME).cfg
    result = ceiling.gemm_ceiling(precision, cfg, batch_size=1, min_s=0.01)
    assert len(result["by_shape"]) == 5 and min(result["by_shape"].values()) > 0
    assert result["gflops"] == max(result["by_shape"].values()) and result["threads"] == torch.get_num_threads()


def test_a_precision_without_a_ceiling_is_refused_in_one_line():
    with pytest.raises(ValueError, match="no GEMM ceiling for fp16"):
        ceiling.gemm_ceiling("fp16")


def test_effective_rate_counts_full_macs_per_image():
    assert ceiling.effective_gflops(10**9, batch_size=8, ms=16.0) == pytest.approx(1000.0)


@pytest.mark.parametrize("name, klass", [
    ("aten::addmm", "gemm"), ("mkldnn::_linear_pointwise", "gemm"), ("onednn::qlinear_pointwise", "gemm"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"), ("aten::bmm", "attention"),
    ("cpp_fused__softmax_mul_3", "attention"), ("aten::native_layer_norm", "norm"),
    ("graph_0_cpp_fused_add_addmm_gelu_native_layer_norm_transpose_view_4", "norm"), ("aten::copy_", "copies"),
    ("graph_0_cpp_fused_clone_2", "copies"), ("graph_0_cpp_fused_add_addmm_gelu_5", "pointwise"),
    ("aten::gelu_", "pointwise"), ("aten::add", "pointwise"), ("aten::empty", "other"),
])  # fmt: skip
def test_ops_are_classed_by_name(name, klass):
    assert ceiling.op_class(name) == klass


@pytest.mark.parametrize("node_type, name, klass", [
    ("FullyConnected", "node_linear_3", "gemm"), ("FullyConnectedQuantizedLegacy", "x", "gemm"),
    ("Subgraph", "node_MatMul_726,node_Softmax_727,node_scaled_dot_product_attention_11,node_transpose_12", "attention"),
    ("Subgraph", "node_add_797,node_layer_norm_19", "norm"), ("Subgraph", "Multiply_11920", "pointwise"), ("MVN", "x", "norm"), ("Transpose", "x", "copies"),
    ("Parameter", "x", "other"),
])  # fmt: skip
def test_openvino_nodes_are_classed_by_type_and_fusion_name(node_type, name, klass):
    assert ceiling.openvino_node_class(node_type, name) == klass


def test_breakdown_of_the_fast_path_adds_up():
    model, photos, _ = case()
    run = build_path(copy.deepcopy(model), "fp32", "fast")
    result = ceiling.op_class_breakdown(run, photos[:2], runs=2)
    assert set(result["shares"]) == set(ceiling.OP_CLASSES)
    assert sum(result["shares"].values()) == pytest.approx(1.0, abs=0.01)
    assert result["shares"]["gemm"] > 0.2 and result["shares"]["attention"] > 0  # linears and SDPA both ran
    assert result["top"][0][2] >= result["top"][-1][2]


@pytest.mark.slow
def test_breakdown_of_an_openvino_path_reads_its_node_counters():
    pytest.importorskip("openvino")
    model, photos, _ = case()
    run = build_path(copy.deepcopy(model), "fp32", "openvino")
    result = ceiling.openvino_breakdown(run.fn, photos[:2], runs=2)
    assert sum(result["shares"].values()) == pytest.approx(1.0, abs=0.01)
    assert result["shares"]["gemm"] > 0.2 and any(t[0].startswith("FullyConnected") for t in result["top"])
    assert result["shares"]["attention"] > 0  # a fused attention Subgraph, or MatMul and Softmax nodes


def test_bench_records_the_ceiling_and_the_fraction(capsys):
    main(["bench", "--model", "DeiT_tiny_patch16_224", "--batch-sizes", "1", "--runs", "2", "--warmup", "1",
          "--format", "json", "--quiet"])  # fmt: skip
    (record,) = json.loads(capsys.readouterr().out)
    assert set(CEILING_FIELDS) <= record.keys()
    assert record["ceiling_kernel"] == "torch.mm fp32" and record["ceiling_gflops"] > 0
    expected = 2 * vitzoo.profile("DeiT_tiny_patch16_224").macs_full / (record["ms_median"] / 1000) / 1e9
    assert record["effective_gflops"] == pytest.approx(expected, abs=0.051)  # rounded to 0.1
    assert record["ceiling_fraction"] == pytest.approx(record["effective_gflops"] / record["ceiling_gflops"], rel=0.02, abs=1e-3)
    main(["bench", "--model", "DeiT_tiny_patch16_224", "--batch-sizes", "1", "--runs", "1", "--warmup", "0",
          "--no-ceiling", "--format", "json", "--quiet"])  # fmt: skip
    assert "ceiling_fraction" not in json.loads(capsys.readouterr().out)[0]


# -- int8 on the matrix units through PyTorch ---------------------------------------------------------------------------
@pytest.mark.slow
def test_int8_compile_keeps_the_logits_at_any_batch_size():
    if x86_int8.unavailable_reason():
        pytest.skip(x86_int8.unavailable_reason())
    model, photos, reference = case()
    calibration = torch.cat([photos, photos.flip(-1)])
    run = build_path(copy.deepcopy(model), "int8", "compile", calibration=calibration)
    assert run.path.name == "int8-compile" and "qlinear" in run.notes
    logits = run(photos)
    assert logits.dtype == torch.float32 and logits.shape == reference.shape
    assert logits_cosine(logits, reference) >= 0.99
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.75
    one = run(photos[:1])  # another batch size: compiled anew from the same quantized graph
    assert logits_cosine(one, reference[:1]) >= 0.99


def test_int8_compile_is_refused_in_one_line_where_it_cannot_run(monkeypatch):
    model = vitzoo.create_model(NAME)
    with pytest.raises(PathUnavailable, match="CPU") as e:
        build_path(model, "int8", "compile", device="cuda")
    assert "\n" not in str(e.value)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(PathUnavailable, match="torchao") as e:
        build_path(model, "int8", "compile", calibration=torch.zeros(2, 3, 224, 224))
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    if x86_int8.unavailable_reason() is None:
        with pytest.raises(ValueError, match="calibration"):
            build_path(model, "int8", "compile")


def test_module_entry_point_prints_one_json_line(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ceiling"])
    ceiling._main(["ceiling", NAME, "1", "fp32"])
    result = json.loads(capsys.readouterr().out)
    assert result["fp32"]["gflops"] > 0
