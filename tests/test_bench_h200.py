"""benchmarks/h200.py's dry run: the same script the GPU runs, on CPU with tiny shapes."""

import importlib.util
import json
from pathlib import Path

from vitzoo.bench import COMPARE_FIELDS, RECORD_FIELDS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "h200.py"


def load_script():
    spec = importlib.util.spec_from_file_location("h200", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_json_records_and_markdown(tmp_path):
    assert load_script().main(["--dry-run", "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "h200.json").read_text())
    sections = [(r["precision"], r["backend"], r["batch_size"], r["throughput"]) for r in records]
    assert sections == [
        ("fp32", "fast", 1, False), ("fp32", "fast", 2, False),  # on CPU, the fast eager path (GPU: cudagraph)
        ("bf16", "fast", 1, False), ("bf16", "fast", 2, False), ("bf16", "eager", 2, True),
    ]  # fmt: skip
    for r in records:
        assert set(RECORD_FIELDS) | set(COMPARE_FIELDS) <= r.keys()
        assert r["model"] == "DeiT_tiny_patch16_224" and r["timm_logits_max_diff"] <= 1e-4
    assert records[0]["seed_v100_ms"] == 3.61
    assert all(r["cosine_vs_fp32_eager"] >= 0.999 for r in records if r["precision"] == "bf16")
    markdown = (tmp_path / "h200.md").read_text()
    assert "Command: `python" in markdown and "--dry-run" in markdown and "Failed sections" not in markdown
    assert "| DeiT_tiny_patch16_224 | bf16 | eager | 2 (throughput) |" in markdown


def test_the_gpu_plan_covers_every_model_and_section():
    h200 = load_script()

    class Args:
        device, batch_sizes, warmup, runs, throughput_batch = "cuda", (1, 4, 8), 5, 20, None
        models, compile_models = list(h200.list_models()), ["ViT_base_patch16_224"]

    steps = h200.plan(Args)
    assert len(steps) == 15 * 3 + 1
    assert {name for name, _ in steps} == set(Args.models)
    first = [kwargs for name, kwargs in steps if name == "ViT_large_patch16_384"]
    assert [(k["precision"], k["backend"], k.get("throughput", False)) for k in first] == [
        ("fp32", "cudagraph", False), ("bf16", "cudagraph", False), ("bf16", "eager", True),
    ]  # fmt: skip
    assert first[2]["throughput_batch"] == 64 and all(k["compare"] == ["timm"] for _, k in steps)
    assert steps[-1][1]["backend"] == "compile" and steps[-1][1]["timm_baseline"] == "bf16-cudagraph"
