"""The training configuration as data: DeiT's recipe as the defaults, recipe files (YAML/JSON) on top, flags last.

The defaults are facebookresearch/deit's `main.py` (the defaults of its flags); every field has a help text that
the command line reuses, so a flag, a recipe key and a `TrainConfig` field are one and the same thing.
"""

from __future__ import annotations

import difflib
import json
import typing
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

from ..config import ConfigError
from ..config import field_kind as config_field_kind

RECIPES_PACKAGE = "vitzoo.train.recipes"
DISTILLATION_TYPES = ("none", "soft", "hard")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")
CHOICES = {"distillation": DISTILLATION_TYPES, "precision": PRECISIONS, "optimizer": OPTIMIZERS,
           "pos_embed_resample": ("timm", "deit")}


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # -- the model ----------------------------------------------------------------------------------------------------
    model: str | None = _opt(None, "a vitzoo model name, or 'custom' (then width, depth, heads, patch_size, img_size)")
    img_size: int | None = _opt(None, "input size (default: the model's); a named model's pos_embed is resampled")
    width: int | None = _opt(None, "custom model: embedding width")
    depth: int | None = _opt(None, "custom model: number of blocks")
    heads: int | None = _opt(None, "custom model: attention heads")
    patch_size: int | None = _opt(None, "custom model: patch size")
    mlp_ratio: float = _opt(4.0, "custom model: MLP hidden width / width")
    distilled: bool = _opt(False, "custom model: add DeiT's distillation token and head")
    finetune: str | None = _opt(None, "start from these weights (any format vitzoo reads); new classes get fresh heads")
    pos_embed_resample: str = _opt("timm", "finetune weights of another grid: timm's resampling or DeiT's ('deit')")
    finetune_train_mode: bool = _opt(False, "fine-tuning: keep the model in train mode (DeiT fine-tunes it in eval "
                                     "mode: no dropout, no stochastic depth)")
    # -- data -----------------------------------------------------------------------------------------------------
    data: str | None = _opt(None, "train set: a folder of class folders or a PaddleClas list file")
    val: str | None = _opt(None, "validation set, same layouts; its classes must be among the train set's")
    root: str | None = _opt(None, "image root of a train list file (default: the list file's folder)")
    val_root: str | None = _opt(None, "image root of a val list file (default: the list file's folder)")
    workers: int = _opt(4, "data loading processes per training process (0: in the main process)")
    # -- optimisation -----------------------------------------------------------------------------------------------
    epochs: int = _opt(300, "training epochs")
    batch_size: int = _opt(64, "images per process and step")
    lr: float = _opt(5e-4, "learning rate at a total batch of lr_base_batch (scaled linearly with the total batch)")
    lr_base_batch: int | None = _opt(512, "the total batch `lr` is given for; null: use `lr` as it is")
    min_lr: float = _opt(1e-5, "cosine schedule's final learning rate")
    warmup_lr: float = _opt(1e-6, "learning rate at the start of the warm-up")
    warmup_epochs: float = _opt(5.0, "linear warm-up length in epochs")
    optimizer: str = _opt("adamw", "adamw (DeiT) or sgd (Nesterov momentum, as DeiT's --opt sgd; small-data fine-tuning)")
    weight_decay: float = _opt(0.05, "weight decay (never on 1-D params, pos_embed, cls_token, dist_token)")
    betas: tuple[float, float] = _opt((0.9, 0.999), "AdamW betas")
    eps: float = _opt(1e-8, "AdamW epsilon")
    momentum: float = _opt(0.9, "SGD momentum")
    clip_grad: float | None = _opt(None, "clip the gradient norm to this (null: no clipping)")
    # -- regularisation and augmentation ----------------------------------------------------------------------------
    smoothing: float = _opt(0.1, "label smoothing")
    mixup: float = _opt(0.8, "Mixup alpha (0: off)")
    cutmix: float = _opt(1.0, "CutMix alpha (0: off)")
    mixup_prob: float = _opt(1.0, "probability of mixing a batch at all")
    mixup_switch_prob: float = _opt(0.5, "probability of CutMix rather than Mixup when both are on")
    auto_augment: str | None = _opt("rand-m9-mstd0.5-inc1", "timm RandAugment policy (null: none)")
    color_jitter: float = _opt(0.3, "colour jitter (only used without auto_augment, as in timm)")
    crop_scale: tuple[float, float] = _opt((0.08, 1.0), "RandomResizedCrop area range")
    crop_ratio: tuple[float, float] = _opt((3 / 4, 4 / 3), "RandomResizedCrop aspect ratio range")
    hflip: float = _opt(0.5, "horizontal flip probability")
    interpolation: str = _opt("bicubic", "resize interpolation for training crops")
    reprob: float = _opt(0.25, "random erasing probability")
    remode: str = _opt("pixel", "random erasing fill: pixel, rand or const")
    recount: int = _opt(1, "random erasing count")
    repeated_aug: int = _opt(3, "repeated augmentation repeats when distributed (1: off)")
    drop_path: float = _opt(0.1, "stochastic depth rate")
    drop: float = _opt(0.0, "dropout rate")
    mean: tuple[float, float, float] | None = _opt(None, "normalisation mean (default: the model's, or ImageNet's)")
    std: tuple[float, float, float] | None = _opt(None, "normalisation std (default: the model's, or ImageNet's)")
    eval_crop_pct: float = _opt(0.875, "eval: resize the short side to img_size / this, then center crop")
    # -- EMA, precision, memory -------------------------------------------------------------------------------------
    ema: bool = _opt(True, "keep an exponential moving average of the weights (evaluated each epoch too)")
    ema_decay: float = _opt(0.99996, "EMA decay per step")
    precision: str = _opt("auto", "auto (bf16 on CUDA when supported else fp16 with loss scaling; fp32 on CPU), "
                                  "fp32, bf16, fp16")  # fmt: skip
    grad_checkpointing: bool = _opt(False, "recompute block activations in backward (less memory, slower)")
    # -- distillation -------------------------------------------------------------------------------------------------
    distillation: str = _opt("none", "none, soft or hard (DeiT's distillation through the dist token)")
    teacher: str | None = _opt(None, "teacher: a TorchScript file, or a torchvision, timm or vitzoo model name "
                                     "(prefix torchvision:, timm: or vitzoo: to choose)")  # fmt: skip
    teacher_weights: str | None = _opt(None, "the teacher's weights file (for a model name)")
    distillation_alpha: float = _opt(0.5, "weight of the distillation loss")
    distillation_tau: float = _opt(1.0, "soft distillation temperature")
    # -- the run ------------------------------------------------------------------------------------------------------
    output: str = _opt("runs/train", "folder for checkpoints, the metrics log, the plot and the final weights")
    resume: str | None = _opt(None, "continue from this checkpoint (or an output folder holding last.pt)")
    save_every_steps: int = _opt(0, "also checkpoint every N optimizer steps (0: only at the end of each epoch)")
    keep_epoch_checkpoints: bool = _opt(False, "keep each epoch's checkpoint as epoch_N.pt besides last.pt")
    eval_every: int = _opt(1, "validate every N epochs (and always after the last)")
    seed: int = _opt(0, "random seed")
    device: str = _opt("auto", "auto, cpu or cuda (under torchrun each rank takes its LOCAL_RANK GPU)")
    threads: int | None = _opt(None, "torch CPU threads")
    deterministic: bool = _opt(False, "use deterministic algorithms only")
    progress: bool = _opt(True, "show a progress bar")
    plot: bool = _opt(True, "write curves.png at the end (needs matplotlib)")

    # -- views --------------------------------------------------------------------------------------------------------
    @property
    def is_custom(self) -> bool:
        return (self.model or "").lower() == "custom"

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return make_config(self.to_dict(), changes)

    def check(self) -> "TrainConfig":
        """Settings that cannot work together, found before anything is built."""
        if not self.model:
            raise ConfigError("no model: give a vitzoo model name or 'custom'")
        if not self.data or not self.val:
            raise ConfigError("both a train set (data) and a validation set (val) are needed")
        custom_keys = {"width": self.width, "depth": self.depth, "heads": self.heads, "patch_size": self.patch_size}
        if self.is_custom:
            absent = [k for k, v in {**custom_keys, "img_size": self.img_size}.items() if v is None]
            if absent:
                raise ConfigError(f"a custom model needs {', '.join(absent)}")
        else:
            given = [k for k, v in custom_keys.items() if v is not None] + (["distilled"] if self.distilled else [])
            if given:
                raise ConfigError(f"{', '.join(given)} only apply to model 'custom', not to {self.model}")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")
        if self.distillation != "none" and not self.teacher:
            raise ConfigError(f"distillation {self.distillation!r} needs a teacher")
        if self.distillation == "none" and self.teacher:
            raise ConfigError("a teacher is given but distillation is 'none': choose soft or hard")
        if not 0.0 <= self.distillation_alpha <= 1.0:
            raise ConfigError(f"distillation_alpha must lie in [0, 1], got {self.distillation_alpha}")
        for name in ("epochs", "batch_size", "eval_every", "recount", "repeated_aug"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.mixup_active and self.batch_size % 2:
            raise ConfigError(f"Mixup/CutMix pair up a batch's images: batch_size must be even, got {self.batch_size}")
        return self

    @property
    def mixup_active(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0


FIELD_TYPES = typing.get_type_hints(TrainConfig)
FIELDS = {f.name: f for f in fields(TrainConfig)}


def field_kind(name: str) -> tuple[type, int | str | None, bool]:
    """(scalar type, tuple length or None, optional) of a field (`vitzoo.config.field_kind`)."""
    return config_field_kind(FIELD_TYPES[name])


def _coerce(name: str, value, source: str):
    """A recipe value checked against the field's type (YAML gives lists for tuples, ints for floats)."""
    kind, length, optional = field_kind(name)
    where = f"{source}: {name}"
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} cannot be null")
    if length is not None:
        if not isinstance(value, (list, tuple)) or len(value) != length:
            raise ConfigError(f"{where} must be a list of {length} numbers, got {value!r}")
        return tuple(_scalar(where, kind, v) for v in value)
    return _scalar(where, kind, value)


def _scalar(where: str, kind: type, value):
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}")


def check_keys(values: dict, source: str) -> None:
    for key in values:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")


def make_config(*layers: dict, sources: tuple[str, ...] = ()) -> TrainConfig:
    """The defaults with each layer of settings on top, later layers winning; every key and value checked."""
    values = {}
    for i, layer in enumerate(layers):
        source = sources[i] if i < len(sources) else "settings"
        check_keys(layer, source)
        values.update({k: _coerce(k, v, source) for k, v in layer.items()})
    return TrainConfig(**values)


def list_recipes() -> list[str]:
    names = (p.name for p in resources.files(RECIPES_PACKAGE).iterdir())
    return sorted(name[: -len(".yaml")] for name in names if name.endswith(".yaml"))


def read_recipe(source: str | Path) -> dict:
    """A recipe file (.yaml, .yml or .json) or the name of a shipped recipe -> its settings (keys not yet checked)."""
    path = Path(source)
    if not path.is_file():
        if str(source) not in list_recipes():
            raise ConfigError(f"{source}: no such recipe file; shipped recipes: {', '.join(list_recipes())}")
        path = Path(str(resources.files(RECIPES_PACKAGE).joinpath(f"{source}.yaml")))
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: YAML needs PyYAML (pip install pyyaml); or give the recipe as JSON") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of settings, found {type(values).__name__}")
    return values


def load_config(recipe: str | Path | None = None, **overrides) -> TrainConfig:
    """DeiT's defaults, then the recipe (a file or a shipped name), then `overrides`; checked for consistency."""
    layers, sources = [], []
    if recipe is not None:
        layers.append(read_recipe(recipe))
        sources.append(str(recipe))
    layers.append(overrides)
    sources.append("arguments")
    return make_config(*layers, sources=tuple(sources))
