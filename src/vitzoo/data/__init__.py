"""Data: eval preprocessing protocols, datasets in ImageNet-folder and list-file layouts, class names."""

from .datasets import DatasetError, imagenet_classes, load_samples
from .transforms import BadImageError, EvalTransform, eval_transform

__all__ = ["BadImageError", "DatasetError", "EvalTransform", "eval_transform", "imagenet_classes", "load_samples"]
