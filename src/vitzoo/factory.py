"""Build a model by its PaddleClas name (`create_model`); load a model to use it (`resolve_model`, `load_model`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .data.transforms import RUN_PROTOCOL, EvalTransform, eval_transform, timm_crop_pct
from .labels import ClassNames
from .model import VisionTransformer, build_model
from .artifacts.card import SUFFIXES as ARTIFACT_SUFFIXES  # files of other runtimes (vitzoo export writes them)
from .specs import SPECS, UnknownModelError, get_spec


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


@dataclass(frozen=True)
class ModelRef:
    """What `--model` names: a model of the table ("name"), a trained run's folder ("run") or an exported file
    ("artifact")."""

    kind: str
    name: str  # the table name; for a run or an artifact, its path as given
    path: Path | None = None


def resolve_model(ref: str | Path) -> ModelRef:
    """The one place that decides what a model reference is: an existing folder is a trained run (it must hold a
    model.json), a file with an exported model's suffix is an artifact, anything else a table name (matched
    case-insensitively; an unknown one is refused with the closest name)."""
    path = Path(ref)
    if path.is_dir():
        if not (path / MODEL_CARD).is_file():
            raise ValueError(f"{path}: not a trained run's folder (no {MODEL_CARD}; `vitzoo train` writes one)")
        return ModelRef("run", str(ref), path)
    if path.suffix.lower() in ARTIFACT_SUFFIXES:
        if not path.is_file():
            raise ValueError(f"{path}: no such exported model file")
        return ModelRef("artifact", str(ref), path)
    try:
        return ModelRef("name", get_spec(str(ref)).name)
    except UnknownModelError as e:
        raise UnknownModelError(f"{e}; or a trained run's output folder, or an exported model file") from None


def resolve_models(items) -> list[ModelRef]:
    """Several references (`resolve_model`), a glob ("DeiT_*", "*distilled*") expanding to the table's names it
    matches (case-insensitively) and an empty list to all 15."""
    from .specs import list_models

    refs = []
    for item in items or list_models():
        item = str(item)
        if any(c in item for c in "*?[") and not Path(item).exists():
            matched = list_models(item)
            if not matched:
                raise UnknownModelError(f"no model matches {item!r}; known models: {', '.join(list_models())}")
            refs += [ModelRef("name", name) for name in matched]
        else:
            refs.append(resolve_model(item))
    return refs


INT8_NEEDS_CALIBRATION = ("--precision int8 needs --calibration FOLDER|LIST: images like the model's own data, whose "
                          "activations set the quantization ranges")  # fmt: skip


def check_calibration(model: str, precision: str, calibration: str | None) -> None:
    """int8 without calibration images is refused before anything loads, unless `model` is a trained run (which
    brings its own train set)."""
    if precision == "int8" and not calibration and resolve_model(model).kind == "name":
        raise ValueError(INT8_NEEDS_CALIBRATION)


@dataclass
class LoadedModel:
    """A model ready for eval, predict, bench, export or serve, with what it was trained to see and say.

    `classes`: a trained run's class names in output order (None for a table model: `class_names()` decides).
    `transform(protocol)`: its eval preprocessing; a trained run's own ("run") unless another protocol is asked for.
    `run_data`: where a trained run's train and val sets were ({"train", "train_root", "val", "val_root"}), if known.
    """

    model: VisionTransformer
    name: str  # a table name, or "custom"
    source: str
    classes: list[str] | None = None
    run_transform: dict | None = None  # EvalTransform fields of a trained run
    run_data: dict | None = None

    @property
    def default_protocol(self) -> str:
        return RUN_PROTOCOL if self.run_transform else "seed"

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def img_size(self) -> int:
        return self.model.cfg.img_size

    def transform(self, protocol: str | None = None) -> EvalTransform:
        protocol = protocol or self.default_protocol
        if protocol == RUN_PROTOCOL:
            if not self.run_transform:
                raise ValueError(f"{self.source}: protocol 'run' needs a trained run's folder (it has its transform)")
            fields = dict(self.run_transform)
            fields["mean"], fields["std"] = tuple(fields["mean"]), tuple(fields["std"])
            return EvalTransform(**fields)
        if self.name == "custom":
            raise ValueError(f"{self.source}: a custom architecture has no {protocol!r} protocol; use 'run' (its own)")
        return eval_transform(self.name, protocol, img_size=self.model.cfg.img_size)

    def class_names(self, names_file: str | Path | None = None) -> ClassNames:
        """The classes of the model's outputs (`vitzoo.labels.ClassNames.of`: a --class-names file, else the run's,
        else ImageNet's for a 1000-class table model, else indices)."""
        names, source = self.classes, f"{self.source}'s classes"
        if names_file is not None:
            names, source = read_class_names(names_file), str(names_file)
        return ClassNames.of(self.model.num_classes, names, imagenet=self.name in SPECS, source=source)

    def data_set(self, which: str) -> tuple[str, str | None] | None:
        """(data, root) of the run's "train" or "val" set, where the run recorded it and it still exists."""
        data = (self.run_data or {}).get(which)
        if data and Path(data).exists():
            return data, self.run_data.get(f"{which}_root")
        return None

    def calibration_source(self, calibration: str | None) -> tuple[str, str | None, str]:
        """(data, root, what it is) of int8's calibration images: `calibration` as given, else the run's own train
        set. A model with neither is refused: int8 calibrated on images unlike its data would be silently wrong."""
        if calibration:
            return calibration, None, str(calibration)
        own = self.data_set("train")
        if own is not None:
            return own[0], own[1], f"the run's train set {own[0]}"
        raise ValueError(INT8_NEEDS_CALIBRATION)

    def runner(self, options, protocol: str | None = None, workdir=None):
        """The inference path `options` (a `vitzoo.config.PathOptions`) names, built for this model; int8 calibrated
        on `calibration_source`, preprocessed by `transform(protocol)`."""
        from .infer import build_path, calibration_images

        path = options.path
        calibration = None
        if path.precision == "int8":
            data, root, _ = self.calibration_source(options.calibration)
            calibration = calibration_images(data, self.transform(protocol), options.calibration_size, root=root)
        return build_path(self.model, path.precision, path.backend, path.device, calibration, workdir)


def read_class_names(path: str | Path) -> list[str]:
    """A class-names file: one name per line in output order (blank lines skipped)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the class names: {getattr(e, 'strerror', None) or e}") from None


def write_model_card(
    folder, model: VisionTransformer, classes: list[str], transform, weights: str, data: dict | None = None
) -> Path:
    """`folder/model.json`: the architecture, the class names, the eval transform and (`data`) where the run's train
    and val sets were, beside `weights`."""
    from dataclasses import asdict

    card = {
        "format": CARD_FORMAT, "version": 1, "model": getattr(model, "model_name", "custom"),
        "arch": asdict(model.cfg), "classes": list(classes), "eval_transform": asdict(transform), "weights": weights,
        "data": data or {},
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
    if not isinstance(card.get("data", {}), dict):
        raise ValueError(f"{path}: 'data' is not a mapping")
    return card


def load_model(
    source: str | Path,
    weights=None,
    num_classes: int | None = None,
    img_size: int | None = None,
    pos_embed_resample: str = "timm",
    random_weights: bool = False,
):
    """A model to answer with: a table model by name with `weights`, or a trained run's output folder (its
    architecture, weights and class names; `weights` may name another file of it, e.g. model_ema.safetensors): a
    `LoadedModel`. An exported file (`vitzoo export`) gives a `vitzoo.artifacts.LoadedArtifact`, the same interface
    run in the file's own runtime.

    The weights' head must fit the model (a checkpoint of other classes is refused: its answers would be random);
    `random_weights` builds a table model without weights (timing needs no values).
    """
    from .model import ViTConfig
    from .weights import load_weights

    ref = resolve_model(source)
    if ref.kind == "artifact":
        from .artifacts import load_artifact

        if weights is not None:
            raise ValueError(f"{ref.path}: an exported model holds its weights; --weights does not apply")
        if img_size is not None:
            raise ValueError(f"{ref.path}: an exported model takes the input size it was exported at")
        return load_artifact(ref.path)
    if ref.kind == "run":
        folder = ref.path
        card = _read_card(folder)
        try:
            cfg = ViTConfig(**card["arch"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{folder / MODEL_CARD}: bad architecture: {e}") from None
        if len(card["classes"]) != cfg.num_classes:
            raise ValueError(
                f"{folder / MODEL_CARD}: {len(card['classes'])} class names for a {cfg.num_classes}-class model"
            )
        if img_size is not None and img_size != cfg.img_size:
            raise ValueError(f"{folder}: a trained run takes the input size it was trained at ({cfg.img_size}), "
                             f"not {img_size}")  # fmt: skip
        model = build_model(cfg)
        model.model_name = card["model"]
        loaded = LoadedModel(model, card["model"], str(folder), card["classes"], card["eval_transform"],
                             card.get("data") or None)  # fmt: skip
        set_pretrained_cfg(model, loaded.transform(RUN_PROTOCOL))
        weights_file = Path(weights) if weights else folder / card["weights"]
        if weights and not weights_file.is_absolute() and not weights_file.exists():
            weights_file = folder / weights
        model.load_report = load_weights(model, weights_file, new_head=False)
        return loaded
    if weights is None and not random_weights:
        raise ValueError(f"--weights is needed for {ref.name} (a file, a Hugging Face folder or a known name such as "
                         "paddleclas; a run folder brings its own)")  # fmt: skip
    model = create_model(ref.name, num_classes=num_classes or 1000, img_size=img_size)
    if weights is not None:
        model.load_report = load_weights(model, weights, pos_embed_resample, new_head=False)
    return LoadedModel(model, model.model_name, str(source))


def load_model_from(options, img_size: int | None = None, random_weights: bool = False) -> LoadedModel:
    """`load_model` as a `vitzoo.config.ModelOptions` names it (with `PathOptions`, int8's calibration checked
    first)."""
    check_calibration(options.model, getattr(options, "precision", "fp32"), getattr(options, "calibration", None))
    return load_model(options.model, options.weights, options.num_classes, img_size, options.pos_embed_resample,
                      random_weights)  # fmt: skip
