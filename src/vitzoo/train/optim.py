"""The optimizer side of DeiT's recipe: no-decay parameter groups, linear lr scaling, cosine with linear warm-up."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and the never-decayed ones (1-D params: biases and norms; the model's
    `no_weight_decay()` names: pos_embed, cls_token, dist_token). Frozen parameters are left out."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0, "group": "no_decay"},
        {"params": decay, "weight_decay": weight_decay, "group": "decay"},
    ]


def scaled_lr(lr: float, total_batch: int, base_batch: int | None) -> float:
    """DeiT's linear scaling: `lr` is given for a total batch of `base_batch` (512); None keeps it as given."""
    return lr if not base_batch else lr * total_batch / base_batch


def build_optimizer(model: nn.Module, cfg, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        # DeiT's `--opt sgd` goes through timm's create_optimizer, whose "sgd" is Nesterov momentum
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps)


class WarmupCosine:
    """timm's CosineLRScheduler as DeiT sets it, evaluated per optimizer step instead of per epoch.

    At step t of `total` (warm-up `warmup` steps): linear from `warmup_lr` to `peak_lr` during the warm-up, then
    `min_lr + (peak_lr - min_lr) * (1 + cos(pi * t / total)) / 2` (t counted from the run's start, as timm does
    without warmup_prefix). At whole epochs it equals timm's per-epoch value.
    """

    def __init__(self, optimizer, peak_lr: float, min_lr: float, warmup_lr: float, warmup: int, total: int):
        self.optimizer = optimizer
        self.peak_lr, self.min_lr, self.warmup_lr = peak_lr, min_lr, warmup_lr
        self.warmup, self.total = warmup, max(total, 1)
        self.step_count = 0

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.warmup_lr + step * (self.peak_lr - self.warmup_lr) / self.warmup
        if step >= self.total:
            return self.min_lr
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1 + math.cos(math.pi * step / self.total))

    def apply(self, step: int) -> float:
        """Set every group's lr for optimizer step `step` (0-based); returns it."""
        self.step_count = step
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        keys = ("peak_lr", "min_lr", "warmup_lr", "warmup", "total", "step_count")
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
