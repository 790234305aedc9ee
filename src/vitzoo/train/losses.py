"""DeiT's losses, as training.md states them: the smoothed / soft-target base loss and the distillation mix."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def base_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy to hard labels with label smoothing, or to Mixup/CutMix soft targets (already smoothed)."""
    if targets.dtype.is_floating_point:  # [B, C] soft targets
        return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, targets, label_smoothing=smoothing)


def soft_distillation(dist_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(teacher || student) at temperature tau, times tau^2, summed and divided by batch x classes (DeiT's quirk)."""
    kl = F.kl_div(
        F.log_softmax(dist_logits / tau, dim=1), F.log_softmax(teacher_logits / tau, dim=1),
        reduction="sum", log_target=True,
    )  # fmt: skip
    return kl * (tau * tau) / dist_logits.numel()


def hard_distillation(dist_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to the teacher's argmax, without smoothing."""
    return F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))


class TrainLoss:
    """loss(outputs, targets, teacher_logits): the base loss, mixed with a distillation loss when there is a teacher.

    `outputs` is the student's logits, or (cls_logits, dist_logits) from a distilled student in distilled training:
    loss = (1 - alpha) * base(cls_logits) + alpha * distill(dist_logits, teacher_logits).
    """

    def __init__(self, smoothing: float, distillation: str = "none", alpha: float = 0.5, tau: float = 1.0):
        if distillation not in ("none", "soft", "hard"):
            raise ValueError(f"distillation must be none, soft or hard; got {distillation!r}")
        self.smoothing = smoothing
        self.distillation = distillation
        self.alpha = alpha
        self.tau = tau

    def __call__(self, outputs, targets: torch.Tensor, teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        if self.distillation == "none":
            if isinstance(outputs, (tuple, list)):  # a distilled student without a teacher: its class head, as DeiT
                outputs = outputs[0]
            return base_loss(outputs.float(), targets, self.smoothing)
        if not isinstance(outputs, (tuple, list)) or teacher_logits is None:
            raise ValueError("distillation needs (cls_logits, dist_logits) from the student and the teacher's logits")
        cls_logits, dist_logits = (o.float() for o in outputs)
        teacher_logits = teacher_logits.float()
        if self.distillation == "soft":
            distill = soft_distillation(dist_logits, teacher_logits, self.tau)
        else:
            distill = hard_distillation(dist_logits, teacher_logits)
        return (1 - self.alpha) * base_loss(cls_logits, targets, self.smoothing) + self.alpha * distill
