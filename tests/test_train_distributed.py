"""torchrun --nproc_per_node 2 on CPU (gloo): DDP training with repeated augmentation, only rank 0 writes, and a run
resumed from an epoch checkpoint ends bit-identical to the uninterrupted one."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitzoo.train import checkpoint as ckpt

pytest.importorskip("sklearn")
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_digits import write_digits  # noqa: E402

from test_train_resume import assert_same_state  # noqa: E402

pytestmark = pytest.mark.slow  # torchrun: two training processes


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits"), size=16, per_class=12)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(digits, output, *extra):
    train_dir, val_dir = digits
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "-m", "vitzoo", "train", "--model", "custom", "--width", "32",
            "--depth", "2", "--heads", "2", "--patch-size", "4", "--img-size", "16", "--data", str(train_dir),
            "--val", str(val_dir), "--epochs", "2", "--batch-size", "8", "--lr", "5e-3", "--warmup-epochs", "1",
            "--workers", "0", "--threads", "1", "--save-every-steps", "3", "--keep-epoch-checkpoints",
            "--output", str(output), "--no-progress", *extra]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_processes_train_rank0_writes_and_resume_is_exact(digits, tmp_path):
    out = tmp_path / "ddp"
    proc = torchrun(digits, out)
    assert proc.stdout.count("trained 2 epochs") == 1  # the summary comes from rank 0 only
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "curves.png", "epoch_1.pt", "epoch_2.pt", "last.pt", "metrics.jsonl", "model.json", "model.safetensors",
        "model_ema.safetensors", "result.json",
    ]  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # one writer: no row twice
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2
    # 100 images x 3 repeats / 2 ranks, 256-image rounding: 50 per rank per epoch -> 6 steps of 8
    assert result["global_step"] == 12
    state = ckpt.load_checkpoint(out / "last.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # every rank's RNG states, gathered by rank 0
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # seeded per rank

    resumed = tmp_path / "resumed"
    torchrun(digits, resumed, "--resume", str(out / "epoch_1.pt"))
    final = ckpt.load_checkpoint(resumed / "last.pt")
    for part in ("model", "optimizer", "ema", "rng", "global_step", "best_val_top1"):
        assert_same_state(final[part], state[part], part)
    assert [json.loads(line)["epoch"] for line in (resumed / "metrics.jsonl").read_text().splitlines()] == [2]
