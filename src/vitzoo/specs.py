"""The 15 models of the seed: architecture, evaluation protocol and the seed's published figures.

This table is the single source of truth: model construction, the CLI, eval defaults and benchmarks read from it.
Architecture: PaddleClas's `ppcls/arch/backbone/model_zoo/vision_transformer.py` and `deit.py`; eval protocol: its
`ppcls/configs/ImageNet/{VisionTransformer,DeiT}/*.yaml`; figures: PaddleClas's "ViT and DeiT series" model-zoo page.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import ViTConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class EvalProtocol:
    """PaddleClas's eval preprocessing for a model: resize the short side, center crop, normalize."""

    resize_short: int
    crop: int
    interpolation: str  # "cv2_bilinear" (OpenCV INTER_LINEAR) or "pil_bicubic"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class SeedFigures:
    """What the seed page prints for a model (ImageNet-1k val; V100 FP32 TensorRT latency in ms per batch)."""

    top1: float
    top5: float
    ref_top1: float
    ref_top5: float | None  # "-" in the seed
    flops_g: float  # paddle.flops convention: Linear + Conv MACs
    params_m: float  # leaf-layer parameters, pos_embed and prefix tokens left out
    latency_ms: dict[int, float]  # batch size -> ms


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: ViTConfig
    eval: EvalProtocol
    seed: SeedFigures
    timm_name: str | None  # timm's architecture of the same shape, where timm can express it
    timm_weights: str | None = None  # timm's hub tag of the published weights, where timm still has them
    hf_id: str | None = None  # Hugging Face transformers checkpoint of the same weights
    # PaddleClas's own weights: vitzoo.weights.hub.paddle_url(name) (one URL pattern, mirrors honoured)


_VIT_224 = EvalProtocol(256, 224, "cv2_bilinear", HALF, HALF)
_VIT_384 = EvalProtocol(384, 384, "cv2_bilinear", HALF, HALF)
_DEIT_224 = EvalProtocol(256, 224, "pil_bicubic", IMAGENET_MEAN, IMAGENET_STD)
_DEIT_384 = EvalProtocol(438, 384, "pil_bicubic", IMAGENET_MEAN, IMAGENET_STD)

_WIDTHS = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}


def _arch(size: str, patch: int, img: int, distilled: bool = False) -> ViTConfig:
    dim, depth, heads = _WIDTHS[size]
    return ViTConfig(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, distilled=distilled)


def _seed(top1, top5, ref_top1, ref_top5, flops_g, params_m, ms1, ms4, ms8) -> SeedFigures:
    return SeedFigures(top1, top5, ref_top1, ref_top5, flops_g, params_m, {1: ms1, 4: ms4, 8: ms8})


# ViT_small_patch16_224 is timm's early (2020) model, not the later 22M ViT-S: width 768, 8 blocks, MLP ratio 3,
# no qkv bias, scale 768^-0.5 (the full width, not the head width) and LayerNorm eps 1e-5.
_VIT_SMALL = ViTConfig(
    img_size=224, patch_size=16, embed_dim=768, depth=8, num_heads=8, mlp_ratio=3.0,
    qkv_bias=False, qk_scale=768**-0.5, norm_eps=1e-5,
)  # fmt: skip

# name, architecture, eval protocol, seed figures (top1 top5 ref-top1 ref-top5 FLOPs(G) Params(M) ms@bs1 bs4 bs8),
# timm's equivalent architecture.
_TABLE = [
    ("ViT_small_patch16_224", _VIT_SMALL, _VIT_224,
     _seed(0.7769, 0.9342, 0.7785, 0.9342, 9.41, 48.60, 3.71, 9.05, 16.72), None),
    ("ViT_base_patch16_224", _arch("base", 16, 224), _VIT_224,
     _seed(0.8195, 0.9617, 0.8178, 0.9613, 16.85, 86.42, 6.12, 14.84, 28.51), "vit_base_patch16_224"),
    ("ViT_base_patch16_384", _arch("base", 16, 384), _VIT_384,
     _seed(0.8414, 0.9717, 0.8420, 0.9722, 49.35, 86.42, 14.15, 48.38, 95.06), "vit_base_patch16_384"),
    ("ViT_base_patch32_384", _arch("base", 32, 384), _VIT_384,
     _seed(0.8176, 0.9613, 0.8166, 0.9613, 12.66, 88.19, 4.94, 13.43, 24.08), "vit_base_patch32_384"),
    ("ViT_large_patch16_224", _arch("large", 16, 224), _VIT_224,
     _seed(0.8323, 0.9650, 0.8306, 0.9644, 59.65, 304.12, 15.53, 49.50, 94.09), "vit_large_patch16_224"),
    ("ViT_large_patch16_384", _arch("large", 16, 384), _VIT_384,
     _seed(0.8513, 0.9736, 0.8517, 0.9736, 174.70, 304.12, 39.51, 152.46, 304.06), "vit_large_patch16_384"),
    ("ViT_large_patch32_384", _arch("large", 32, 384), _VIT_384,
     _seed(0.8153, 0.9608, 0.815, None, 44.24, 306.48, 11.44, 36.09, 70.63), "vit_large_patch32_384"),
    ("DeiT_tiny_patch16_224", _arch("tiny", 16, 224), _DEIT_224,
     _seed(0.718, 0.910, 0.722, 0.911, 1.07, 5.68, 3.61, 3.94, 6.10), "deit_tiny_patch16_224"),
    ("DeiT_small_patch16_224", _arch("small", 16, 224), _DEIT_224,
     _seed(0.796, 0.949, 0.799, 0.950, 4.24, 21.97, 3.61, 6.24, 10.49), "deit_small_patch16_224"),
    ("DeiT_base_patch16_224", _arch("base", 16, 224), _DEIT_224,
     _seed(0.817, 0.957, 0.818, 0.956, 16.85, 86.42, 6.13, 14.87, 28.50), "deit_base_patch16_224"),
    ("DeiT_base_patch16_384", _arch("base", 16, 384), _DEIT_384,
     _seed(0.830, 0.962, 0.829, 0.972, 49.35, 86.42, 14.12, 48.80, 97.60), "deit_base_patch16_384"),
    ("DeiT_tiny_distilled_patch16_224", _arch("tiny", 16, 224, True), _DEIT_224,
     _seed(0.741, 0.918, 0.745, 0.919, 1.08, 5.87, 3.51, 4.05, 6.03), "deit_tiny_distilled_patch16_224"),
    ("DeiT_small_distilled_patch16_224", _arch("small", 16, 224, True), _DEIT_224,
     _seed(0.809, 0.953, 0.812, 0.954, 4.26, 22.36, 3.70, 6.20, 10.53), "deit_small_distilled_patch16_224"),
    ("DeiT_base_distilled_patch16_224", _arch("base", 16, 224, True), _DEIT_224,
     _seed(0.831, 0.964, 0.834, 0.965, 16.93, 87.18, 6.17, 14.94, 28.58), "deit_base_distilled_patch16_224"),
    ("DeiT_base_distilled_patch16_384", _arch("base", 16, 384, True), _DEIT_384,
     _seed(0.851, 0.973, 0.852, 0.972, 49.43, 87.18, 14.12, 48.76, 97.09), "deit_base_distilled_patch16_384"),
]  # fmt: skip

# Where else the published weights live (weights.md): timm hub tags and Hugging Face ids.
_TIMM_WEIGHTS = {
    "ViT_base_patch16_224": "vit_base_patch16_224.orig_in21k_ft_in1k",
    "ViT_base_patch16_384": "vit_base_patch16_384.orig_in21k_ft_in1k",
    "ViT_large_patch32_384": "vit_large_patch32_384.orig_in21k_ft_in1k",
    **{name: f"{name.lower()}.fb_in1k" for name, *_ in _TABLE if name.startswith("DeiT")},
}
_HF_IDS = {
    **{name: "google/" + name.lower().replace("_", "-") for name, *_ in _TABLE if name.startswith("ViT_")},
    **{name: "facebook/" + name.lower().replace("_", "-") for name, *_ in _TABLE if name.startswith("DeiT")},
}
del _HF_IDS["ViT_small_patch16_224"]  # timm's own 2020 model: never on the Hugging Face hub

SPECS: dict[str, ModelSpec] = {
    row[0]: ModelSpec(*row, timm_weights=_TIMM_WEIGHTS.get(row[0]), hf_id=_HF_IDS.get(row[0])) for row in _TABLE
}
_BY_LOWER = {name.lower(): spec for name, spec in SPECS.items()}


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.args[0]


def list_models(pattern: str | None = None) -> list[str]:
    """The model names, in the seed's order; `pattern` filters by a case-insensitive substring or glob."""
    import fnmatch

    names = list(SPECS)
    if pattern:
        p = pattern.lower()
        names = [n for n in names if fnmatch.fnmatch(n.lower(), p if any(c in p for c in "*?[") else f"*{p}*")]
    return names


def get_spec(name: str) -> ModelSpec:
    """The spec of a model by its PaddleClas name, matched case-insensitively."""
    spec = _BY_LOWER.get(str(name).lower())
    if spec is None:
        import difflib

        close = difflib.get_close_matches(str(name).lower(), _BY_LOWER, n=1, cutoff=0.8)
        hint = f" (did you mean {_BY_LOWER[close[0]].name}?)" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint}; known models: {', '.join(SPECS)}")
    return spec
