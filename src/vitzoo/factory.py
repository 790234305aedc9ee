"""Build a model by its PaddleClas name."""

from __future__ import annotations

from .model import VisionTransformer, build_model
from .specs import get_spec


def create_model(
    name: str,
    num_classes: int = 1000,
    img_size: int | None = None,
    drop_path_rate: float = 0.0,
    weights=None,
    **overrides,
) -> VisionTransformer:
    """One of the 15 models (names match case-insensitively), randomly initialised for training from scratch.

    `img_size` builds the model for another input size (its pos_embed grid sized for it); `overrides` sets any other
    `ViTConfig` field (drop_rate, attn_drop_rate, in_chans, ...). `weights` (a file, a Hugging Face folder or a
    known name) loads a checkpoint: pos_embed resampled to `img_size`, head(s) dropped if `num_classes` differs.
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
    if weights is not None:
        from .weights import load_weights

        model.load_report = load_weights(model, weights)
    return model
