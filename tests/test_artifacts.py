"""`vitzoo export` to every format and precision, each file run by its own runtime in a fresh process that never
imports vitzoo, compared with fp32 eager on real photographs; the files used as models again; bad files refused.

The model: a small custom ViT (32x32, patch 8, width 64, depth 2) with random weights whose activations stay O(1)
(`lively_init_`), saved as a trained run's folder (model.json + model.safetensors), so logits carry numerical error
as trained ones would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vitzoo.artifacts import ArtifactError, load_artifact
from vitzoo.config import ExportConfig, PredictConfig
from vitzoo.export import run_export
from vitzoo.factory import load_model, write_model_card
from vitzoo.infer.fidelity import lively_init_, sample_photos
from vitzoo.model import ViTConfig, build_model

CLASSES = [f"class_{i}" for i in range(10)]
CASES = {  # runtime -> the precisions it is exported at, and its file suffix
    "onnx": (("fp32", "fp16", "int8"), ".onnx"),
    "openvino": (("fp32", "fp16", "int8"), ".xml"),
    "pt2": (("fp32", "bf16"), ".pt2"),
    "executorch": (("fp32", "int8"), ".pte"),
}


def make_run(folder: Path) -> Path:
    from safetensors.torch import save_file

    from vitzoo.data.transforms import center_crop_transform

    model = lively_init_(build_model(ViTConfig(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                                               num_classes=len(CLASSES))).eval())  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    transform = center_crop_transform(32, 0.875, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    write_model_card(folder, model, CLASSES, transform, "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("artifacts") / "run")


@pytest.fixture(scope="module")
def photos_and_reference(run_folder):
    loaded = load_model(run_folder)
    photos = sample_photos(None, transform=loaded.transform())
    if photos is None:
        pytest.skip("scikit-image's photographs are needed")
    with torch.no_grad():
        return photos, loaded.model(photos)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """The photographs `sample_photos` uses, as a folder: int8's calibration images."""
    import shutil

    import skimage.data

    from vitzoo.infer.fidelity import SAMPLE_PHOTOS

    folder = tmp_path_factory.mktemp("photos")
    for name in SAMPLE_PHOTOS:
        shutil.copy(Path(skimage.data.__file__).parent / name, folder / name)
    return folder


def export(run_folder, out: Path, precision: str, *extra, calibration=None) -> Path:
    run_export(ExportConfig(model=str(run_folder), out=str(out), precision=precision, calibration=calibration,
                            **dict(extra)))  # fmt: skip
    return out


# one script per runtime: only the runtime's own package, numpy and (for pt2) torch are imported
RUNTIME_SCRIPTS = {
    "onnx": """
import onnx, onnxruntime as ort
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
logits = session.run(["logits"], {"images": images})[0]
meta = {p.key: p.value for p in onnx.load(path).metadata_props}["vitzoo"]
""",
    "openvino": """
import openvino as ov
core = ov.Core()
model = core.read_model(path)
meta = model.get_rt_info(["vitzoo"]).astype(str)
model.reshape({0: list(images.shape)})
hint = "bf16" if precision == "int8" and "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"
logits = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint}).create_infer_request().infer(
    {0: images})[0]
""",
    "pt2": """
import torch
package = torch._inductor.aoti_load_package(path)
logits = package(torch.from_numpy(images)).numpy()
meta = package.get_metadata()["vitzoo"]
""",
    "executorch": """
import torch
from executorch.runtime import Runtime
method = Runtime.get().load_program(path).load_method("forward")
logits = np.concatenate([method.execute([torch.from_numpy(images[i:i + 1])])[0].numpy() for i in range(len(images))])
meta = open(path + ".json").read()
""",
}


def run_in_fresh_process(runtime: str, files: dict[str, Path], images: np.ndarray, tmp_path: Path) -> dict:
    """Each file's logits on `images`, computed by a new Python process that imports the runtime and never vitzoo."""
    np.save(tmp_path / "images.npy", images)
    script = f"""
import json, sys
import numpy as np
images = np.load({str(tmp_path / "images.npy")!r})
results = {{}}
for precision, path in {json.dumps({p: str(f) for p, f in files.items()})}.items():
{chr(10).join("    " + line for line in RUNTIME_SCRIPTS[runtime].strip().splitlines())}
    np.save(path + ".logits.npy", np.asarray(logits, dtype=np.float32))
    results[precision] = json.loads(meta)
assert not any(name == "vitzoo" or name.startswith("vitzoo.") for name in sys.modules), "vitzoo was imported"
print(json.dumps(results))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metas = json.loads(proc.stdout.strip().splitlines()[-1])
    return {p: (torch.from_numpy(np.load(str(f) + ".logits.npy")), metas[p]) for p, f in files.items()}


@pytest.mark.slow
@pytest.mark.parametrize("runtime", CASES)
def test_every_format_and_precision_runs_in_its_own_runtime(runtime, run_folder, photos_and_reference, photo_folder,
                                                             tmp_path):  # fmt: skip
    from vitzoo.artifacts import unavailable_reason

    precisions, suffix = CASES[runtime]
    photos, reference = photos_and_reference
    calibration = str(photo_folder)
    files = {}
    for precision in precisions:
        reason = unavailable_reason(runtime, precision)
        if reason:
            print(f"skipped {runtime} {precision}: {reason}")
            continue
        files[precision] = export(run_folder, tmp_path / f"m_{precision}{suffix}", precision,
                                  calibration=calibration if precision == "int8" else None)  # fmt: skip
    results = run_in_fresh_process(runtime, files, photos.numpy(), tmp_path)
    for precision, (logits, meta) in results.items():
        assert meta["classes"] == CLASSES and meta["precision"] == precision and meta["input"]["shape"][1:] == [3, 32, 32]
        assert meta["preprocessing"]["crop"] == 32
        cosine = torch.nn.functional.cosine_similarity(logits, reference, dim=-1).min().item()
        agree = (logits.argmax(-1) == reference.argmax(-1)).all().item()
        what = f"{runtime} {precision}: max abs {(logits - reference).abs().max().item():.3g}, cosine {cosine:.6f}"
        print(what)
        if precision == "fp32":
            assert (logits - reference).abs().max().item() <= 1e-4, what
        elif precision in ("fp16", "bf16"):
            assert cosine >= 0.999 and agree, what
        else:
            assert cosine >= 0.995, what
        if precision != "int8":
            assert agree, what


def predictions(model, photo_paths, **options) -> list[dict]:
    from vitzoo.predict import run_predict

    return run_predict(PredictConfig(model=str(model), images=[str(p) for p in photo_paths], top_k=3, **options))


def test_an_exported_file_is_a_model_with_its_classes_and_preprocessing(run_folder, tmp_path):
    """predict on an ONNX file answers what the run folder answers; its description is checked on every load."""
    import skimage.data

    onnx_file = export(run_folder, tmp_path / "m.onnx", "fp32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]  # one file, its sidecar, no leftovers
    photos = [Path(skimage.data.__file__).parent / name for name in ("astronaut.png", "coffee.png")]
    ours, theirs = predictions(onnx_file, photos), predictions(run_folder, photos)
    for a, b in zip(ours, theirs):
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        assert a["top"][0]["label"].startswith("class_")
        assert max(abs(x["probability"] - y["probability"]) for x, y in zip(a["top"], b["top"])) <= 1e-5
    loaded = load_model(onnx_file)
    assert loaded.model is None and loaded.num_classes == 10 and loaded.transform().crop == 32
    with pytest.raises(ArtifactError, match="exported at fp32"):
        predictions(onnx_file, photos, precision="int8")
    with pytest.raises(ArtifactError, match="runs in onnxruntime"):
        predictions(onnx_file, photos, backend="openvino")
    # the engine benchmarks/deploy.py times in a process of its own: the same file's runner
    from vitzoo.bench.engine_worker import build_engine

    run = build_engine({"family": "artifact", "artifact": str(onnx_file), "threads": 1})
    images = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(run(images), loaded.runner()(images))


def corrupt_cases(folder: Path):
    """(what, change to the exported files, the words the refusal must contain)."""

    def edit_card(change):
        def apply(path):
            sidecar = Path(str(path) + ".json")
            record = json.loads(sidecar.read_text())
            change(record)
            sidecar.write_text(json.dumps(record))

        return apply

    def truncate(path):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    def drop_class(record):
        record["classes"] = record["classes"][:-1]
        record["num_classes"] -= 1

    def other_size(record):
        record["input"]["shape"] = [-1, 3, 48, 48]
        record["preprocessing"]["crop"] = 48

    def other_version(record):
        record["version"], record["vitzoo"] = 99, "9.9.9"

    return [
        ("truncated", truncate, "truncated"),
        ("no sidecar", lambda p: Path(str(p) + ".json").unlink(), "no m.onnx.json"),
        ("class count", edit_card(drop_class), "disagrees"),
        ("input size", edit_card(other_size), "disagrees"),
        ("another version", edit_card(other_version), "export it again"),
        ("not json", lambda p: Path(str(p) + ".json").write_text("{"), "unreadable"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_a_bad_file_or_description_is_refused_in_one_line(case, run_folder, tmp_path, tmp_path_factory):
    import shutil

    cache = tmp_path_factory.getbasetemp() / "clean_onnx"
    if not (cache / "m.onnx").exists():
        cache.mkdir(exist_ok=True)
        export(run_folder, cache / "m.onnx", "fp32")
    for name in ("m.onnx", "m.onnx.json"):
        shutil.copy(cache / name, tmp_path / name)
    what, change, words = corrupt_cases(tmp_path)[case]
    change(tmp_path / "m.onnx")
    with pytest.raises(ArtifactError, match=words) as error:
        load_artifact(tmp_path / "m.onnx")
    assert "m.onnx" in str(error.value) and "\n" not in str(error.value), what


def test_a_broken_export_leaves_nothing_under_the_output_name(run_folder, tmp_path, monkeypatch):
    from vitzoo.artifacts import onnx as onnx_format

    (tmp_path / "m.onnx").write_bytes(b"the previous export")
    original = onnx_format.write

    def half_written(exported, example, out, *args):
        original(exported, example, out, *args)
        out.write_bytes(out.read_bytes()[:1000])  # a writer that dies half-way
        raise OSError("disk full")

    monkeypatch.setattr(onnx_format, "write", half_written)
    with pytest.raises(OSError, match="disk full"):
        export(run_folder, tmp_path / "m.onnx", "fp32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no staging folder, no sidecar
    assert (tmp_path / "m.onnx").read_bytes() == b"the previous export"


@pytest.mark.parametrize("argv, words", [
    (["--precision", "bf16", "OUT.onnx"], "onnx files are exported at fp32, fp16, int8, not bf16"),
    (["--precision", "int8", "OUT.pt2"], "pt2 files are exported at fp32, bf16, not int8"),
    (["--precision", "fp16", "OUT.pte"], "executorch files are exported at fp32, int8, not fp16"),
    (["--format", "openvino", "OUT.onnx"], "a openvino file is named *.xml"),
    (["OUT.bin"], "name the file .onnx, .xml"),
    (["--batch", "0", "OUT.onnx"], "--batch must be dynamic or a positive number"),
])  # fmt: skip
def test_what_a_format_cannot_take_is_refused_before_anything_is_written(argv, words, run_folder, tmp_path, capsys):
    from vitzoo.cli.main import main

    argv = [a.replace("OUT", str(tmp_path / "m")) for a in argv]
    assert main(["export", "--model", str(run_folder), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_saved_int8_ir_serves_eval_and_bench_without_recalibrating(run_folder, photo_folder, tmp_path, monkeypatch):
    """`--backend openvino --precision int8 --model m.xml`: NNCF never runs again."""
    from vitzoo.bench import run_bench
    from vitzoo.config import BenchConfig
    from vitzoo.infer import openvino as ov_path

    xml = export(run_folder, tmp_path / "m8.xml", "int8", calibration=str(photo_folder))
    monkeypatch.setattr(ov_path, "quantize_int8", lambda *a, **k: pytest.fail("NNCF ran again"))
    photos = [photo_folder / "astronaut.png"]
    answer = predictions(xml, photos, backend="openvino", precision="int8")
    assert answer[0]["top"][0]["label"].startswith("class_")
    records = run_bench(BenchConfig(models=[str(xml)], batch_sizes=[1, 2], runs=2, warmup=1, throughput=False))
    assert [(r["precision"], r["backend"], r["batch_size"]) for r in records] == [("int8", "openvino", 1),
                                                                                   ("int8", "openvino", 2)]
    assert all(r["ms_median"] > 0 for r in records)


@pytest.mark.slow
def test_a_server_serves_an_exported_file_on_v1_and_v2(run_folder, photo_folder, tmp_path):
    """`vitzoo serve --model m8.xml`: the saved int8 IR answers /v1 and the Open Inference Protocol as predict does
    on the same file; attention maps (which need the PyTorch model) are refused in one answer."""
    httpclient = pytest.importorskip("tritonclient.http")
    from test_serve import ServerProcess, assert_same_top

    xml = export(run_folder, tmp_path / "m8.xml", "int8", calibration=str(photo_folder))
    photo = photo_folder / "astronaut.png"
    expected = predictions(xml, [photo])[0]["top"]
    srv = ServerProcess(["--model", str(xml), "--backend", "openvino", "--precision", "int8"], tmp_path / "log")
    try:
        srv.wait_ready()
        served = srv.client.post("/v1/classify", params={"top_k": 3}, content=photo.read_bytes(),
                                 headers={"Content-Type": "image/png"})  # fmt: skip
        assert served.status_code == 200, served.text
        assert_same_top(served.json()["top"], expected)
        attention = srv.client.post("/v1/attention", content=photo.read_bytes(), headers={"Content-Type": "image/png"})
        assert attention.status_code == 501 and "exported file" in attention.json()["error"]
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{srv.port}")
        meta = client.get_model_metadata("m8")
        assert meta["inputs"][0]["shape"] == [-1, 3, 32, 32]
        images = httpclient.InferInput("images", [1], "BYTES")
        images.set_data_from_numpy(np.array([photo.read_bytes()], dtype=object))
        probabilities = client.infer("m8", [images]).as_numpy("probabilities")[0]
        for top in expected:
            assert abs(probabilities[top["index"]] - top["probability"]) <= 1e-5
    finally:
        srv.stop()


def test_a_fixed_batch_file_takes_any_number_of_images(run_folder, photo_folder, tmp_path):
    """--batch 2: the file takes [2, 3, 32, 32]; int8 calibrates in batches of 2; 3 images run as 2 + 2 padded."""
    import onnx

    from vitzoo.infer.fidelity import SAMPLE_PHOTOS

    for precision in ("fp32", "int8"):
        out = export(run_folder, tmp_path / f"b_{precision}.onnx", precision, ("batch", "2"),
                     calibration=str(photo_folder) if precision == "int8" else None)  # fmt: skip
        graph_input = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in graph_input] == [2, 3, 32, 32]
        paths = [photo_folder / name for name in SAMPLE_PHOTOS[:3]]
        together, apart = predictions(out, paths), predictions(out, paths[:1]) + predictions(out, paths[1:])
        for a, b in zip(together, apart):
            assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
            assert max(abs(x["probability"] - y["probability"]) for x, y in zip(a["top"], b["top"])) <= 1e-5
