"""examples/cpp built with CMake and run: vitzoo_classify_openvino (an OpenVINO IR) and vitzoo_classify_aoti (an
AOTInductor .pt2) give `vitzoo predict`'s top-5 on real photographs, and their preprocessing (preprocess.hpp, with its
own Pillow bicubic) makes the very tensor vitzoo's EvalTransform makes, for both interpolations and both roundings.

The model: a tiny ViT trained on digits (conftest's `train_tiny_digits_run`; Pillow bicubic, torchvision rounding),
and a copy of it whose preprocessing is PaddleClas's (OpenCV bilinear, paddle rounding), each exported by the CLI.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, train_tiny_digits_run
from PIL import Image

pytestmark = pytest.mark.slow  # a CMake build of two programs, a training run and four exports

INCLUDE_DIRS = (Path("/usr/include"), Path("/usr/local/include"))
for _tool in ("cmake", "g++"):
    if shutil.which(_tool) is None:
        pytest.skip(f"no {_tool} (apt-get install -y cmake g++)", allow_module_level=True)
if not any((d / "opencv4/opencv2/imgcodecs.hpp").exists() for d in INCLUDE_DIRS):
    pytest.skip("no OpenCV headers (apt-get install -y libopencv-imgcodecs-dev libopencv-imgproc-dev "
                "libopencv-core-dev)", allow_module_level=True)  # fmt: skip
if not any((d / "nlohmann/json.hpp").exists() for d in INCLUDE_DIRS):
    pytest.skip("no nlohmann/json headers (apt-get install -y nlohmann-json3-dev)", allow_module_level=True)
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image's photographs are needed")

EXAMPLE = ROOT / "examples" / "cpp"
DATA = Path(skimage_data.__file__).parent
PHOTOS = [str(DATA / name) for name in ("astronaut.png", "coffee.png", "chelsea.png")]  # PNG: one decoding
# for the input comparison: JPEGs (OpenCV decodes them on both sides) and a greyscale PNG too
PREPROCESS_PHOTOS = [*PHOTOS, str(DATA / "camera.png"), str(DATA / "rocket.jpg"), str(DATA / "hubble_deep_field.jpg")]
PILLOW_13 = int(Image.__version__.split(".")[0]) >= 13


def execute(*cmd, timeout=600) -> subprocess.CompletedProcess:
    """`cmd` run, its exit status left to the caller."""
    return subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True, timeout=timeout)


def run(*cmd, timeout=600) -> subprocess.CompletedProcess:
    proc = execute(*cmd, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def vitzoo(*args) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "vitzoo", *args)


def predict(model, images) -> list[dict]:
    return json.loads(vitzoo("predict", "--model", model, "--top-k", "5", "--format", "json", *images).stdout)


def classify(program, model, images, *extra) -> list[dict]:
    return [json.loads(line) for line in run(program, model, *images, *extra).stdout.splitlines()]


def assert_same_top(got: list[dict], expected: list[dict], tol: float = 1e-4):
    assert [g["image"] for g in got] == [e["image"] for e in expected]
    for g, e in zip(got, expected):
        assert [(t["index"], t["label"]) for t in g["top"]] == [(t["index"], t["label"]) for t in e["top"]], g["image"]
        np.testing.assert_allclose([t["probability"] for t in g["top"]], [t["probability"] for t in e["top"]],
                                   rtol=0, atol=tol, err_msg=g["image"])  # fmt: skip


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> dict[str, Path]:
    """Both programs, configured and built as README.md says; a runtime that is not installed leaves its out."""
    import torch

    build = tmp_path_factory.mktemp("cpp_build")
    configure = ["cmake", "-S", EXAMPLE, "-B", build, f"-DTORCH_DIR={Path(torch.__file__).parent}"]
    if importlib.util.find_spec("openvino") is not None:
        import openvino

        configure.append(f"-DOpenVINO_DIR={Path(openvino.__file__).parent / 'cmake'}")
    run(*configure)
    run("cmake", "--build", build, "-j", "2")
    return {name: build / f"vitzoo_classify_{name}" for name in ("openvino", "aoti")}


def program(programs, name) -> Path:
    if not programs[name].exists():
        pytest.skip(f"vitzoo_classify_{name} was not built (its runtime is not installed)")
    return programs[name]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[str, Path]:
    """The trained run folder and its exports: fp32 and int8 IR, fp32 AOTInductor package."""
    root = tmp_path_factory.mktemp("cpp_digits")
    run_folder, _, _ = train_tiny_digits_run(root)
    files = {"run": run_folder}
    for name, precision in (("fp32.xml", "fp32"), ("int8.xml", "int8"), ("fp32.pt2", "fp32")):
        if name.endswith(".xml") and importlib.util.find_spec("openvino") is None:
            continue
        vitzoo("export", "--model", run_folder, "--precision", precision, root / name)
        files[name] = root / name
    return files


@pytest.fixture(scope="module")
def paddle_digits(digits, tmp_path_factory) -> dict[str, Path]:
    """The same weights with PaddleClas's preprocessing (OpenCV decode and bilinear, paddle rounding), as an IR."""
    pytest.importorskip("openvino")
    root = tmp_path_factory.mktemp("cpp_paddle_digits")
    run_folder = root / "run"
    shutil.copytree(digits["run"], run_folder)
    card = json.loads((run_folder / "model.json").read_text())
    card["eval_transform"].update(resize_short=19, interpolation="cv2_bilinear", decoder="cv2", rounding="paddle")
    (run_folder / "model.json").write_text(json.dumps(card, indent=2))
    vitzoo("export", "--model", run_folder, root / "fp32.xml")
    return {"run": run_folder, "fp32.xml": root / "fp32.xml"}


@pytest.mark.parametrize("runtime, name", [("openvino", "fp32.xml"), ("openvino", "int8.xml"), ("aoti", "fp32.pt2")])
def test_classify_matches_vitzoo_predict(programs, digits, runtime, name):
    exe = program(programs, runtime)
    if name not in digits:
        pytest.skip(f"{name} needs openvino")
    got = classify(exe, digits[name], PHOTOS)
    assert_same_top(got, predict(digits[name], PHOTOS))  # the same file in Python
    if name.startswith("fp32"):
        assert_same_top(got, predict(digits["run"], PHOTOS))  # and the PyTorch model it was exported from


def test_classify_paddle_preprocessing_matches_run_folder(programs, paddle_digits):
    got = classify(program(programs, "openvino"), paddle_digits["fp32.xml"], PHOTOS)
    assert_same_top(got, predict(paddle_digits["fp32.xml"], PHOTOS))
    assert_same_top(got, predict(paddle_digits["run"], PHOTOS))


@pytest.fixture(scope="module")
def synthetic_images(tmp_path_factory) -> list[str]:
    """Images that stress the resampling: noise (Pillow's bicubic overshoots and clips), a tiny one enlarged, and
    (Pillow 13 and later resample it vertically first) one over 2:1 tall, shrunk."""
    folder = tmp_path_factory.mktemp("cpp_synthetic")
    rng = np.random.default_rng(0)
    images = {
        "noise.png": rng.integers(0, 256, (173, 211, 3), dtype=np.uint8),
        "tiny.png": rng.integers(0, 256, (9, 13, 3), dtype=np.uint8),
        "binary.png": np.repeat(rng.integers(0, 2, (120, 97, 1), dtype=np.uint8) * 255, 3, axis=2),
    }
    if PILLOW_13:
        images["tall.png"] = rng.integers(0, 256, (800, 300, 3), dtype=np.uint8)
    for name, pixels in images.items():
        Image.fromarray(pixels).save(folder / name)
    return [str(folder / name) for name in images]


def _variant(interpolation, decoder, rounding, resize_short, crop, mean=(0.485, 0.456, 0.406),
             std=(0.229, 0.224, 0.225)) -> dict:  # fmt: skip
    return {"resize_short": resize_short, "crop": crop, "interpolation": interpolation, "mean": list(mean),
            "std": list(std), "decoder": decoder, "rounding": rounding}  # fmt: skip


# preprocessing written into a sidecar by hand: --dump-input reads only the sidecar, never the model file
HAND_MADE = {
    "bicubic-paddle": _variant("pil_bicubic", "cv2", "paddle", 256, 224),
    "bicubic-torchvision": _variant("pil_bicubic", "cv2", "torchvision", 233, 200, (0.5,) * 3, (0.5,) * 3),
    "bilinear-paddle": _variant("cv2_bilinear", "cv2", "paddle", 233, 200, (0.5,) * 3, (0.5,) * 3),
    "bilinear-torchvision": _variant("cv2_bilinear", "cv2", "torchvision", 256, 224),
}


def dump_input(exe, model, images, out: Path) -> np.ndarray:
    card = json.loads(Path(f"{model}.json").read_text())
    size = card["input"]["shape"][-1]
    run(exe, model, *images, "--dump-input", out)
    return np.fromfile(out, dtype=np.float32).reshape(len(images), 3, size, size)


def expected_input(card_path: Path, images) -> np.ndarray:
    from vitzoo.data.transforms import EvalTransform

    fields = json.loads(card_path.read_text())["preprocessing"]
    transform = EvalTransform(**{**fields, "mean": tuple(fields["mean"]), "std": tuple(fields["std"])})
    return np.stack([transform(image).numpy() for image in images])


@pytest.mark.parametrize("variant", ["exported-digits", "exported-paddle", *HAND_MADE])
def test_input_matches_eval_transform(programs, digits, paddle_digits, synthetic_images, tmp_path, variant):
    exe = program(programs, "openvino")
    if variant == "exported-digits":  # Pillow decodes in Python: PNGs only (JPEG decoders may differ by a level)
        model, images = digits["fp32.xml"], [*PHOTOS, *synthetic_images]
    elif variant == "exported-paddle":
        model, images = paddle_digits["fp32.xml"], [*PREPROCESS_PHOTOS, *synthetic_images]
    else:
        record = json.loads(Path(f"{digits['fp32.xml']}.json").read_text())
        fields = HAND_MADE[variant]
        record.update(preprocessing=fields, input=dict(record["input"], shape=[-1, 3, fields["crop"], fields["crop"]]))
        model = tmp_path / f"{variant}.xml"  # not written: the sidecar is all --dump-input reads
        Path(f"{model}.json").write_text(json.dumps(record))
        images = [*PREPROCESS_PHOTOS, *synthetic_images]
    got = dump_input(exe, model, images, tmp_path / "input.f32")
    expected = expected_input(Path(f"{model}.json"), images)
    for image, g, e in zip(images, got, expected):
        assert np.abs(g - e).max() <= 1e-6, f"{variant}: {image}"


@pytest.mark.parametrize("runtime, name", [("openvino", "fp32.xml"), ("aoti", "fp32.pt2")])
def test_bench_and_threads(programs, digits, runtime, name):
    exe = program(programs, runtime)
    if name not in digits:
        pytest.skip(f"{name} needs openvino")
    lines = classify(exe, digits[name], PHOTOS[:1], "--bench", "5", "--threads", "1")
    assert "top" in lines[0]
    assert [(line["batch"], line["calls"]) for line in lines[1:]] == [(1, 5), (8, 5)]
    assert all(line["ms_median"] > 0 for line in lines[1:])
    lines = classify(exe, digits[name], [], "--bench", "2", "--bench-batch", "3")  # one batch size, what deploy.py times
    assert [(line["batch"], line["calls"]) for line in lines] == [(3, 2)]


def test_errors_name_the_problem(programs, digits, tmp_path):
    exe = program(programs, "aoti")
    proc = execute(exe)
    assert proc.returncode == 2 and "usage:" in proc.stderr
    proc = execute(exe, tmp_path / "missing.pt2", PHOTOS[0])
    assert proc.returncode == 1 and "missing.pt2.json: missing" in proc.stderr
    if "fp32.xml" in digits:  # an IR's sidecar given to the AOTInductor program
        proc = execute(exe, digits["fp32.xml"], PHOTOS[0])
        assert proc.returncode == 1 and 'describes a "openvino" file, not "pt2"' in proc.stderr
    proc = execute(exe, digits["fp32.pt2"], tmp_path / "none.png")
    assert proc.returncode == 1 and "none.png: not a decodable image" in proc.stderr


def test_fixed_batch_file_pads_the_last_batch(programs, digits, tmp_path):
    """A file of batch 2 (made here by reshaping the dynamic IR, quicker than another export) given three images:
    two batches, the second padded; the same answers as the dynamic file's."""
    exe = program(programs, "openvino")
    import openvino

    model = openvino.Core().read_model(str(digits["fp32.xml"]))
    model.reshape({0: [2, 3, 16, 16]})
    fixed = tmp_path / "batch2.xml"
    openvino.save_model(model, str(fixed), compress_to_fp16=False)
    record = json.loads(Path(f"{digits['fp32.xml']}.json").read_text())
    record.update(file=fixed.name, input=dict(record["input"], shape=[2, 3, 16, 16]))
    Path(f"{fixed}.json").write_text(json.dumps(record))
    assert_same_top(classify(exe, fixed, PHOTOS), classify(exe, digits["fp32.xml"], PHOTOS), tol=1e-6)
    lines = classify(exe, fixed, [], "--bench", "3")
    assert [line["batch"] for line in lines] == [2]
    proc = execute(exe, fixed, "--bench", "3", "--bench-batch", "4")
    assert proc.returncode == 1 and "takes batch 2 only" in proc.stderr
