"""vitzoo: the ViT and DeiT models of PaddleClas's series, in PyTorch."""

__version__ = "0.1.0"

from .bench import run_bench, run_table
from .config import (
    BenchConfig, ConfigError, EvalConfig, ExportConfig, PredictConfig, ServeConfig, TableConfig,
)  # fmt: skip
from .data import eval_transform, imagenet_classes
from .evaluate import evaluate, run_eval
from .export import run_export
from .factory import create_model, load_model, resolve_model
from .model import Attention, Block, DistilledVisionTransformer, ViTConfig, VisionTransformer, build_model
from .predict import predict, run_predict
from .profile import Profile, profile
from .specs import SPECS, ModelSpec, UnknownModelError, get_spec, list_models
from .weights import LoadReport, WeightsError, load_weights, read_weights

__all__ = [
    "Attention", "Block", "DistilledVisionTransformer", "ModelSpec", "Profile", "SPECS", "UnknownModelError",
    "ViTConfig", "VisionTransformer", "build_model", "create_model", "get_spec", "list_models", "profile",
    "LoadReport", "WeightsError", "load_weights", "read_weights", "eval_transform", "imagenet_classes", "evaluate",
    "predict", "load_model", "resolve_model", "ConfigError", "EvalConfig", "PredictConfig", "BenchConfig",
    "ExportConfig", "TableConfig", "ServeConfig", "run_eval", "run_predict", "run_bench", "run_export", "run_table",
]  # fmt: skip
