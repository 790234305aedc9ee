"""A run killed with SIGKILL after a checkpoint and resumed ends bit-identical to a run that was never stopped."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vitzoo.train import checkpoint as ckpt

pytest.importorskip("sklearn")
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_digits import write_digits  # noqa: E402

pytestmark = pytest.mark.slow  # training runs killed and resumed in subprocesses

EPOCHS, STEPS_PER_EPOCH = 5, 6


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits"), size=16, per_class=12)


def command(digits, output, *extra):
    train_dir, val_dir = digits
    # the full recipe (Mixup/CutMix, RandAugment, erasing, stochastic depth, EMA), on a tiny distilled model
    return [sys.executable, "-m", "vitzoo", "train", "--model", "custom", "--width", "32", "--depth", "2",
            "--heads", "2", "--patch-size", "4", "--img-size", "16", "--distilled", "--data", str(train_dir),
            "--val", str(val_dir), "--epochs", str(EPOCHS), "--batch-size", "16", "--lr", "5e-3",
            "--warmup-epochs", "1", "--save-every-steps", "2", "--threads", "1", "--seed", "7", "--output", str(output),
            "--no-progress", "--no-plot", *extra]  # fmt: skip


ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run(args):
    proc = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_same_state(a, b, where=""):
    """Every tensor equal bit for bit, every other value equal, through nested dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_sigkill_then_resume_is_bit_identical(digits, tmp_path):
    straight = tmp_path / "straight"
    run(command(digits, straight, "--workers", "0"))
    # the same run with two loader workers, killed as soon as its first checkpoint is on disk
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(digits, killed, "--workers", "2"), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (killed / "last.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    interrupted_at = ckpt.load_checkpoint(killed / "last.pt")["global_step"]
    assert 0 < interrupted_at < EPOCHS * STEPS_PER_EPOCH, "the kill came too late to test anything"
    assert not (killed / "model.safetensors").exists()
    resumed = run(command(digits, killed, "--workers", "2", "--resume", str(killed)))
    assert f"resumed from {killed / 'last.pt'}" in resumed.stderr

    final, reference = ckpt.load_checkpoint(killed / "last.pt"), ckpt.load_checkpoint(straight / "last.pt")
    assert reference["global_step"] == final["global_step"] == EPOCHS * STEPS_PER_EPOCH
    for part in ("model", "optimizer", "ema", "scaler", "schedule", "rng", "epoch_stats", "best_val_top1"):
        assert_same_state(final[part], reference[part], part)
    logs = [(out / "metrics.jsonl").read_text().splitlines() for out in (killed, straight)]
    rows = [[json.loads(line) for line in lines] for lines in logs]
    assert [r["epoch"] for r in rows[0]] == list(range(1, EPOCHS + 1))  # nothing logged twice
    for got, want in zip(*rows):
        timing = ("seconds", "images_per_s")
        assert {k: v for k, v in got.items() if k not in timing} == {k: v for k, v in want.items() if k not in timing}
    assert [p.name for p in killed.iterdir() if p.name.endswith(".tmp")] == []
