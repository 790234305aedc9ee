"""`train(config) -> TrainResult`: DeiT's training loop on one process or many (torchrun, DistributedDataParallel).

Everything that can be wrong with the inputs (data, model, teacher, resume file) is found while the run is set up,
before the first step. Only rank 0 writes: checkpoints, the metrics log, the plot and the final weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..distributed import DistContext, distributed
from ..data.transforms import center_crop_transform
from ..factory import write_model_card
from ..model import DistilledVisionTransformer, VisionTransformer
from . import checkpoint as ckpt
from .data import build_mixup, load_sets, train_loader, train_transform, val_loader
from .losses import TrainLoss
from .optim import WarmupCosine, build_optimizer, scaled_lr
from .recipe import ConfigError, TrainConfig, make_config
from .report import MetricsLog, write_plot
from .student import build_student, identity, normalisation
from .teacher import load_teacher

log = logging.getLogger("vitzoo")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf: names the step and the last good checkpoint (which was not overwritten)."""


@dataclass
class TrainResult:
    output: str
    epochs: int
    global_step: int
    metrics: dict  # the last epoch's row of the metrics log
    best_val_top1: float
    checkpoint: str
    weights: str
    ema_weights: str | None
    metrics_log: str
    plot: str | None
    seconds: float
    world_size: int
    finetune: str | None = None  # the loader's report when the run started from other weights


def train(config: TrainConfig | dict) -> TrainResult:
    """Train as `config` says (a TrainConfig, or a dict of its fields over DeiT's defaults)."""
    cfg = (config if isinstance(config, TrainConfig) else make_config(config)).check()
    device = _device_kind(cfg.device)
    with distributed(device) as ctx:
        return _Run(cfg, ctx, device).fit()


def _device_kind(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available here")
    return device


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


class _Run:
    def __init__(self, cfg: TrainConfig, ctx: DistContext, device_kind: str):
        self.cfg, self.ctx = cfg, ctx
        self.device = torch.device(ctx.device(device_kind))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.output = Path(cfg.output)
        self.last_checkpoint: tuple[Path, int] | None = None
        self._setup()

    # -- set-up: every check happens here, before any step ---------------------------------------------------------
    def _setup(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        sets = load_sets(cfg.data, cfg.val, cfg.root, cfg.val_root)
        self.num_classes = sets.num_classes
        _seed_all(cfg.seed)  # the same initial weights on every rank
        self.net = self._build_model()
        self._build_data(sets)
        self._build_optimisation()
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.stats = _fresh_stats()
        self.best_val_top1 = 0.0
        rng = self._resume(cfg.resume) if cfg.resume else None
        _seed_all(cfg.seed + ctx.rank)  # augmentation noise, stochastic depth and Mixup differ between ranks
        if rng is not None:
            ckpt.set_rng_state(rng)
        self.model = self.net
        if ctx.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.net, device_ids=ids)
        self.metrics_log = MetricsLog(self.output / "metrics.jsonl")
        if ctx.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            self.metrics_log.keep_until(self.epoch)
            (self.output / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
            # what eval, predict, bench, export and serve need to use the run as a model: `--model OUTPUT_FOLDER`
            classes = sets.class_names or [str(i) for i in range(self.num_classes)]
            data = {"train": cfg.data, "train_root": cfg.root, "val": cfg.val, "val_root": cfg.val_root}
            data = {k: str(Path(v).resolve()) if v else None for k, v in data.items()}
            write_model_card(self.output, self.net, classes, self.val_transform, "model.safetensors", data)
        log.info(
            "training %s (%d classes, %d train / %d val images) on %d process(es), total batch %d, peak lr %.3g, %s",
            self.identity["model"], self.num_classes, len(sets.train), len(sets.val), ctx.world_size,
            self.total_batch, self.peak_lr, self.precision,
        )  # fmt: skip

    def _build_model(self) -> VisionTransformer:
        """The student (and the teacher, when distilling), checked to fit each other and the data."""
        cfg = self.cfg
        built = cfg.replace(finetune=None) if cfg.resume else cfg  # a resumed run takes its weights from the checkpoint
        net = build_student(built, self.num_classes).to(self.device)
        self.identity = identity(net)
        report = getattr(net, "load_report", None)
        self.finetune_report = str(report) if report is not None else None
        self.teacher = None
        if isinstance(net, DistilledVisionTransformer):
            # in train mode the student returns (cls_logits, dist_logits), as DeiT's does: without a teacher the loss
            # takes the class head's, as DeiT's DistillationLoss does with distillation_type 'none'
            net.set_distilled_training(True)
        if cfg.distillation != "none":
            if not isinstance(net, DistilledVisionTransformer):
                raise ConfigError(
                    f"distillation {cfg.distillation!r} needs a distilled student (a DeiT_*_distilled_* model, or a "
                    "custom model with distilled: true)"
                )
            size = net.cfg.img_size
            self.teacher = load_teacher(cfg.teacher, cfg.teacher_weights, self.num_classes, size, self.device)
        return net

    def _build_data(self, sets) -> None:
        cfg, ctx, img_size = self.cfg, self.ctx, self.net.cfg.img_size
        mean, std = normalisation(cfg)
        self.loader, self.order = train_loader(
            sets.train, train_transform(cfg, img_size, mean, std), cfg, ctx.rank, ctx.world_size, self.device
        )
        self.steps_per_epoch = len(self.order.base) // cfg.batch_size
        self.val_transform = center_crop_transform(img_size, cfg.eval_crop_pct, mean, std)
        self.val_loader = val_loader(
            sets.val, self.val_transform, cfg.batch_size, cfg.workers, ctx.rank, ctx.world_size
        )  # fmt: skip
        self.mixup = build_mixup(cfg, sets.num_classes)

    def _build_optimisation(self) -> None:
        cfg = self.cfg
        self.criterion = TrainLoss(cfg.smoothing, cfg.distillation, cfg.distillation_alpha, cfg.distillation_tau)
        self.total_batch = cfg.batch_size * self.ctx.world_size
        self.peak_lr = scaled_lr(cfg.lr, self.total_batch, cfg.lr_base_batch)
        self.optimizer = build_optimizer(self.net, cfg, self.peak_lr)
        self.schedule = WarmupCosine(
            self.optimizer, self.peak_lr, cfg.min_lr, cfg.warmup_lr,
            warmup=round(cfg.warmup_epochs * self.steps_per_epoch), total=cfg.epochs * self.steps_per_epoch,
        )  # fmt: skip
        self.precision = _precision(cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.net, decay=cfg.ema_decay)

    def _resume(self, source) -> dict:
        """Restore the checkpoint's states and position; returns this rank's RNG states (set after seeding)."""
        state = ckpt.load_checkpoint(source)
        path = ckpt.checkpoint_path(source)
        ckpt.check_identity(state["identity"], self.identity, path)
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        elif self.ema is not None:
            self.ema.set(self.net)
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.best_val_top1 = state["global_step"], state["best_val_top1"]
        self.stats = state["epoch_stats"]
        same_layout = (state["world_size"], state["batch_size"]) == (self.ctx.world_size, self.cfg.batch_size)
        if not same_layout and self.step_in_epoch:
            log.warning(
                "%s was written by %d process(es) at batch %d; this run has %d at %d: epoch %d restarts from its "
                "beginning (the run continues, but not bit-exactly)", path, state["world_size"], state["batch_size"],
                self.ctx.world_size, self.cfg.batch_size, self.epoch + 1,
            )  # fmt: skip
            self.step_in_epoch, self.stats = 0, _fresh_stats()
        if not same_layout:
            self.global_step = self.epoch * self.steps_per_epoch
        if state["schedule"] != {**self.schedule.state_dict(), "step_count": state["schedule"]["step_count"]}:
            log.warning("%s: the schedule differs from the checkpoint's (epochs or lr changed); using this run's", path)
        self.last_checkpoint = (path, self.global_step)
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch + 1, self.step_in_epoch)
        rngs = state["rng"]
        return rngs[self.ctx.rank] if self.ctx.rank < len(rngs) else rngs[0]

    # -- the loop ---------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg, start = self.cfg, time.perf_counter()
        row = None
        for epoch in range(self.epoch, cfg.epochs):
            self.epoch = epoch
            row = self._train_epoch(epoch)
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                row.update(self._evaluate())
            if self.ctx.is_main:
                self.metrics_log.append(row)
            self.epoch, self.step_in_epoch, self.stats = epoch + 1, 0, _fresh_stats()
            self._save()
        return self._finish(row, time.perf_counter() - start)

    def _train_epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        skip = self.step_in_epoch
        self.order.set_epoch(epoch, skip * cfg.batch_size)
        # DeiT's train_one_epoch(set_training_mode=args.finetune == ''): a fine-tune runs the model in eval mode
        self.model.train(not cfg.finetune or cfg.finetune_train_mode)
        shown = cfg.progress and self.ctx.is_main
        bar = _progress(self.steps_per_epoch, skip, f"epoch {epoch + 1}/{cfg.epochs}", shown)
        tick = time.perf_counter()
        lr = self.schedule.lr_at(self.global_step)
        for i, (images, labels) in enumerate(self.loader, start=skip):
            lr = self.schedule.apply(self.global_step)
            loss = self._step(images, labels)
            self.global_step += 1
            self.step_in_epoch = i + 1
            self.stats["loss_sum"] += loss
            self.stats["steps"] += 1
            bar.update(1)
            bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.3g}")
            if cfg.save_every_steps and self.global_step % cfg.save_every_steps == 0 and i + 1 < self.steps_per_epoch:
                self._save()
        bar.close()
        seconds = time.perf_counter() - tick
        steps = max(self.stats["steps"], 1)
        row = {
            "epoch": epoch + 1, "step": self.global_step, "lr": lr, "train_loss": self.stats["loss_sum"] / steps,
            "seconds": seconds, "images_per_s": (self.step_in_epoch - skip) * self.total_batch / max(seconds, 1e-9),
        }  # fmt: skip
        row.update(self._head_grad_norms())
        return row

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        images = images.to(self.device, non_blocking=True)
        targets = labels.to(self.device, non_blocking=True)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        with self._autocast():
            outputs = self.model(images)
            teacher_logits = None
            if self.teacher is not None:
                with torch.no_grad():  # the teacher sees the same (mixed) images
                    teacher_logits = self.teacher(images)
            loss = self.criterion(outputs, targets, teacher_logits)
        value = loss.detach().float()
        if self.ctx.world_size > 1:  # every rank must agree to stop
            dist.all_reduce(value)
            value /= self.ctx.world_size
        value = value.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(self._non_finite_message(value))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.net)
        return value

    def _non_finite_message(self, value: float) -> str:
        where = f"step {self.global_step + 1} (epoch {self.epoch + 1}, step {self.step_in_epoch + 1} of the epoch)"
        if self.last_checkpoint is None:
            last = "no checkpoint was written before it"
        else:
            last = f"the last good checkpoint is {self.last_checkpoint[0]} (step {self.last_checkpoint[1]})"
        hint = " fp16 overflows easily: try precision bf16 or fp32, or a lower lr." if self.precision == "fp16" else ""
        return f"the loss became {value} at {where}; stopped, {last}.{hint}"

    def _head_grad_norms(self) -> dict:
        """Gradient norms of the last step's classifier heads: both must be nonzero for both heads to learn."""
        norms = {}
        for name in ("head", "head_dist"):
            weight = getattr(getattr(self.net, name, None), "weight", None)
            if weight is not None and weight.grad is not None:
                norms[f"grad_norm_{name}"] = weight.grad.float().norm().item()
        return norms

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _evaluate(self) -> dict:
        from .validate import validate

        metrics = validate(self.net, self.val_loader, self.device, self.ctx, self._autocast)
        if self.ema is not None:
            ema = validate(self.ema.module, self.val_loader, self.device, self.ctx, self._autocast)
            metrics.update({f"ema_{k}": v for k, v in ema.items()})
        self.best_val_top1 = max(self.best_val_top1, metrics["val_top1"])
        return metrics

    # -- writing ----------------------------------------------------------------------------------------------------
    def _save(self) -> None:
        """Checkpoint the current position; every rank contributes its RNG states, rank 0 writes."""
        rngs = [ckpt.rng_state()]
        if self.ctx.world_size > 1:
            rngs = [None] * self.ctx.world_size
            dist.all_gather_object(rngs, ckpt.rng_state())
        if not self.ctx.is_main:
            return
        if not ckpt.all_finite(self.net):  # the loss check stops before this; never replace a good file with NaNs
            message = self._non_finite_message(float("nan"))
            raise NonFiniteLossError(message.replace("the loss became", "the weights became"))
        state = {
            "identity": self.identity, "config": self.cfg.to_dict(), "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(), "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "epoch_stats": dict(self.stats), "best_val_top1": self.best_val_top1, "rng": rngs,
            "world_size": self.ctx.world_size, "batch_size": self.cfg.batch_size,
        }  # fmt: skip
        path = ckpt.save_checkpoint(self.output / "last.pt", state)
        self.last_checkpoint = (path, self.global_step)
        if self.cfg.keep_epoch_checkpoints and self.step_in_epoch == 0:
            ckpt.keep_copy(path, self.output / f"epoch_{self.epoch}.pt")

    def _finish(self, row: dict | None, seconds: float) -> TrainResult:
        out = self.output
        rows = self.metrics_log.rows() if self.ctx.is_main else []
        row = row or (rows[-1] if rows else {})
        plot, ema_weights = None, None
        if self.ctx.is_main:
            from safetensors.torch import save_file

            save_file(_contiguous(self.net.state_dict()), out / "model.safetensors")
            if self.ema is not None:
                ema_weights = str(out / "model_ema.safetensors")
                save_file(_contiguous(self.ema.module.state_dict()), ema_weights)
            if self.cfg.plot and rows:
                plot = write_plot(rows, out / "curves.png")
        result = TrainResult(
            output=str(out), epochs=self.epoch, global_step=self.global_step, metrics=row,
            best_val_top1=self.best_val_top1, checkpoint=str(out / "last.pt"), weights=str(out / "model.safetensors"),
            ema_weights=ema_weights, metrics_log=str(self.metrics_log.path), plot=str(plot) if plot else None,
            seconds=seconds, world_size=self.ctx.world_size, finetune=self.finetune_report,
        )  # fmt: skip
        if self.ctx.is_main:
            (out / "result.json").write_text(json.dumps({**asdict(result), "identity": self.identity}, indent=2) + "\n")
        return result


def _fresh_stats() -> dict:
    return {"loss_sum": 0.0, "steps": 0}


def _contiguous(state: dict) -> dict:
    return {k: v.detach().contiguous() for k, v in state.items()}


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, disable=not enabled)
