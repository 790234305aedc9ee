"""timm's equivalent of a vitzoo model, carrying the same weights: the peer every speed figure is set against."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..model import VisionTransformer
from ..specs import get_spec


class NotComparableError(ValueError):
    """timm has no equivalent of this model."""


def _known_spec(name: str):
    """The table's spec of `name`, or None for a custom architecture (a `vitzoo train` run's own)."""
    from ..specs import UnknownModelError

    try:
        return get_spec(name)
    except UnknownModelError:
        return None


def timm_name(model: VisionTransformer) -> str:
    """timm's name of the model's equivalent, or what stands in for it where timm's registry has none."""
    spec = _known_spec(getattr(model, "model_name", None) or "custom")
    return (spec and spec.timm_name) or "timm VisionTransformer of this shape"


def _timm_arch(model: VisionTransformer) -> nn.Module:
    """timm's architecture of the model's shape, on the meta device (no memory, no random init)."""
    import timm
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    cfg = model.cfg
    name = getattr(model, "model_name", None)
    if name is None:
        raise NotComparableError("timm's equivalent is found by the model's name: build it with vitzoo.create_model")
    spec = _known_spec(name)
    with torch.device("meta"):
        if spec is not None and spec.timm_name is not None:
            return timm.create_model(spec.timm_name, num_classes=cfg.num_classes, img_size=cfg.img_size)
        # ViT_small_patch16_224 (timm's 2020 model) is gone from timm's registry, and a custom architecture (a
        # `vitzoo train` run) was never in it: timm's VisionTransformer of that shape
        return (VisionTransformerDistilled if cfg.distilled else TimmViT)(
            img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, embed_dim=cfg.embed_dim,
            depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
            num_classes=cfg.num_classes, norm_layer=partial(nn.LayerNorm, eps=cfg.norm_eps),
        )  # fmt: skip


def timm_twin(model: VisionTransformer) -> nn.Module:
    """timm's model of the same architecture holding a copy of `model`'s weights (fp32 eval, on the model's device).

    timm's fused attention always scales by head_dim^-0.5; where the model's scale differs (ViT_small_patch16_224:
    768^-0.5), timm's explicit attention path is given the model's scale, as tests/test_timm_parity.py does.
    """
    twin = _timm_arch(model).to_empty(device=next(model.parameters()).device)
    twin.load_state_dict(model.state_dict(), strict=True)
    for theirs, ours in zip(twin.blocks, model.blocks):
        if theirs.attn.scale != ours.attn.scale:
            theirs.attn.fused_attn = False
            theirs.attn.scale = ours.attn.scale
    return twin.float().eval()


def uses_default_attention(twin: nn.Module) -> bool:
    """Whether timm runs its own fused attention (False where it had to be given another scale)."""
    return all(block.attn.fused_attn for block in twin.blocks)


@torch.inference_mode()
def check_twin(model: nn.Module, twin: nn.Module, images: torch.Tensor, atol: float = 1e-4) -> float:
    """Assert both hold identical weights and give the same fp32 logits on `images` (within `atol` per unit of the
    largest logit: fp32 rounding differs between kernels); the largest logit difference."""
    theirs = twin.state_dict()
    for key, value in model.state_dict().items():
        if not torch.equal(value, theirs[key]):
            raise AssertionError(f"timm's copy of {key} differs from vitzoo's")
    ours, reference = model(images).float(), twin(images).float()
    diff = (ours - reference).abs().max().item()
    bound = atol * max(1.0, reference.abs().max().item())
    if not diff <= bound:
        raise AssertionError(f"timm's logits differ from vitzoo's by {diff:.3g} (> {bound:.3g}) on identical weights")
    return diff
