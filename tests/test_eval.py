"""`vitzoo eval` and `vitzoo predict` end to end on real photographs, single process and torchrun."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import vitzoo

from conftest import randomize_

skimage_data = pytest.importorskip("skimage.data")
SAMPLES = Path(skimage_data.__file__).parent
PHOTOS = ["rocket.jpg", "retina.jpg", "hubble_deep_field.jpg", "astronaut.png", "chelsea.png", "coffee.png",
          "motorcycle_left.png"]  # fmt: skip
CLASSES = 10
MODEL = "DeiT_tiny_patch16_224"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """15 real images (photos and crops of them) in an ImageNet-style folder and a PaddleClas list file."""
    root = tmp_path_factory.mktemp("data")
    images = []
    for photo in PHOTOS:
        with Image.open(SAMPLES / photo) as img:
            img = img.convert("RGB")
            images.append(img)
            w, h = img.size
            images.append(img.crop((0, 0, w * 2 // 3, h * 3 // 4)))
    images.append(images[0].transpose(Image.FLIP_LEFT_RIGHT))
    wnids = [f"n0{1000000 + 37 * k}" for k in range(CLASSES)]
    lines = []
    for i, img in enumerate(images):
        label = i % CLASSES
        suffix = ".JPEG" if i % 3 else ".png"
        rel = Path("val") / wnids[label] / f"img_{i:03d}{suffix}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel, quality=90) if suffix == ".JPEG" else img.save(root / rel)
        lines.append(f"{rel} {label}")
    (root / "val_list.txt").write_text("\n".join(lines) + "\n")
    # a 10-class checkpoint with O(1) random weights, so predictions differ from image to image
    reference = randomize_(timm.create_model("deit_tiny_patch16_224", num_classes=CLASSES), seed=11).eval()
    save_file(reference.state_dict(), root / "weights.safetensors")
    return root, reference, lines


def expected_accuracy(root, reference, lines):
    """Top-1/Top-5 computed here: timm's model on PaddleClas-protocol inputs, counted with numpy."""
    transform = vitzoo.eval_transform(MODEL, "seed")
    batch = torch.stack([transform(root / line.split()[0]) for line in lines])
    labels = np.array([int(line.split()[1]) for line in lines])
    with torch.no_grad():
        logits = reference(batch).numpy()
    order = np.argsort(-logits, axis=1)
    top1 = float(np.mean(order[:, 0] == labels))
    top5 = float(np.mean([labels[i] in order[i, :5] for i in range(len(labels))]))
    return top1, top5


def run_cli(args, cwd, launcher=(sys.executable, "-m", "vitzoo"), check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([*launcher, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def eval_args(root, data, output, *extra):
    return ["eval", "--model", MODEL, "--weights", str(root / "weights.safetensors"), "--num-classes", str(CLASSES),
            "--data", str(data), "--output", str(output), "--workers", "0", *extra]  # fmt: skip


def test_eval_folder_and_list_file_match_an_independent_count(dataset, tmp_path):
    root, reference, lines = dataset
    top1, top5 = expected_accuracy(root, reference, lines)
    assert 0 < top1 < 1 and top1 < top5, "the data should make accuracy informative"
    folder = run_cli(eval_args(root, root / "val", tmp_path / "folder.json", "--batch-size", "4"), tmp_path)
    run_cli(eval_args(root, root / "val_list.txt", tmp_path / "list.json", "--root", str(root), "--workers", "2"), tmp_path)
    for name in ("folder.json", "list.json"):
        result = json.loads((tmp_path / name).read_text())
        assert result["images"] == len(lines) and result["skipped"] == 0
        assert result["top1"] == pytest.approx(top1, abs=1e-12) and result["top5"] == pytest.approx(top5, abs=1e-12)
        assert result["model"] == MODEL and result["protocol"] == "seed"
        assert result["seed"]["top1"] == 0.718 and result["images_per_s"] > 0
        assert set(result["time_s"]) == {"decode", "preprocess", "model", "wall"}
        assert all(v > 0 for v in result["time_s"].values())
    assert f"Top-1 {top1:.4f} (seed 0.7180)" in folder.stdout
    assert "img/s" in folder.stderr  # the progress bar


def test_limit(dataset, tmp_path):
    root, _, _ = dataset
    run_cli(eval_args(root, root / "val_list.txt", tmp_path / "r.json", "--limit", "5"), tmp_path)
    assert json.loads((tmp_path / "r.json").read_text())["images"] == 5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_count_every_image_once(dataset, tmp_path):
    root, _, lines = dataset
    run_cli(eval_args(root, root / "val", tmp_path / "single.json"), tmp_path)
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "vitzoo")  # fmt: skip
    run_cli(eval_args(root, root / "val", tmp_path / "dist.json", "-q"), tmp_path, launcher=launcher)
    single = json.loads((tmp_path / "single.json").read_text())
    both = json.loads((tmp_path / "dist.json").read_text())
    assert both["world_size"] == 2 and single["world_size"] == 1
    assert both["images"] == single["images"] == len(lines)  # 15 images: 8 + 7, nothing padded or counted twice
    assert (both["top1"], both["top5"]) == (single["top1"], single["top5"])
    # float32 logits move in the last bits with the batch composition
    assert both["loss"] == pytest.approx(single["loss"], rel=1e-5)


@pytest.mark.slow
def test_bad_images_fail_or_are_skipped(dataset, tmp_path):
    root, _, lines = dataset
    data = tmp_path / "data"
    data.mkdir()
    good = [line for line in lines[:6]]
    (data / "broken.jpg").write_bytes((SAMPLES / "rocket.jpg").read_bytes()[:3000])
    listing = [f"{root / line.split()[0]} {line.split()[1]}" for line in good] + [f"{data / 'broken.jpg'} 3"]
    (data / "list.txt").write_text("\n".join(listing) + "\n")
    proc = run_cli(eval_args(root, data / "list.txt", tmp_path / "r.json", "--root", "/"), tmp_path, check=False)
    assert proc.returncode == 2 and "broken.jpg" in proc.stderr and "truncated" in proc.stderr
    proc = run_cli(eval_args(root, data / "list.txt", tmp_path / "r.json", "--root", "/", "--on-bad-image", "skip"), tmp_path)
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["images"] == 6 and result["skipped"] == 1
    assert "(1 skipped)" in proc.stdout and "broken.jpg" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "content, message",
    [
        ("val/a.png 1\nval/b.png\n", r"list\.txt:2: expected 'relative/path label', got 'val/b\.png'"),
        ("val/a.png one\n", r"list\.txt:1: expected"),
        ("val/a.png 10\n", r"label 10 .* out of range for a 10-class model"),
        ("val/missing.png 1\n", r"list\.txt:1: image .*missing\.png does not exist"),
        ("\n\n", r"list\.txt: no images listed"),
    ],
)
def test_bad_list_files(dataset, tmp_path, content, message):
    root, _, _ = dataset
    (tmp_path / "val").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "val" / "a.png")
    (tmp_path / "list.txt").write_text(content)
    proc = run_cli(eval_args(root, tmp_path / "list.txt", tmp_path / "r.json"), tmp_path, check=False)
    assert proc.returncode == 2
    import re

    assert re.search(message, proc.stderr), proc.stderr[-2000:]


@pytest.mark.slow
def test_missing_or_empty_folder_and_wrong_weights(dataset, tmp_path):
    root, _, _ = dataset
    proc = run_cli(eval_args(root, tmp_path / "nowhere", tmp_path / "r.json"), tmp_path, check=False)
    assert proc.returncode == 2 and "nowhere: no such folder or list file" in proc.stderr
    (tmp_path / "empty" / "n01").mkdir(parents=True)
    proc = run_cli(eval_args(root, tmp_path / "empty", tmp_path / "r.json"), tmp_path, check=False)
    assert proc.returncode == 2 and "no images" in proc.stderr
    args = eval_args(root, root / "val", tmp_path / "r.json")
    args[args.index(MODEL)] = "DeiT_small_patch16_224"
    proc = run_cli(args, tmp_path, check=False)
    assert proc.returncode == 2 and "weights.safetensors" in proc.stderr and "needs" in proc.stderr


def test_predict_json_names_imagenet_classes(tmp_path):
    model = randomize_(vitzoo.create_model(MODEL), seed=3)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    proc = run_cli(["predict", "--model", MODEL, "--weights", str(tmp_path / "w.safetensors"), "--format", "json",
                    str(SAMPLES / "chelsea.png"), str(SAMPLES / "rocket.jpg")], tmp_path)  # fmt: skip
    results = json.loads(proc.stdout)
    assert [Path(r["image"]).name for r in results] == ["chelsea.png", "rocket.jpg"]
    classes = vitzoo.imagenet_classes()
    with torch.no_grad():
        probs = model.eval()(vitzoo.eval_transform(MODEL)(SAMPLES / "chelsea.png")[None]).softmax(1)[0]
    top = results[0]["top"]
    assert len(top) == 5 and [t["index"] for t in top] == probs.topk(5).indices.tolist()
    assert all(a["probability"] >= b["probability"] for a, b in zip(top, top[1:]))
    assert top[0]["probability"] == pytest.approx(probs.max().item(), rel=1e-5)
    assert top[0]["wnid"] == classes[top[0]["index"]][0]
    assert top[0]["label"] == classes[top[0]["index"]][1].split(",")[0]
    text = run_cli(["predict", "--model", MODEL, "--weights", str(tmp_path / "w.safetensors"),
                    str(SAMPLES / "chelsea.png")], tmp_path).stdout  # fmt: skip
    assert top[0]["label"] in text


# -- bulk predict: a folder into JSON lines, across processes, resumable ----------------------------------------------
def predict_args(root, output, *extra):
    return ["predict", "--model", MODEL, "--weights", str(root / "weights.safetensors"), "--num-classes",
            str(CLASSES), "--data", str(root / "val"), "--output", str(output), "--workers", "0", "-q", *extra]  # fmt: skip


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def same_predictions(a, b):
    """The same images in the same order with the same classes; probabilities within float32 batch-order noise."""
    assert [r["image"] for r in a] == [r["image"] for r in b]
    for x, y in zip(a, b):
        assert x["target"] == y["target"] and [t["index"] for t in x["top"]] == [t["index"] for t in y["top"]]
        for s, t in zip(x["top"], y["top"]):
            assert s["probability"] == pytest.approx(t["probability"], abs=1e-6)


@pytest.mark.slow
def test_bulk_predict_single_and_torchrun_write_every_image_once(dataset, tmp_path):
    root, reference, lines = dataset
    run_cli(predict_args(root, tmp_path / "single.jsonl"), tmp_path)
    single = read_jsonl(tmp_path / "single.jsonl")
    assert [r["image"] for r in single] == sorted(line.split()[0][len("val/"):] for line in lines)  # folder order
    # the same numbers as an independent computation (timm's model on the seed's preprocessing)
    transform = vitzoo.eval_transform(MODEL, "seed")
    with torch.no_grad():
        probs = reference(torch.stack([transform(root / "val" / r["image"]) for r in single])).softmax(-1)
    for row, p in zip(single, probs):
        assert [t["index"] for t in row["top"]] == p.topk(5).indices.tolist()
        assert row["top"][0]["probability"] == pytest.approx(p.max().item(), abs=1e-5)
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "vitzoo")  # fmt: skip
    run_cli(predict_args(root, tmp_path / "dist.jsonl", "--batch-size", "3"), tmp_path, launcher=launcher)
    same_predictions(read_jsonl(tmp_path / "dist.jsonl"), single)
    assert not list(tmp_path.glob("dist.jsonl.part*"))  # merged and removed


@pytest.mark.slow
def test_bulk_predict_killed_then_resumed_gives_the_same_file(dataset, tmp_path):
    import signal
    import time

    root, _, lines = dataset
    run_cli(predict_args(root, tmp_path / "whole.jsonl"), tmp_path)
    out = tmp_path / "killed.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "vitzoo", *predict_args(root, out, "--batch-size", "1")],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    part = tmp_path / "killed.jsonl.part0"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if part.exists() and part.read_text().count("\n") >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    written = part.read_text().count("\n")
    assert proc.returncode == -signal.SIGKILL and 2 <= written < len(lines), "the run was not killed mid-way"
    with open(part, "a") as f:
        f.write('{"image": "half a li')  # as a kill in the middle of a write leaves it
    proc = run_cli(predict_args(root, out), tmp_path)
    assert f"({written} already done" in proc.stdout
    same_predictions(read_jsonl(out), read_jsonl(tmp_path / "whole.jsonl"))
    assert run_cli(predict_args(root, out), tmp_path).stdout.count(f"({len(lines)} already done") == 1  # nothing left
