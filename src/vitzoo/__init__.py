"""vitzoo: the ViT and DeiT models of PaddleClas's series, in PyTorch."""

__version__ = "0.1.0"

from .data import eval_transform, imagenet_classes
from .evaluate import evaluate, predict
from .factory import create_model
from .model import Attention, Block, DistilledVisionTransformer, ViTConfig, VisionTransformer, build_model
from .profile import Profile, profile
from .specs import SPECS, ModelSpec, UnknownModelError, get_spec, list_models
from .weights import LoadReport, WeightsError, load_weights, read_weights

__all__ = [
    "Attention", "Block", "DistilledVisionTransformer", "ModelSpec", "Profile", "SPECS", "UnknownModelError",
    "ViTConfig", "VisionTransformer", "build_model", "create_model", "get_spec", "list_models", "profile",
    "LoadReport", "WeightsError", "load_weights", "read_weights", "eval_transform", "imagenet_classes", "evaluate",
    "predict",
]  # fmt: skip
