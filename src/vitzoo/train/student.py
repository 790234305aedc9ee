"""The model being trained: one of the 15 by name, or a small custom ViT/DeiT; optionally started from weights."""

from __future__ import annotations

import logging

from ..factory import create_model
from ..model import ViTConfig, VisionTransformer, build_model
from ..specs import IMAGENET_MEAN, IMAGENET_STD, get_spec

log = logging.getLogger("vitzoo")


def build_student(cfg, num_classes: int) -> VisionTransformer:
    """The model for `cfg` with `num_classes` outputs; `cfg.finetune` loaded through vitzoo's loader (heads of another
    class count are left fresh, pos_embed is resampled to the model's grid)."""
    if cfg.is_custom:
        arch = ViTConfig(
            img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.width, depth=cfg.depth,
            num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, distilled=cfg.distilled, num_classes=num_classes,
            drop_rate=cfg.drop, drop_path_rate=cfg.drop_path,
        )  # fmt: skip
        model = build_model(arch)
        model.model_name = "custom"
        if cfg.finetune:
            from ..weights import load_weights

            model.load_report = load_weights(model, cfg.finetune, cfg.pos_embed_resample)
    else:
        model = create_model(
            cfg.model, num_classes=num_classes, img_size=cfg.img_size, drop_path_rate=cfg.drop_path,
            drop_rate=cfg.drop, weights=cfg.finetune, pos_embed_resample=cfg.pos_embed_resample,
        )  # fmt: skip
    if cfg.finetune:
        log.info("fine-tuning from %s", model.load_report)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def normalisation(cfg) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std the model sees: the config's, else the named model's own, else ImageNet's."""
    if cfg.is_custom:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        spec = get_spec(cfg.model).eval
        mean, std = spec.mean, spec.std
    return tuple(cfg.mean or mean), tuple(cfg.std or std)


REGULARISATION = ("drop_rate", "attn_drop_rate", "drop_path_rate")  # may change between runs of the same weights


def identity(model: VisionTransformer) -> dict:
    """What a checkpoint must match to be resumed into `model`: its name and the architecture's shape."""
    from dataclasses import asdict

    arch = {k: v for k, v in asdict(model.cfg).items() if k not in REGULARISATION}
    return {"model": getattr(model, "model_name", type(model).__name__), "arch": arch}
