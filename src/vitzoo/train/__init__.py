"""Training and fine-tuning with DeiT's recipe: `train(config) -> TrainResult`. The recipe: DeiT (arXiv:2012.12877) and
facebookresearch/deit's `main.py`."""

from .checkpoint import CheckpointError
from .losses import TrainLoss, hard_distillation, soft_distillation
from .optim import WarmupCosine, param_groups, scaled_lr
from .recipe import ConfigError, TrainConfig, list_recipes, load_config
from .teacher import TeacherError, load_teacher
from .trainer import NonFiniteLossError, TrainResult, train

__all__ = [
    "CheckpointError", "ConfigError", "NonFiniteLossError", "TeacherError", "TrainConfig", "TrainLoss", "TrainResult",
    "WarmupCosine", "hard_distillation", "list_recipes", "load_config", "load_teacher", "param_groups", "scaled_lr",
    "soft_distillation", "train",
]  # fmt: skip
