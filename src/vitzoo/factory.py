"""Build a model by its PaddleClas name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .data.transforms import EvalTransform, eval_transform, timm_crop_pct
from .model import VisionTransformer, build_model
from .specs import get_spec


def create_model(
    name: str,
    num_classes: int = 1000,
    img_size: int | None = None,
    drop_path_rate: float = 0.0,
    weights=None,
    pos_embed_resample: str = "timm",
    **overrides,
) -> VisionTransformer:
    """One of the 15 models (names match case-insensitively), randomly initialised for training from scratch.

    `img_size` builds the model for another input size (its pos_embed grid sized for it); `overrides` sets any other
    `ViTConfig` field (drop_rate, attn_drop_rate, in_chans, ...). `weights` (a file, a Hugging Face folder or a
    known name) loads a checkpoint: pos_embed resampled to `img_size` ("timm" or "deit": `pos_embed_resample`),
    head(s) dropped if `num_classes` differs.
    The load report is kept as `model.load_report`.
    """
    spec = get_spec(name)
    cfg = spec.arch.replace(
        num_classes=num_classes,
        img_size=img_size or spec.arch.img_size,
        drop_path_rate=drop_path_rate,
        **overrides,
    )
    model = build_model(cfg)
    model.model_name = spec.name
    set_pretrained_cfg(model, eval_transform(spec.name, "timm", img_size=cfg.img_size), timm_crop_pct(cfg.img_size))
    if weights is not None:
        from .weights import load_weights

        model.load_report = load_weights(model, weights, pos_embed_resample)
    return model


def set_pretrained_cfg(model: VisionTransformer, transform: EvalTransform, crop_pct: float | None = None) -> None:
    """timm's `pretrained_cfg` (and its old name `default_cfg`) from an eval transform, so that
    `timm.data.resolve_data_config(model=m)` and `timm.data.create_transform(...)` give the model's protocol."""
    head = ("head", "head_dist") if model.num_prefix_tokens == 2 else "head"
    crop_pct = crop_pct or transform.crop / transform.resize_short
    model.pretrained_cfg = model.default_cfg = {
        "input_size": (model.cfg.in_chans, transform.crop, transform.crop),
        "interpolation": "bicubic" if transform.interpolation == "pil_bicubic" else "bilinear",
        "mean": tuple(transform.mean), "std": tuple(transform.std), "crop_pct": crop_pct, "crop_mode": "center",
        "num_classes": model.num_classes, "first_conv": "patch_embed.proj", "classifier": head,
        "architecture": getattr(model, "model_name", "custom"),
    }  # fmt: skip


# -- a model and what it needs to be used: its class names and its eval preprocessing ---------------------------------
MODEL_CARD = "model.json"  # written by `vitzoo train` into its output folder
CARD_FORMAT = "vitzoo-model"


@dataclass
class LoadedModel:
    """A model ready for eval, predict, bench, export or serve, with what it was trained to see and say.

    `classes`: the class names in output order (None: ImageNet's, for a 1000-class model of the table, or indices).
    `transform(protocol)`: its eval preprocessing; a trained run's own ("run") unless another protocol is asked for.
    """

    model: VisionTransformer
    name: str  # a table name, or "custom"
    source: str
    classes: list[str] | None = None
    run_transform: dict | None = None  # EvalTransform fields of a trained run

    @property
    def default_protocol(self) -> str:
        return "run" if self.run_transform else "seed"

    def transform(self, protocol: str | None = None):
        from .data.transforms import EvalTransform, eval_transform

        protocol = protocol or self.default_protocol
        if protocol == "run":
            if not self.run_transform:
                raise ValueError(f"{self.source}: protocol 'run' needs a trained run's folder (it has its transform)")
            fields = dict(self.run_transform)
            fields["mean"], fields["std"] = tuple(fields["mean"]), tuple(fields["std"])
            return EvalTransform(**fields)
        if self.name == "custom":
            raise ValueError(f"{self.source}: a custom architecture has no {protocol!r} protocol; use 'run' (its own)")
        return eval_transform(self.name, protocol, img_size=self.model.cfg.img_size)

    def class_names(self) -> list[str] | None:
        """Names in output order: the run's, else ImageNet's for a 1000-class table model, else None (indices)."""
        if self.classes is not None:
            return self.classes
        if self.name != "custom" and self.model.num_classes == 1000:
            from .data.datasets import imagenet_classes

            return [names for _, names in imagenet_classes()]
        return None


def write_model_card(folder, model: VisionTransformer, classes: list[str], transform, weights: str) -> Path:
    """`folder/model.json`: the architecture, the class names and the eval transform, beside `weights`."""
    from dataclasses import asdict

    card = {
        "format": CARD_FORMAT, "version": 1, "model": getattr(model, "model_name", "custom"),
        "arch": asdict(model.cfg), "classes": list(classes), "eval_transform": asdict(transform), "weights": weights,
    }  # fmt: skip
    path = Path(folder) / MODEL_CARD
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def _read_card(folder: Path) -> dict:
    path = folder / MODEL_CARD
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{folder}: not a trained run's folder (no {MODEL_CARD}; `vitzoo train` writes one)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable model card: {e}") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ValueError(f"{path}: not a vitzoo model card (format {CARD_FORMAT!r} expected)")
    for key, kind in (("arch", dict), ("classes", list), ("eval_transform", dict), ("weights", str)):
        if not isinstance(card.get(key), kind):
            raise ValueError(f"{path}: '{key}' missing or not a {kind.__name__}")
    return card


def load_model(
    source: str | Path, weights=None, num_classes: int | None = None, img_size: int | None = None,
    pos_embed_resample: str = "timm",
) -> LoadedModel:
    """A table model by name (with `weights`), or a trained run's output folder (its architecture, weights and
    class names; `weights` may name another file of it, e.g. model_ema.safetensors)."""
    from .model import ViTConfig
    from .specs import UnknownModelError
    from .weights import load_weights

    folder = Path(source)
    if folder.is_dir():
        card = _read_card(folder)
        try:
            cfg = ViTConfig(**card["arch"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{folder / MODEL_CARD}: bad architecture: {e}") from None
        if len(card["classes"]) != cfg.num_classes:
            raise ValueError(
                f"{folder / MODEL_CARD}: {len(card['classes'])} class names for a {cfg.num_classes}-class model"
            )
        model = build_model(cfg)
        model.model_name = card["model"]
        loaded = LoadedModel(model, card["model"], str(folder), card["classes"], card["eval_transform"])
        set_pretrained_cfg(model, loaded.transform("run"))
        weights_file = Path(weights) if weights else folder / card["weights"]
        if weights and not weights_file.is_absolute() and not weights_file.exists():
            weights_file = folder / weights
        model.load_report = load_weights(model, weights_file)
        return loaded
    try:
        create_kwargs = {"num_classes": num_classes or 1000, "img_size": img_size, "weights": weights,
                         "pos_embed_resample": pos_embed_resample}
        model = create_model(str(source), **create_kwargs)
    except UnknownModelError as e:
        raise UnknownModelError(f"{e}; or give a trained run's output folder") from None
    return LoadedModel(model, model.model_name, str(source))
