"""vitzoo bench: the records' fields and their sanity, timm compared on identical weights, the CLI, the timing core."""

import json
import math

import pytest
import torch

import vitzoo
from vitzoo.bench import COMPARE_FIELDS, RECORD_FIELDS, run_bench
from vitzoo.cli.main import main
from vitzoo.config import BenchConfig
from vitzoo.infer import InferencePath
from vitzoo.infer.fidelity import lively_init_
from vitzoo.bench.latency import Timing, measure_latency, time_alternating
from vitzoo.bench.timm_twin import check_twin, timm_twin

TINY = "DeiT_tiny_patch16_224"


@pytest.fixture(scope="module")
def records():
    config = BenchConfig(models=[TINY], batch_sizes=[1, 2], warmup=1, runs=3, compare=["timm"], throughput=True,
                         throughput_batch=3)  # fmt: skip
    return run_bench(config)


def test_records_have_the_fields_and_sane_values(records):
    assert [(r["batch_size"], r["throughput"]) for r in records] == [(1, False), (2, False), (3, True)]
    for r in records:
        assert set(RECORD_FIELDS) | set(COMPARE_FIELDS) <= r.keys()
        assert (r["model"], r["precision"], r["backend"], r["device"]) == (TINY, "fp32", "eager", "cpu")
        assert 0 < r["ms_min"] <= r["ms_median"] <= r["ms_max"]
        assert 0 < r["timm_ms_min"] <= r["timm_ms_median"] <= r["timm_ms_max"]
        assert r["images_per_s"] == pytest.approx(1000 * r["batch_size"] / r["ms_median"], rel=1e-2)
        assert r["ratio"] == pytest.approx(r["ms_median"] / r["timm_ms_median"], rel=1e-3)
        assert r["peak_mem_mb"] > 10 and r["timm_peak_mem_mb"] > 10
        assert r["runs"] == 3 and r["timm_model"] == "deit_tiny_patch16_224"
        assert r["timm_logits_max_diff"] <= 1e-4
        assert "cosine_vs_fp32_eager" not in r  # fp32 eager is the reference itself
    assert [r["seed_v100_ms"] for r in records] == [3.61, None, None]  # the seed has no batch 2
    json.dumps(records)


@pytest.mark.parametrize("name", [TINY, "DeiT_tiny_distilled_patch16_224"])
def test_timm_twin_holds_identical_weights_and_gives_the_same_logits(name):
    model = lively_init_(vitzoo.create_model(name)).eval()
    twin = timm_twin(model)
    ours, theirs = model.state_dict(), twin.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    images = torch.randn(2, 3, 224, 224)
    assert check_twin(model, twin, images) <= 1e-4
    with torch.no_grad():
        twin.blocks[3].mlp.fc1.weight[0, 0] += 1e-3
    with pytest.raises(AssertionError, match="blocks.3.mlp.fc1.weight differs"):
        check_twin(model, twin, images)


def test_vit_small_twin_takes_the_models_attention_scale():
    with torch.device("meta"):
        model = vitzoo.create_model("ViT_small_patch16_224")
    twin = timm_twin(model.to_empty(device="cpu"))
    assert all(not b.attn.fused_attn and b.attn.scale == pytest.approx(768**-0.5) for b in twin.blocks)


def test_bf16_against_timm_fp32_eager_records_the_baseline_and_fidelity():
    config = BenchConfig(models=[TINY], batch_sizes=[2], precision="bf16", warmup=1, runs=1, compare=["timm"],
                         timm_baseline="fp32-eager")  # fmt: skip
    (r,) = run_bench(config)
    assert (r["precision"], r["timm_precision"], r["timm_backend"]) == ("bf16", "fp32", "eager")
    assert r["cosine_vs_fp32_eager"] >= 0.999
    assert r["fidelity_images"] == "8 scikit-image photos"


def test_cli_json_and_markdown(capsys):
    args = ["bench", "--model", "deit_tiny_p*", "--batch-sizes", "1", "--runs", "1", "--warmup", "1", "-q"]
    assert main(args + ["--format", "json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["model"] == TINY and set(RECORD_FIELDS) <= record.keys()
    assert main(args + ["--model", TINY, "--compare", "timm"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| Model | Precision | Backend | Batch | ms median")
    assert "| DeiT_tiny_patch16_224 | fp32 | eager | 1 |" in table and "vitzoo/timm" in table


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--backend", "cudagraph"], "the cudagraph backend needs a CUDA device"),
        (["--backend", "onnxruntime", "--precision", "bf16"], "backend onnxruntime does not run bf16"),
        (["--compare", "timm", "--timm-baseline", "int4-eager"], "unknown precision"),
        (["--compare", "timm", "--timm-baseline", "int8-eager"], "int8 runs on: compile, openvino"),
    ],
)
def test_cli_refuses_paths_that_cannot_run(flags, message, capsys):
    assert main(["bench", "--model", TINY, "--runs", "1", *flags]) == 2
    assert message in capsys.readouterr().err


def test_inference_path_parses_baselines():
    assert InferencePath.parse("bf16-compile", "cpu") == InferencePath("bf16", "compile", "cpu")
    assert InferencePath.parse("fp32", "cpu").backend == "eager"
    assert InferencePath.parse("int8", "cpu").backend == "openvino"


def test_alternating_timing_order_and_statistics():
    calls = []
    timings = time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 4, warmup=1, runs=4)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-ups, then A B, B A, ...
    assert timings["a"].runs == 4 and timings["a"].batch_size == 4 and timings["a"].peak_mem_mb > 0
    t = Timing.of(8, [4.0, 2.0, 3.0])
    assert (t.ms_median, t.ms_min, t.ms_max, t.images_per_s) == (3.0, 2.0, 4.0, pytest.approx(8000 / 3))
    with pytest.raises(ValueError, match="runs must be >= 1"):
        time_alternating({"a": lambda: None}, 1, runs=0)


def test_waiting_for_a_quiet_cpu_counts_contended_rounds():
    timings = time_alternating({"a": lambda: None}, 1, warmup=0, runs=2, quiet_wait_s=0.3)
    assert timings["a"].contended_runs in (0, 1, 2)  # how many depends on the machine's other load
    assert time_alternating({"a": lambda: None}, 1, warmup=0, runs=1)["a"].contended_runs is None


def test_measure_latency_still_serves_the_table():
    t = measure_latency(vitzoo.create_model(TINY), 1, warmup=1, runs=2)
    assert t.runs == 2 and math.isfinite(t.ms_median) and t.ms_min <= t.ms_max
