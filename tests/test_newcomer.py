"""A new user's session: a 4-class run folder trained on real digits, then every command on it. Each test is a wrong
answer (or a traceback) the scattered edges once gave with exit code 0, and the one record schema they now share."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

import vitzoo

from conftest import ROOT

CLASSES = ["zero", "one", "two", "three"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run folder, train folder, val folder): a tiny custom ViT trained by `vitzoo train` on 4 digit classes."""
    pytest.importorskip("sklearn")
    sys.path.append(str(ROOT / "benchmarks"))
    from train_digits import write_digits

    root = tmp_path_factory.mktemp("newcomer")
    train_dir, val_dir = write_digits(root / "digits", size=16, per_class=40)
    for split in (train_dir, val_dir):
        for digit in range(10):
            if digit < len(CLASSES):
                (split / str(digit)).rename(split / CLASSES[digit])
            else:
                shutil.rmtree(split / str(digit))
    from vitzoo.train import train

    train(dict(
        model="custom", width=32, depth=2, heads=2, patch_size=4, img_size=16, data=str(train_dir), val=str(val_dir),
        epochs=15, batch_size=16, lr=2e-3, lr_base_batch=None, warmup_epochs=1, workers=0, progress=False,
        plot=False, threads=1, mixup=0.0, cutmix=0.0, auto_augment=None, reprob=0.0, drop_path=0.0, ema=False,
        output=str(root / "run"),
    ))  # fmt: skip
    return root / "run", train_dir, val_dir


def run_cli(*argv, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "vitzoo", *map(str, argv)], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def subset(val_dir: Path, tmp_path: Path, names: list[str]) -> Path:
    out = tmp_path / "subset"
    for name in names:
        shutil.copytree(val_dir / name, out / name)
    return out


def test_eval_labels_a_subset_of_the_classes_by_name(run, tmp_path):
    """VAL holds two/ and zero/ only: labels follow the run's class names, not VAL's own sorted folder order."""
    folder, _, val_dir = run
    data = subset(val_dir, tmp_path, ["two", "zero"])
    preds = tmp_path / "preds.jsonl"
    out = tmp_path / "eval.json"
    run_cli("eval", "--model", folder, "--data", data, "--workers", "0", "--output", out, "--predictions", preds, "-q")
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    truth = [Path(r["image"]).parts[0] for r in records]
    assert [r["target"]["label"] for r in records] == truth
    expected = sum(r["top"][0]["label"] == t for r, t in zip(records, truth)) / len(records)
    result = json.loads(out.read_text())
    assert result["images"] == len(records) == 16 and result["top1"] == pytest.approx(expected)
    assert expected > 0.5, "the run should have learnt something: then a wrong labelling would show"
    bulk = tmp_path / "bulk.jsonl"
    run_cli("predict", "--model", folder, "--data", data, "--output", bulk, "--workers", "0", "-q")
    assert [json.loads(line)["target"]["label"] for line in bulk.read_text().splitlines()] == truth


def test_a_class_folder_the_model_does_not_know_is_one_line(run, tmp_path):
    folder, _, val_dir = run
    data = subset(val_dir, tmp_path, ["two"])
    shutil.copytree(val_dir / "three", data / "seven")
    message = one_line_error(run_cli("eval", "--model", folder, "--data", data, "--workers", "0", check=False))
    assert "'seven'" in message and "not among the model's 4 classes" in message


@pytest.mark.slow
def test_inference_refuses_a_head_of_other_classes(run, tmp_path):
    """A 10-class file into the 4-class run, or into a named 1000-class model: random answers before, an error now."""
    folder, _, val_dir = run
    ten = vitzoo.build_model(vitzoo.ViTConfig(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                                              num_classes=10))  # fmt: skip
    save_file(ten.state_dict(), tmp_path / "ten.safetensors")
    image = next((val_dir / "two").iterdir())
    for command in (["predict", image], ["eval", "--data", val_dir, "--workers", "0"]):
        message = one_line_error(run_cli(*command, "--model", folder, "--weights", tmp_path / "ten.safetensors",
                                         check=False))  # fmt: skip
        assert "its head has 10 classes" in message and "4" in message
    deit = vitzoo.create_model("DeiT_tiny_patch16_224", num_classes=10)
    save_file(deit.state_dict(), tmp_path / "deit10.safetensors")
    photo = Path(pytest.importorskip("skimage.data").__file__).parent / "coffee.png"
    message = one_line_error(run_cli("predict", "--model", "DeiT_tiny_patch16_224", "--weights",
                                     tmp_path / "deit10.safetensors", photo, check=False))  # fmt: skip
    assert "its head has 10 classes" in message and "--num-classes" in message
    proc = run_cli("predict", "--model", "DeiT_tiny_patch16_224", "--weights", tmp_path / "deit10.safetensors",
                   "--num-classes", "10", photo, "--format", "json")  # fmt: skip
    (record,) = json.loads(proc.stdout)
    assert {t["label"] for t in record["top"]} <= {str(i) for i in range(10)}  # indices: no ImageNet names on it


def test_run_predictions_carry_its_class_names_and_no_made_up_wnid(run, tmp_path):
    folder, _, val_dir = run
    image = next((val_dir / "one").iterdir())
    (record,) = json.loads(run_cli("predict", "--model", folder, image, "--format", "json").stdout)
    classes = json.loads((folder / "model.json").read_text())["classes"]
    assert classes == sorted(CLASSES)  # the train folders' order
    assert set(record) == {"image", "target", "top"} and record["target"] is None
    for entry in record["top"]:
        assert set(entry) == {"index", "label", "wnid", "probability"}
        assert entry["wnid"] is None and entry["label"] == classes[entry["index"]]
    assert len(record["top"]) == 4  # top-5 of a 4-class model: all four


@pytest.mark.slow
def test_eval_json_says_null_for_no_weights(run, tmp_path):
    folder, _, val_dir = run
    proc = run_cli("eval", "--model", folder, "--data", val_dir, "--workers", "0", "--format", "json", "-q")
    record = json.loads(proc.stdout)
    assert record["weights"] is None and record["classes"] == f"{folder}'s classes"


@pytest.mark.slow
def test_bulk_predict_resume_takes_a_last_line_without_its_newline_as_unwritten(run, tmp_path):
    folder, _, val_dir = run
    out = tmp_path / "preds.jsonl"
    run_cli("predict", "--model", folder, "--data", val_dir, "--output", out, "--workers", "0", "-q")
    lines = out.read_text().splitlines(keepends=True)
    assert len(lines) == 32
    out.write_text("".join(lines[:-1]) + lines[-1].rstrip("\n"))  # killed before the last newline was written
    proc = run_cli("predict", "--model", folder, "--data", val_dir, "--output", out, "--workers", "0", "-q",
                   "--format", "json")  # fmt: skip
    summary = json.loads(proc.stdout)
    assert summary["written"] == 1 and summary["skipped_as_done"] == 31
    resumed = out.read_text().splitlines(keepends=True)
    assert len(resumed) == 32 and resumed[:-1] == lines[:-1] and all(line.endswith("\n") for line in resumed)
    last, before = json.loads(resumed[-1]), json.loads(lines[-1])  # computed again, alone: the same to float noise
    assert last["image"] == before["image"] and [t["index"] for t in last["top"]] == [t["index"] for t in before["top"]]


@pytest.mark.slow
def test_export_of_a_run_is_one_file_and_keeps_its_size(run, tmp_path):
    pytest.importorskip("onnxruntime")
    folder, _, _ = run
    onnx_file = tmp_path / "run.onnx"
    proc = run_cli("export", "--model", folder, onnx_file)
    # one model file (no .onnx.data beside it) and its description
    assert "wrote" in proc.stdout and sorted(p.name for p in tmp_path.iterdir()) == ["run.onnx", "run.onnx.json"]
    message = one_line_error(run_cli("export", "--model", folder, "--img-size", "48", tmp_path / "x.onnx", check=False))
    assert "trained at (16)" in message and not (tmp_path / "x.onnx").exists()


def test_an_unreadable_image_in_loader_workers_is_one_line(run, tmp_path):
    folder, _, val_dir = run
    data = subset(val_dir, tmp_path, ["two", "zero"])
    (data / "two" / "notes.png").write_text("a text file, renamed")
    message = one_line_error(run_cli("eval", "--model", folder, "--data", data, "--workers", "2", "-q", check=False))
    assert "notes.png: not a decodable image (an unrecognised format)" in message


def test_an_image_in_memory_is_named_by_its_kind():
    transform = vitzoo.eval_transform("DeiT_tiny_patch16_224")
    model = vitzoo.create_model("DeiT_tiny_patch16_224")
    with pytest.raises(vitzoo.data.BadImageError) as error:
        vitzoo.predict(model, [io.BytesIO(b"not an image")], transform)
    assert str(error.value).startswith("<BytesIO>:") and "object at 0x" not in str(error.value)


@pytest.mark.slow
def test_bench_int8_measures_fidelity_on_the_runs_own_images(run):
    """Cosine to fp32 was 0.52, measured on photographs the digits model never saw: now on its own val set, said."""
    pytest.importorskip("nncf")
    folder, _, _ = run
    proc = run_cli("bench", "--model", folder, "--precision", "int8", "--batch-sizes", "1", "--warmup", "1", "--runs",
                   "1", "--format", "json", "-q")  # fmt: skip
    tool = subprocess.run([sys.executable, "-m", "json.tool"], input=proc.stdout, capture_output=True, text=True)
    assert tool.returncode == 0, tool.stderr  # `vitzoo bench --format json ... | python -m json.tool`
    (record,) = json.loads(proc.stdout)  # stdout is pure JSON: NNCF's progress went to stderr
    assert "the run's val set" in record["fidelity_images"] and "the run's train set" in record["calibration"]
    assert record["cosine_vs_fp32_eager"] > 0.99


@pytest.mark.slow
def test_one_record_schema_for_predict_bulk_eval_and_serve(run, tmp_path):
    """One image through `vitzoo predict`, bulk predict, eval --predictions and the server: the same record."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    from test_serve import ServerProcess

    folder, _, val_dir = run
    data = tmp_path / "one"
    (data / "three").mkdir(parents=True)
    image = data / "three" / "x.png"
    shutil.copy(next((val_dir / "three").iterdir()), image)
    (single,) = json.loads(run_cli("predict", "--model", folder, image, "--format", "json").stdout)
    run_cli("predict", "--model", folder, "--data", data, "--output", tmp_path / "bulk.jsonl", "--workers", "0", "-q")
    (bulk,) = [json.loads(line) for line in (tmp_path / "bulk.jsonl").read_text().splitlines()]
    run_cli("eval", "--model", folder, "--data", data, "--predictions", tmp_path / "eval.jsonl", "--workers", "0", "-q")
    (evaluated,) = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    server = ServerProcess(["--model", str(folder)], tmp_path / "server.log")
    try:
        server.wait_ready()
        page = server.client.get("/").text
        assert 'Number("4")' in page  # the page asks for min(5, classes): top_k=5 would be refused
        answer = server.client.post("/v1/classify", params={"top_k": 4}, files={"file": ("x.png", image.read_bytes())})
        assert answer.status_code == 200, answer.text
        served = answer.json()
    finally:
        server.stop()
    three = {"index": sorted(CLASSES).index("three"), "label": "three", "wnid": None}
    assert single["target"] is None and bulk["target"] == evaluated["target"] == three
    assert set(single) == set(bulk) == set(evaluated) == {"image", "target", "top"} and set(single) <= set(served)
    for other in (bulk, evaluated, served):
        assert [{k: v for k, v in e.items() if k != "probability"} for e in other["top"]] == \
               [{k: v for k, v in e.items() if k != "probability"} for e in single["top"]]  # fmt: skip
        assert all(abs(a["probability"] - b["probability"]) < 1e-5 for a, b in zip(other["top"], single["top"]))
