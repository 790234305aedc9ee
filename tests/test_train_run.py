"""vitzoo.train.train in-process on a few real digits: bad inputs stop before any step, NaN stops cleanly,
fine-tuning to new classes and sizes, and the CLI's error path."""

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import vitzoo
from vitzoo.data.datasets import DatasetError
from vitzoo.train import CheckpointError, ConfigError, NonFiniteLossError, TeacherError, train
from vitzoo.train import checkpoint as ckpt
from vitzoo.train import trainer

pytest.importorskip("sklearn")
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_digits import write_digits  # noqa: E402

from test_train_units import Pooled  # noqa: E402


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """12 real digits per class at 16x16: 100 train, 20 val images."""
    return write_digits(tmp_path_factory.mktemp("digits"), size=16, per_class=12)


def tiny(digits, output, **changes):
    train_dir, val_dir = digits
    settings = dict(model="custom", width=32, depth=2, heads=2, patch_size=4, img_size=16, data=str(train_dir),
                    val=str(val_dir), epochs=1, batch_size=16, lr=5e-3, warmup_epochs=0.5, workers=0, progress=False,
                    plot=False, threads=1, output=str(output))  # fmt: skip
    return {**settings, **changes}


@pytest.fixture
def no_steps(monkeypatch):
    """Fail the test if any training step runs."""

    def step(*_):
        raise AssertionError("a training step ran")

    monkeypatch.setattr(trainer._Run, "_step", step)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # TorchScript teachers are still accepted
def test_bad_inputs_stop_before_any_step(digits, tmp_path, no_steps):
    torch.jit.script(Pooled(5)).save(str(tmp_path / "teacher5.pt"))
    out = tmp_path / "run"
    with pytest.raises(TeacherError, match="teacher5.pt predicts 5 classes, the training data has 10"):
        train(tiny(digits, out, distilled=True, distillation="hard", teacher=str(tmp_path / "teacher5.pt")))
    with pytest.raises(ConfigError, match="needs a distilled student"):
        train(tiny(digits, out, distillation="soft", teacher=str(tmp_path / "teacher5.pt")))
    val = tmp_path / "val"
    shutil.copytree(digits[1], val)
    (val / "x").mkdir()
    shutil.copy(next((val / "3").iterdir()), val / "x" / "stray.png")
    with pytest.raises(DatasetError, match=r"class folder\(s\) x have no images in the train set"):
        train(tiny(digits, out, val=str(val)))
    assert not out.exists() or not any(out.iterdir())


def test_resume_from_another_model_or_a_weights_file_fails_before_any_step(digits, tmp_path, monkeypatch):
    result = train(tiny(digits, tmp_path / "a"))
    assert ckpt.load_checkpoint(result.checkpoint)["global_step"] == 6
    monkeypatch.setattr(trainer._Run, "_step", lambda *_: pytest.fail("a training step ran"))
    with pytest.raises(CheckpointError, match=r"another model.*embed_dim 32 != 48"):
        train(tiny(digits, tmp_path / "b", width=48, resume=result.checkpoint))
    with pytest.raises(CheckpointError, match=r"another model.*distilled False != True"):
        train(tiny(digits, tmp_path / "b", distilled=True, resume=str(tmp_path / "a")))
    with pytest.raises(CheckpointError, match="not a vitzoo training checkpoint"):
        train(tiny(digits, tmp_path / "b", resume=result.weights))


def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(digits, tmp_path, monkeypatch):
    real = trainer.TrainLoss.__call__
    calls = []

    def poisoned(self, *args):
        calls.append(1)
        loss = real(self, *args)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(trainer.TrainLoss, "__call__", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:
        train(tiny(digits, out, save_every_steps=2))
    message = str(err.value)
    assert "the loss became nan at step 5 (epoch 1, step 5 of the epoch)" in message
    assert f"the last good checkpoint is {out / 'last.pt'} (step 4)" in message
    state = ckpt.load_checkpoint(out / "last.pt")
    assert state["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


def test_finetune_a_named_model_to_new_classes_and_size(digits, tmp_path):
    source = vitzoo.create_model("DeiT_tiny_distilled_patch16_224")  # 1000 classes, 14x14 grid
    save_file(source.state_dict(), tmp_path / "deit.safetensors")
    settings = tiny(digits, tmp_path / "ft", model="DeiT_tiny_distilled_patch16_224", img_size=32,
                    finetune=str(tmp_path / "deit.safetensors"), ema=False)  # fmt: skip
    for key in ("width", "depth", "heads", "patch_size"):
        settings.pop(key)
    result = train(settings)
    assert "pos_embed (1, 198, 192) -> (1, 6, 192)" in result.finetune
    assert "dropped: head.weight, head.bias, head_dist.weight, head_dist.bias" in result.finetune
    tuned = vitzoo.create_model("DeiT_tiny_distilled_patch16_224", num_classes=10, img_size=32, weights=result.weights)
    start = vitzoo.create_model("DeiT_tiny_distilled_patch16_224", img_size=32, num_classes=10,
                                weights=str(tmp_path / "deit.safetensors"))  # fmt: skip
    moved = tuned.state_dict()["blocks.0.attn.qkv.weight"] - start.state_dict()["blocks.0.attn.qkv.weight"]
    assert 0 < moved.abs().max() < 0.1  # trained from the checkpoint, not from scratch
    assert {"val_top1", "val_top1_cls", "val_top1_dist"} <= set(result.metrics)


def test_cli_reports_errors_and_exit_code(digits, tmp_path, capsys):
    from vitzoo.cli.main import main

    train_dir, val_dir = digits
    code = main(["train", "--model", "custom", "--width", "32", "--data", str(train_dir), "--val", str(val_dir)])
    assert code == 2 and "a custom model needs depth, heads, patch_size, img_size" in capsys.readouterr().err
    code = main(["train", "--model", "NoSuchNet", "--data", str(train_dir), "--val", str(val_dir), "--output",
                 str(tmp_path)])  # fmt: skip
    assert code == 2 and "NoSuchNet" in capsys.readouterr().err
    (tmp_path / "r.yaml").write_text("epochz: 3\n")
    code = main(["train", "--config", str(tmp_path / "r.yaml"), "--model", "custom"])
    assert code == 2 and "unknown key 'epochz' (did you mean 'epochs'?)" in capsys.readouterr().err


def test_metrics_log_rows(digits, tmp_path):
    result = train(tiny(digits, tmp_path / "run", epochs=2, eval_every=2, distilled=True))
    rows = [json.loads(line) for line in Path(result.metrics_log).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and [r["step"] for r in rows] == [6, 12]
    assert "val_top1" not in rows[0] and 0 <= rows[1]["val_top1"] <= 1  # validated every 2 epochs and at the end
    assert {"val_top1_cls", "val_top1_dist", "ema_val_top1", "grad_norm_head"} <= set(rows[1])
    assert "grad_norm_head_dist" not in rows[1]  # no teacher: only the class head learns, as in DeiT
    assert all(math.isfinite(r["train_loss"]) and r["lr"] > 0 for r in rows)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["identity"]["arch"]["distilled"] is True and saved["global_step"] == 12


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_checkpointing_and_clipping_run(digits, tmp_path, precision):
    result = train(tiny(digits, tmp_path / "run", precision=precision, grad_checkpointing=True, clip_grad=1.0,
                        distilled=True, ema=False))  # fmt: skip
    assert math.isfinite(result.metrics["train_loss"]) and 0 <= result.metrics["val_top1"] <= 1
    scaler = ckpt.load_checkpoint(result.checkpoint)["scaler"]
    assert bool(scaler) == (precision == "fp16")  # loss scaling only for fp16


def test_deit_recipe_details_fine_tune_in_eval_mode_and_distilled_without_teacher(digits, tmp_path, monkeypatch):
    """DeiT's train_one_epoch(set_training_mode=args.finetune == ''): a fine-tune runs the model in eval mode; a
    distilled student trained without a teacher gets its loss from the class head (head_dist gets no gradient)."""
    seen = []
    real_step = trainer._Run._step

    def step(self, images, labels):
        seen.append(self.net.training)
        return real_step(self, images, labels)

    monkeypatch.setattr(trainer._Run, "_step", step)
    scratch = train(tiny(digits, tmp_path / "scratch", distilled=True, drop_path=0.1))
    assert seen and all(seen)  # from scratch: train mode
    assert "grad_norm_head" in scratch.metrics and "grad_norm_head_dist" not in scratch.metrics
    seen.clear()
    train(tiny(digits, tmp_path / "finetuned", distilled=True, drop_path=0.1, finetune=scratch.weights))
    assert seen and not any(seen)  # fine-tuning: eval mode, as DeiT
    seen.clear()
    train(tiny(digits, tmp_path / "kept", distilled=True, finetune=scratch.weights, finetune_train_mode=True))
    assert seen and all(seen)


def test_sgd_is_nesterov_as_deits():
    from vitzoo.train.optim import build_optimizer
    from vitzoo.train.recipe import load_config

    cfg = load_config(None, optimizer="sgd", model="DeiT_tiny_patch16_224")
    optimizer = build_optimizer(torch.nn.Linear(2, 2), cfg, 0.1)
    assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["momentum"] == 0.9
