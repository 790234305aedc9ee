"""vitzoo train end to end on real data: scikit-learn's handwritten digits (1,797 scanned 8x8 images), CPU only.

Writes the digits as an ImageNet-style folder (upsampled), trains a small CNN teacher (an exported program, which
`--teacher` loads), then trains a small custom ViT/DeiT with the DeiT recipe three ways (no distillation, hard, soft)
through the command line, and records each run in benchmarks/train_digits.json.

    python benchmarks/train_digits.py [--out DIR] [--epochs N]

The tests import the helpers from here and run shorter versions of the same runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

HERE = Path(__file__).resolve().parent
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_SIZE = 32

# The student: a small ViT on 32x32 inputs, 4x4 patches of 8 pixels (2x2 scanned pixels each), 200k parameters.
# DeiT's recipe scaled to a 1,438-image set: batch 32 (peak lr 1e-3 after the linear scaling), a 3-epoch warm-up,
# EMA decay for a few thousand steps instead of a few million, crops that keep most of a digit and no flips (a
# mirrored digit is another glyph). Mixup, CutMix, RandAugment, random erasing, label smoothing, stochastic depth,
# AdamW with its no-decay groups, cosine schedule and the lr scaling stay as DeiT has them.
MODEL = "custom ViT width 64, depth 4, 4 heads, patch 8, 32x32"
STUDENT = ["--model", "custom", "--width", "64", "--depth", "4", "--heads", "4", "--patch-size", "8",
           "--img-size", str(IMG_SIZE)]  # fmt: skip
SMALL_DATA = ["--batch-size", "32", "--lr", "1.6e-2", "--warmup-epochs", "3", "--ema-decay", "0.998",
              "--crop-scale", "0.35", "1", "--hflip", "0", "--workers", "1", "--threads", "1",
              "--no-progress"]  # fmt: skip


def write_digits(root: Path, size: int = IMG_SIZE, val_fraction: float = 0.2, per_class: int | None = None,
                 seed: int = 0) -> tuple[Path, Path]:  # fmt: skip
    """root/train/<digit>/*.png and root/val/<digit>/*.png: a stratified split (of the first `per_class` images of
    each digit, or all), images upsampled bicubically."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label)[:per_class])
        n_val = round(len(indices) * val_fraction)
        for split, chosen in (("val", indices[:n_val]), ("train", indices[n_val:])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 ink -> 0..255
                Image.fromarray(pixels).resize((size, size), Image.BICUBIC).convert("RGB").save(folder / f"{i}.png")
    return root / "train", root / "val"


def _tensors(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A folder of class folders as a normalised float batch and its labels (the student's normalisation)."""
    images, labels = [], []
    for label, cls in enumerate(sorted(p.name for p in folder.iterdir())):
        for path in sorted((folder / cls).iterdir()):
            images.append(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    return x, torch.tensor(labels)


class TinyCNN(nn.Module):
    """A convnet teacher that looks at the digits at their scanned resolution (8x8): cheap to train on a CPU."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.AvgPool2d(IMG_SIZE // 8),
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


def train_teacher(train_dir: Path, val_dir: Path, out: Path, epochs: int = 15, seed: int = 0) -> float:
    """A small CNN trained on the digits (random shifts of up to 4 pixels), saved as an exported program (.pt2),
    which `--teacher` loads as it is; returns its val top-1."""
    torch.manual_seed(seed)
    x, y = _tensors(train_dir)
    vx, vy = _tensors(val_dir)
    model = TinyCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x)).split(64):
            dx, dy = torch.randint(-4, 5, (2,)).tolist()
            images = torch.roll(x[batch], shifts=(dy, dx), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(images), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(vx).argmax(1) == vy).float().mean().item()
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(model, (vx[:2],), dynamic_shapes=({0: batch},)), str(out))
    return accuracy


def train_command(train_dir: Path, val_dir: Path, output: Path, epochs: int, distillation: str = "none",
                  teacher: Path | None = None, extra: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    """The `vitzoo train` command line of one run (as `python -m vitzoo train`)."""
    args = [sys.executable, "-m", "vitzoo", "train", *STUDENT, "--data", str(train_dir), "--val", str(val_dir),
            "--epochs", str(epochs), "--output", str(output), *SMALL_DATA]  # fmt: skip
    if distillation != "none":
        args += ["--distilled", "--distillation", distillation, "--teacher", str(teacher)]
    return args + list(extra)


def run(command: list[str]) -> tuple[dict, float]:
    """Run a training command; returns its result.json and the wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{proc.stderr[-3000:]}")
    output = Path(command[command.index("--output") + 1])
    return json.loads((output / "result.json").read_text()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vitzoo_train_digits"))
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--record", type=Path, default=HERE / "train_digits.json")
    args = parser.parse_args()
    train_dir, val_dir = write_digits(args.out / "digits")
    teacher = args.out / "teacher_cnn.pt2"
    teacher_top1 = train_teacher(train_dir, val_dir, teacher)
    print(f"teacher CNN: val top-1 {teacher_top1:.4f}")
    runs = []
    for distillation in ("none", "hard", "soft"):
        output = args.out / f"run_{distillation}"
        command = train_command(train_dir, val_dir, output, args.epochs, distillation, teacher, ("--eval-every", "10"))
        result, seconds = run(command)
        metrics = result["metrics"]
        record = {
            "model": MODEL + (", distilled" if distillation != "none" else ""),
            "distillation": distillation, "val_top1": metrics["val_top1"], "epochs": result["epochs"],
            "seconds": round(seconds, 1), "command": "vitzoo train " + shlex.join(command[3:]),
        }  # fmt: skip
        for key in ("val_top1_cls", "val_top1_dist", "ema_val_top1", "grad_norm_head", "grad_norm_head_dist"):
            if key in metrics:
                record[key] = metrics[key]
        if distillation != "none":
            record["teacher"] = f"TinyCNN (exported program), val top-1 {teacher_top1:.4f}"
        print(json.dumps(record))
        runs.append(record)
    args.record.write_text(json.dumps(runs, indent=2) + "\n")
    print(f"wrote {args.record}")


if __name__ == "__main__":
    main()
