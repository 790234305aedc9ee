"""Validation during training: loss, Top-1/Top-5 of the model's prediction and, for a distilled model, of each head."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..data.datasets import raise_bad
from ..distributed import DistContext
from ..evaluate import Tally
from ..model import DistilledVisionTransformer


@dataclass
class HeadsTally(Tally):
    """Eval's tally, and a distilled model's heads each counted alone."""

    cls_correct1: float = 0.0
    dist_correct1: float = 0.0


def _logits(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(prediction, cls head, dist head); the heads only for a distilled model, whose prediction is their average."""
    if not isinstance(model, DistilledVisionTransformer):
        return model(images).float(), None, None
    tokens = model.forward_features(images)
    cls_logits, dist_logits = model.head(tokens[:, 0]).float(), model.head_dist(tokens[:, 1]).float()
    return (cls_logits + dist_logits) / 2, cls_logits, dist_logits


@torch.no_grad()
def validate(model, loader, device: torch.device, ctx: DistContext, autocast=contextlib.nullcontext) -> dict:
    """Metrics over the whole val set (each rank's loader holds its share; counts are summed across ranks)."""
    was_training = model.training
    model.eval()
    tally = HeadsTally()
    for batch in loader:
        raise_bad(batch)
        images, labels = batch["images"].to(device, non_blocking=True), batch["labels"].to(device)
        with autocast():
            logits, cls_logits, dist_logits = _logits(model, images)
        tally.add_logits(logits, labels)
        if cls_logits is not None:
            tally.cls_correct1 += (cls_logits.argmax(1) == labels).sum().item()
            tally.dist_correct1 += (dist_logits.argmax(1) == labels).sum().item()
    tally = tally.all_reduce(ctx)
    model.train(was_training)
    count = max(tally.images, 1.0)
    metrics = {"val_loss": tally.loss_sum / count, "val_top1": tally.correct1 / count, "val_top5": tally.correct5 / count}
    if isinstance(model, DistilledVisionTransformer):
        metrics.update(val_top1_cls=tally.cls_correct1 / count, val_top1_dist=tally.dist_correct1 / count)
    return metrics
