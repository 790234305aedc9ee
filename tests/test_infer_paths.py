"""Every inference path built by `vitzoo.infer.build_path` against fp32 eager, and the paths through the CLI.

fp32 paths must give fp32 eager's logits within 1e-4 (max abs, O(1) logits); bf16 and int8 are judged by cosine and
top-1 agreement on real photographs. A path the machine cannot run says so in one line and never falls back.
A trained run's output folder is a model for eval, predict, bench and export.
"""

import copy
import json
import subprocess
import sys

import pytest
import torch

import vitzoo
from vitzoo.cli.main import main
from vitzoo.infer import PathUnavailable, build_path, cpu_has_bf16, logits_cosine
from vitzoo.infer import paths as infer_paths

from conftest import lively_case, train_tiny_digits_run

pytest.importorskip("skimage")

NAME = "DeiT_tiny_distilled_patch16_224"  # two prefix tokens: the trimmed paths must keep both


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def case():
    return lively_case(NAME)


def run_path(precision, backend, **kwargs):
    model, photos, reference = case()
    runner = build_path(copy.deepcopy(model), precision, backend, **kwargs)
    return runner, runner(photos), reference


FP32 = [("fp32", "eager"), ("fp32", "fast"), pytest.param("fp32", "compile", marks=pytest.mark.slow)]
if _has("onnxruntime"):
    FP32.append(pytest.param("fp32", "onnxruntime", marks=pytest.mark.slow))  # tests/test_block_once.py runs it fast
if _has("openvino"):
    FP32.append(pytest.param("fp32", "openvino", marks=pytest.mark.slow))


@pytest.mark.parametrize("precision, backend", FP32)
def test_fp32_paths_give_fp32_eager_logits(precision, backend):
    runner, logits, reference = run_path(precision, backend)
    assert logits.dtype == torch.float32 and logits.shape == reference.shape
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=0)
    assert runner.path.name == f"{precision}-{backend}"
    if backend != "eager":  # the model as written is eager; every other path says what it changes
        assert "prefix tokens" in runner.notes


HALF = [("bf16", "eager"), ("bf16", "fast"), ("fp16", "eager"), pytest.param("bf16", "compile", marks=pytest.mark.slow)]
if _has("openvino"):
    HALF.append(pytest.param("bf16", "openvino", marks=pytest.mark.slow))


@pytest.mark.parametrize("precision, backend", HALF)
def test_half_precision_paths_keep_the_logits(precision, backend):
    if precision == "bf16" and not cpu_has_bf16():
        pytest.skip("this CPU has no native bf16")
    _, logits, reference = run_path(precision, backend)
    assert logits_cosine(logits, reference) >= 0.999
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.75


@pytest.mark.slow
@pytest.mark.skipif(not (_has("openvino") and _has("nncf")), reason="openvino and nncf are needed for int8")
def test_int8_path_calibrated_on_photos_keeps_the_logits():
    model, photos, _ = case()
    calibration = torch.cat([photos, photos.flip(-1)])
    runner, logits, reference = run_path("int8", None, calibration=calibration)
    assert runner.path.name == "int8-openvino" and "int8" in runner.notes
    assert logits_cosine(logits, reference) >= 0.99
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.75


def test_int8_without_calibration_is_refused():
    if not (_has("openvino") and _has("nncf")):
        pytest.skip("openvino and nncf are needed for int8")
    with pytest.raises(ValueError, match="calibration"):
        build_path(vitzoo.create_model(NAME), "int8", "openvino")


def test_paths_a_machine_cannot_run_say_so_in_one_line(monkeypatch):
    model = vitzoo.create_model(NAME)
    monkeypatch.setattr(infer_paths, "cpu_has_bf16", lambda: False)
    with pytest.raises(PathUnavailable, match="no AVX512-BF16") as e:
        build_path(model, "bf16", "eager")
    assert "\n" not in str(e.value)
    with pytest.raises(PathUnavailable, match="CUDA"):
        build_path(model, "fp32", "cudagraph")
    with pytest.raises(ValueError, match="int8 runs on: compile, openvino"):
        build_path(model, "int8", "eager")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed: the import fails
    with pytest.raises(PathUnavailable, match="openvino") as e:
        build_path(model, "fp32", "openvino")
    assert "\n" not in str(e.value)
    assert next(model.parameters()).dtype == torch.float32  # refused before anything was converted


# -- a trained run is a model everywhere ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A custom ViT trained for two epochs on real digits: its output folder and the data."""
    return train_tiny_digits_run(tmp_path_factory.mktemp("digits_run"))


def test_a_run_folder_carries_architecture_classes_and_transform(run_folder):
    from vitzoo.factory import load_model

    folder, train_dir, _ = run_folder
    card = json.loads((folder / "model.json").read_text())
    assert card["classes"] == [str(d) for d in range(10)] and card["arch"]["embed_dim"] == 32
    loaded = load_model(folder)
    assert loaded.name == "custom" and loaded.model.num_classes == 10 and list(loaded.class_names().labels) == card["classes"]
    image = next((train_dir / "3").iterdir())
    assert loaded.transform()(image).shape == (3, 16, 16)
    with pytest.raises(ValueError, match="custom architecture has no 'seed' protocol"):
        loaded.transform("seed")


def test_eval_predict_bench_export_take_a_run_folder(run_folder, tmp_path, capsys):
    folder, train_dir, val_dir = run_folder
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(folder), "--data", str(val_dir), "--workers", "0", "-q", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 20 and result["protocol"] == "run" and result["model"] == "custom"
    image = next((val_dir / "7").iterdir())
    capsys.readouterr()
    assert main(["predict", "--model", str(folder), str(image), "--format", "json", "--top-k", "3"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert len(top) == 3 and {t["label"] for t in top} <= {str(d) for d in range(10)}  # its classes, not ImageNet's
    probabilities = [t["probability"] for t in top]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    assert main(["bench", "--model", str(folder), "--batch-sizes", "2", "--runs", "1", "--warmup", "1", "-q",
                 "--format", "json"]) == 0  # fmt: skip
    record = json.loads(capsys.readouterr().out)[0]
    assert record["ms_median"] > 0 and record["seed_v100_ms"] is None
    assert main(["export", "--model", str(folder), str(tmp_path / "run.onnx")]) == 0
    assert (tmp_path / "run.onnx").stat().st_size > 0
    assert main(["eval", "--model", str(tmp_path), "--data", str(val_dir)]) == 2  # not a run folder: one line
    assert "not a trained run's folder" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not (_has("openvino") and _has("nncf")), reason="openvino and nncf are needed")
def test_eval_int8_and_openvino_end_to_end_as_fp32(run_folder, tmp_path):
    """The same command evaluates fp32 eager, OpenVINO and int8 (calibrated on the train folder) on a user's data."""
    folder, train_dir, val_dir = run_folder
    results = {}
    for flags in (["--precision", "fp32"], ["--backend", "openvino"], ["--precision", "int8", "--calibration",
                                                                        str(train_dir)]):  # fmt: skip
        out = tmp_path / f"{flags[1]}.json"
        command = [sys.executable, "-m", "vitzoo", "eval", "--model", str(folder), "--data", str(val_dir),
                   "--workers", "0", "-q", "-o", str(out), *flags]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[flags[1]] = json.loads(out.read_text())
    fp32, ov, int8 = results["fp32"], results["openvino"], results["int8"]
    assert (ov["precision"], ov["backend"]) == ("fp32", "openvino")
    assert (int8["precision"], int8["backend"]) == ("int8", "openvino")
    assert ov["top1"] == fp32["top1"] and ov["loss"] == pytest.approx(fp32["loss"], abs=1e-4)
    assert abs(int8["top1"] - fp32["top1"]) <= 0.1 and int8["images"] == fp32["images"] == 20


def test_int8_without_calibration_takes_the_runs_train_set_or_says_how(run_folder, tmp_path, capsys):
    folder, _, val_dir = run_folder
    out = tmp_path / "int8.json"
    assert main(["eval", "--model", str(folder), "--data", str(val_dir), "--precision", "int8", "-q", "-o",
                 str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["images"] == 20  # calibrated on the run's own train set (model.json says where)
    image = next((val_dir / "7").iterdir())
    capsys.readouterr()
    assert main(["predict", "--model", "DeiT_tiny_patch16_224", "--weights", "w.pth", str(image), "--precision",
                 "int8"]) == 2  # fmt: skip
    assert "--calibration" in capsys.readouterr().err
