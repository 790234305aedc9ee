"""`vitzoo table --data`: the seed's accuracy tables measured, equal to `vitzoo eval`, kept per model, in the seed's
layout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import vitzoo

from conftest import randomize_

skimage_data = pytest.importorskip("skimage.data")
SAMPLES = Path(skimage_data.__file__).parent
PHOTOS = ["rocket.jpg", "astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "retina.jpg"]
MODELS = ["ViT_base_patch16_224", "DeiT_tiny_patch16_224", "DeiT_tiny_distilled_patch16_224"]
SEED_COLUMNS = ["Models", "Top1", "Top5", "Reference<br>top1", "Reference<br>top5", "FLOPS<br>(G)", "Params<br>(M)"]


def vitzoo_cli(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "vitzoo", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    val = root / "val"
    wnids = [wnid for wnid, _ in vitzoo.imagenet_classes()[:4]]  # folders named by ImageNet class, as its val set
    for i, photo in enumerate(PHOTOS * 2):  # 12 images in 4 classes
        folder = val / wnids[i % 4]
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(SAMPLES / photo) as img:
            img = img.convert("RGB")
            (img if i < len(PHOTOS) else img.transpose(Image.FLIP_LEFT_RIGHT)).save(folder / f"{i}.jpg", quality=92)
    weights = root / "weights"
    for seed, name in enumerate(MODELS):  # a timm-style .pth converted as a user would
        torch.save(randomize_(vitzoo.create_model(name), seed=seed).state_dict(), root / f"{name}.pth")
        vitzoo_cli("convert", root / f"{name}.pth", weights / f"{name}.safetensors", "--model", name, cwd=root)
    return root, val, weights


@pytest.mark.slow  # half a minute: every model of a table evaluated on a folder
def test_table_data_equals_eval_keeps_results_and_has_the_seeds_columns(setup):
    root, val, weights = setup
    out = root / "results"
    args = ["table", "--models", ",".join(MODELS), "--no-latency", "--data", val, "--weights", weights,
            "--output-dir", out, "--workers", "0", "-o", root / "table.md"]  # fmt: skip
    vitzoo_cli(*args, cwd=root)
    for name in MODELS:
        kept = json.loads((out / f"{name}.json").read_text())
        vitzoo_cli("eval", "--model", name, "--weights", weights / f"{name}.safetensors", "--data", val,
                   "--workers", "0", "-q", "-o", root / f"{name}.eval.json", cwd=root)  # fmt: skip
        single = json.loads((root / f"{name}.eval.json").read_text())
        assert (kept["top1"], kept["top5"], kept["images"]) == (single["top1"], single["top5"], single["images"])
    text = (root / "table.md").read_text()
    tables = [block for block in text.split("### ")[1:]]
    assert [t.split("\n", 1)[0] for t in tables] == ["ViT", "DeiT"]
    for table in tables:
        header = [c.strip() for c in table.split("\n")[2].strip("|").split("|")]
        printed = [c for c in header if "(seed)" not in c]  # the seed's columns, measured ones with the seed's beside
        assert printed == SEED_COLUMNS
        assert header[header.index("Top1") + 1] == "Top1 (seed)"
    assert "| DeiT_tiny_distilled_patch16_224 | " in text and "| 0.7410 |" in text  # the seed's printed Top1
    # a rerun with one result deleted recomputes that model only
    before = {n: (out / f"{n}.json").stat().st_mtime_ns for n in MODELS}
    (out / f"{MODELS[1]}.json").unlink()
    proc = vitzoo_cli(*args, cwd=root)
    assert f"{MODELS[1]}: evaluating" in proc.stderr
    for name in (MODELS[0], MODELS[2]):
        assert f"{name}: kept" in proc.stderr and (out / f"{name}.json").stat().st_mtime_ns == before[name]
    assert json.loads((out / f"{MODELS[1]}.json").read_text())["top1"] == kept_top1(root, MODELS[1])


def kept_top1(root, name):
    return json.loads((root / f"{name}.eval.json").read_text())["top1"]


def test_a_set_not_named_by_imagenet_class_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    from vitzoo.bench import accuracy
    from vitzoo.data.datasets import DatasetError

    (tmp_path / "cats").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cats" / "0.jpg")
    monkeypatch.setattr(accuracy, "create_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(DatasetError, match="'cats' are not among the model's 1000 classes"):
        accuracy.measure_accuracy(MODELS[:1], tmp_path, weights="paddleclas")
