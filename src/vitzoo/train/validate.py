"""Validation during training: loss, Top-1/Top-5 of the model's prediction and, for a distilled model, of each head."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..model import DistilledVisionTransformer


def _logits(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(prediction, cls head, dist head); the heads only for a distilled model, whose prediction is their average."""
    if not isinstance(model, DistilledVisionTransformer):
        return model(images).float(), None, None
    tokens = model.forward_features(images)
    cls_logits, dist_logits = model.head(tokens[:, 0]).float(), model.head_dist(tokens[:, 1]).float()
    return (cls_logits + dist_logits) / 2, cls_logits, dist_logits


@torch.no_grad()
def validate(model, loader, device: torch.device, world_size: int = 1, autocast=contextlib.nullcontext) -> dict:
    """Metrics over the whole val set (each rank's loader holds its share; counts are summed across ranks)."""
    was_training = model.training
    model.eval()
    # correct@1, correct@5, loss sum, images, cls head correct@1, dist head correct@1
    totals = torch.zeros(6, dtype=torch.float64, device=device)
    for batch in loader:
        images, labels = batch["images"].to(device, non_blocking=True), batch["labels"].to(device)
        with autocast():
            logits, cls_logits, dist_logits = _logits(model, images)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        totals[0] += (top[:, 0] == labels).sum()
        totals[1] += (top == labels[:, None]).any(dim=1).sum()
        totals[2] += F.cross_entropy(logits, labels, reduction="sum")
        totals[3] += len(labels)
        if cls_logits is not None:
            totals[4] += (cls_logits.argmax(1) == labels).sum()
            totals[5] += (dist_logits.argmax(1) == labels).sum()
    if world_size > 1:
        dist.all_reduce(totals)
    model.train(was_training)
    correct1, correct5, loss_sum, count, cls1, dist1 = totals.tolist()
    count = max(count, 1.0)
    metrics = {"val_loss": loss_sum / count, "val_top1": correct1 / count, "val_top5": correct5 / count}
    if isinstance(model, DistilledVisionTransformer):
        metrics.update(val_top1_cls=cls1 / count, val_top1_dist=dist1 / count)
    return metrics
