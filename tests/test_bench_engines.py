"""`vitzoo bench --compare timm,openvino,onnxruntime,paddle`: vitzoo's path and each peer in a process of its own
(vitzoo.bench.engines schedules, vitzoo.bench.engine_worker runs one engine), on a tiny custom model so that a run
takes seconds; a peer that cannot run is skipped with one line why; unknown peers are refused; each peer's precision;
a worker's failure reaches the parent in one line."""

import ast
import inspect
import json
import sys

import pytest
import torch
from safetensors.torch import save_file

from vitzoo.bench import engine_worker, engines, paddle_inference
from vitzoo.cli.errors import exit_code
from vitzoo.cli.main import main
from vitzoo.bench.report import render
from vitzoo.data import eval_transform
from vitzoo.factory import write_model_card
from vitzoo.infer import InferencePath
from vitzoo.model import ViTConfig, build_model

from conftest import randomize_

pytest.importorskip("timm")

PEERS = ["timm", "openvino", "onnxruntime", "paddle"]
# one batch size, one round of two forwards, one thread per engine, no waiting for an idle CPU: seconds, not minutes
QUICK = ["--batch-sizes", "1", "--rounds", "1", "--runs", "2", "--warmup", "1", "--wait-quiet", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_model():
    """A tiny custom ViT, weights with O(1) activations."""
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
    model = randomize_(build_model(cfg)).eval()
    model.model_name = "custom"
    return model


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory) -> str:
    """A run folder (model.json and its weights) of the tiny custom ViT: how `vitzoo bench --model` takes a model
    that is not in the table."""
    folder = tmp_path_factory.mktemp("tiny_run")
    save_file(tiny_model.state_dict(), folder / "model.safetensors")
    transform = eval_transform("DeiT_tiny_patch16_224", img_size=32)
    write_model_card(folder, tiny_model, [str(i) for i in range(10)], transform, "model.safetensors")
    return str(folder)


def bench(capsys, *args) -> str:
    assert main(["bench", *args, *QUICK]) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_every_peer_in_its_own_process(tiny_run, capsys):
    records = json.loads(bench(capsys, "--model", tiny_run, "--compare", ",".join(PEERS), "-q", "--format", "json"))
    assert [r["engine"] for r in records if "skipped" not in r][0] == "vitzoo"
    assert sorted(r["engine"] for r in records) == sorted(["vitzoo", *PEERS])  # one record per engine
    cannot = {p: engines.unavailable(*engines.peer_engine(p, "fp32", InferencePath())) for p in PEERS}
    assert {r["engine"]: r["skipped"] for r in records if "skipped" in r} == {p: r for p, r in cannot.items() if r}
    timed = {r["engine"]: r for r in records if "skipped" not in r}
    for engine, r in timed.items():
        assert (r["model"], r["batch_size"], r["precision"], r["device"]) == (tiny_run, 1, "fp32", "cpu")
        assert 0 < r["ms_min"] <= r["ms_median"] <= r["ms_max"] and len(r["round_medians_ms"]) == 1
        assert r["images_per_s"] == pytest.approx(1000 / r["ms_median"], rel=1e-2)
        assert r["peak_mem_mb"] > 10 and r["threads"] == 1
        assert r["cosine_vs_fp32_eager"] >= 0.9999  # the same weights everywhere, in fp32
        assert "in its own process" in r["isolation"] and r["engine_version"]
        if engine != "vitzoo":
            assert r["ratio"] == pytest.approx(timed["vitzoo"]["ms_median"] / r["ms_median"], rel=1e-3)
    assert "ratio" not in timed["vitzoo"] and timed["vitzoo"]["backend"] == "eager"
    backends = {"timm": "eager", "openvino": "openvino", "onnxruntime": "onnxruntime", "paddle": "paddle"}
    runtime = {"timm": "torch", "openvino": "openvino", "onnxruntime": "onnxruntime", "paddle": "paddlepaddle"}
    for peer in set(timed) - {"vitzoo"}:
        assert timed[peer]["backend"] == backends[peer] and f"{runtime[peer]} " in timed[peer]["engine_version"]

    table = render(records, "markdown")
    assert table.startswith("| Model | Batch | Engine | Precision | Backend | Version | ms median")
    assert f"| {tiny_run} | 1 | vitzoo | fp32 | eager | vitzoo " in table
    assert "Isolation: each engine in its own process (1 threads)" in table


def test_a_peer_that_cannot_run_is_skipped_in_one_line(tiny_run, capsys, monkeypatch):
    monkeypatch.setattr(paddle_inference, "unavailable_reason", lambda precision: "paddle is not installed (simulated)")
    table = bench(capsys, "--model", tiny_run, "--compare", "paddle")
    lines = [line for line in table.splitlines() if "skipped" in line]
    assert lines == [f"{tiny_run}: paddle fp32: skipped: paddle is not installed (simulated)"]
    assert "| vitzoo | fp32 | eager |" in table and "| paddle |" not in table  # nothing ran in its place


def test_compare_timm_alone_stays_in_process(tiny_run, capsys):
    (record,) = json.loads(bench(capsys, "--model", tiny_run, "--compare", "timm", "-q", "--format", "json"))
    assert "engine" not in record and record["timm_ms_median"] > 0  # `bench`'s own records, timm alternating
    assert record["timm_model"] == "timm VisionTransformer of this shape" and record["timm_logits_max_diff"] <= 1e-4


def test_unknown_peer_is_refused_in_one_line(capsys):
    assert main(["bench", "--model", "DeiT_tiny_patch16_224", "--compare", "timm,tensorrt"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("vitzoo bench: error: ")
    assert line.endswith("unknown peer tensorrt; choose from timm, openvino, onnxruntime, paddle")


def test_peers_run_at_their_fastest_precision_not_below_the_one_asked_for():
    assert engines.peer_engine("openvino", "bf16") == ("timm", "bf16", "openvino")
    assert engines.peer_engine("openvino", "int8") == ("timm", "int8", "openvino")
    assert engines.peer_engine("onnxruntime", "bf16") == ("timm", "fp32", "onnxruntime")  # its only precision
    assert engines.peer_engine("paddle", "int8") == ("paddle", "bf16", "paddle")  # no int8 model: its bf16
    assert engines.peer_engine("paddle", "fp32") == ("paddle", "fp32", "paddle")
    assert engines.peer_engine("timm", "bf16", InferencePath("bf16", "compile")) == ("timm", "bf16", "compile")


def test_a_worker_that_fails_says_why_in_one_line(tiny_run, tmp_path):
    from vitzoo.factory import load_model

    common = engines.prepare(tmp_path, load_model(tiny_run).model, torch.randn(2, 3, 32, 32))
    common["weights"] = str(tmp_path / "no_such.safetensors")
    log = tmp_path / "workers.log"
    with pytest.raises(engines.EngineFailed) as error:
        with engines.running({"broken": ("vitzoo", "fp32", "eager")}, common, 1, [1], log=log, say=print):
            pass
    message = str(error.value)
    assert message.startswith("broken: ") and "no_such.safetensors" in message and "\n" not in message
    assert message.endswith(f"; its log: {log}") and "Traceback" in log.read_text()


def test_the_cli_reports_a_failed_engine_in_one_line(tiny_run, capsys, monkeypatch):
    def fail(self, spec, log=None):
        raise engines.EngineFailed(f"{spec['name']}: ValueError: simulated; its log: {log.name}")

    monkeypatch.setattr(engines.Engine, "__init__", fail)
    code = main(["bench", "--model", tiny_run, "--compare", "onnxruntime", *QUICK, "-q"])
    assert code == exit_code(engines.EngineFailed("")) != 0  # as the CLI's table of errors says
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("vitzoo bench: error: vitzoo: ValueError: simulated; its log: ")


def test_engines_through_the_python_api(tiny_model, tmp_path, monkeypatch):
    """The scheduler's API as bench's runner and benchmarks/cpu_engines.py use it: two vitzoo paths, each in its own
    worker process (no PYTHONPATH handed down: the worker imports the installed vitzoo), timed in turns, scored
    against the model's own logits."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    photos = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    common = engines.prepare(tmp_path, tiny_model, photos)
    with torch.inference_mode():
        reference = tiny_model(photos).numpy()
    said = []
    wanted = {"eager": ("vitzoo", "fp32", "eager"), "fast": ("vitzoo", "fp32", "fast")}
    processes = engines.running(wanted, common, 1, [1, 2], warmup=1, log=tmp_path / "log", say=said.append)
    with processes as (started, skipped):
        assert skipped == {} and list(started) == ["eager", "fast"]
        assert all(engine.proc.args[:3] == [sys.executable, "-m", "vitzoo.bench.engine_worker"]
                   for engine in started.values())  # fmt: skip
        timings = engines.time_group(started, batch_size=2, rounds=2, runs=2, quiet_s=0)
        for name, engine in started.items():
            assert engine.ready["ready"] and engine.ready["peak_mem_mb"] > 10
            cosine, agreement = engines.cosine_and_agreement(engine.logits(), reference)
            assert cosine >= 0.9999 and agreement == 1.0
    assert [line.split(":")[0] for line in said] == ["eager", "fast"]
    for t in timings.values():
        assert len(t["round_medians_ms"]) == 2 and 0 < t["ms_min"] <= t["ms"] <= t["ms_max"]
        assert t["contended_turns"] is None
    assert all(engine.proc.returncode is not None for engine in started.values())  # stopped on leaving


def test_the_worker_imports_nothing_of_the_scheduler():
    """No import circle: the worker is told everything in its spec; `_build` is named for what it builds."""
    tree = ast.parse(inspect.getsource(engine_worker))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {m for m in imported if m and m.split(".")[-1] == "engines"}
    assert engines.WORKER == engine_worker.__name__ and callable(engine_worker.build_engine)
    assert not hasattr(engines, "_build") and not hasattr(engines, "worker")
