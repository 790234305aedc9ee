"""Hugging Face transformers ViT / DeiT checkpoints (folder with config.json, or a bare weights file).

- read_folder(path) -> dict[str, Tensor]: the raw tensors of a save_pretrained folder.
- is_hf_layout(keys) -> bool: the key names are transformers' names.
- hf_to_canonical(raw) -> (canonical dict, list of canonical names that were mapped).

Names (transformers' `models/vit/modeling_vit.py`, `models/deit/modeling_deit.py`): the backbone sits under `vit.` (ViT, Facebook's plain DeiT), `deit.` (DeiT
classes) or no prefix (a bare ViTModel / DeiTModel); the heads are top-level. Files carry the hub names
(`encoder.layer.{i}.attention.attention.query` ...), which `save_pretrained` still writes in transformers 5; a
`torch.save(model.state_dict())` of a transformers 5 model carries its in-memory names
(`layers.{i}.attention.q_proj` ...), so both are read.

A tensor with no place in vitzoo's models (a bare ViTModel's `pooler.*`, a masked-image-modelling decoder, a
`mask_token`) is passed through under its own name, so the loader refuses the file and names it as unexpected:
dropping the pooler silently would throw away part of the checkpoint's network (in Google's in21k checkpoints it is
the pre-logits layer).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .common import WeightsError, as_tensor
from .containers import read_container

# the files of a save_pretrained folder, in the order transformers prefers them: (single file, shard index)
_WEIGHT_FILES = (
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)
_MODEL_TYPES = ("vit", "deit")

_PATCH_WEIGHT = "embeddings.patch_embeddings.projection.weight"  # every ViT / DeiT backbone has it; marks the prefix

# canonical module -> backbone module (after the prefix), for the tensors outside the blocks
_EMBEDDINGS = {
    "cls_token": "embeddings.cls_token",
    "dist_token": "embeddings.distillation_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj": "embeddings.patch_embeddings.projection",
    "norm": "layernorm",
}
# top-level head modules -> canonical
_HEADS = {"classifier": "head", "cls_classifier": "head", "distillation_classifier": "head_dist"}
# canonical module in blocks.{i} -> (hub name in encoder.layer.{i}, transformers 5 in-memory name in layers.{i})
_BLOCK = {
    "norm1": ("layernorm_before", "layernorm_before"),
    "attn.proj": ("attention.output.dense", "attention.o_proj"),
    "norm2": ("layernorm_after", "layernorm_after"),
    "mlp.fc1": ("intermediate.dense", "mlp.fc1"),
    "mlp.fc2": ("output.dense", "mlp.fc2"),
}
# the three attention projections merged into blocks.{i}.attn.qkv, in its row order
_QKV = {"query": ("attention.attention.query", "attention.q_proj"),
        "key": ("attention.attention.key", "attention.k_proj"),
        "value": ("attention.attention.value", "attention.v_proj")}  # fmt: skip

_BLOCK_NAME = {name: canon for canon, names in _BLOCK.items() for name in names}
_QKV_NAME = {name: part for part, names in _QKV.items() for name in names}
_LAYER = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)")


# -- the folder -------------------------------------------------------------------------------------------------------
def read_folder(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `save_pretrained` folder: model.safetensors or pytorch_model.bin, single or sharded."""
    path = Path(path)
    _check_config(path / "config.json")
    for single, index in _WEIGHT_FILES:
        if (path / single).is_file():
            return _read_tensors(path / single)
        if (path / index).is_file():
            return _read_shards(path / index)
    found = sorted(p.name for p in path.iterdir())[:10]
    raise WeightsError(
        f"{path}: a folder without weights: expected a Hugging Face save_pretrained folder with model.safetensors "
        f"or pytorch_model.bin (or their sharded .index.json); found {found or 'nothing'}"
    )


def config_heads(folder: Path) -> int | None:
    """The head count a folder's config.json states (`num_attention_heads`), if it has one."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    try:
        heads = json.loads(config.read_text(encoding="utf-8")).get("num_attention_heads")
    except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        return None  # read_folder has already refused a bad config
    return heads if isinstance(heads, int) and not isinstance(heads, bool) else None


def _check_config(config: Path) -> None:
    """A config.json, if there is one, must be a ViT / DeiT one. timm's hub folders have no model_type: allowed."""
    if not config.is_file():
        return
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise WeightsError(f"{config}: not a valid JSON config: {type(e).__name__}: {e}") from None
    if not isinstance(cfg, dict):
        raise WeightsError(f"{config}: expected a JSON object, found {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if model_type is not None and model_type not in _MODEL_TYPES:
        raise WeightsError(f"{config}: model_type {model_type!r} is not a ViT or DeiT model (expected 'vit' or 'deit')")


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    kind, obj = read_container(file)  # sniffs the content; torch files are read with weights_only=True
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{file}: expected a flat dict of tensors, found a {kind} file holding something else")
    return obj


def _read_shards(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise WeightsError(f"{index}: not a valid shard index (JSON with a 'weight_map'): {e!r}") from None
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        file = index.parent / shard
        if Path(shard).name != shard:  # the index may only name files beside it
            raise WeightsError(f"{index}: shard {shard!r} is not a file name in the same folder")
        tensors.update(_read_tensors(file))
    missing = sorted(weight_map.keys() - tensors.keys())
    if missing:
        raise WeightsError(f"{index}: {len(missing)} tensor(s) listed but not in the shards: {', '.join(missing[:6])}")
    return tensors


# -- the names --------------------------------------------------------------------------------------------------------
def is_hf_layout(keys) -> bool:
    return any("embeddings.patch_embeddings" in k for k in keys)


def _prefix(keys) -> str:
    prefixes = {k[: -len(_PATCH_WEIGHT)] for k in keys if k.endswith(_PATCH_WEIGHT)}
    if len(prefixes) != 1:
        found = sorted(prefixes) if prefixes else "none"
        raise ValueError(f"expected one backbone with {_PATCH_WEIGHT} (under vit., deit. or no prefix); found {found}")
    return prefixes.pop()


def hf_to_canonical(raw: dict):
    """transformers' names -> timm's canonical names; query/key/value merged into qkv. Unknown names pass through."""
    prefix = _prefix(raw)
    out: dict = {}
    mapped: list[str] = []
    qkv_parts: dict[tuple[int, str], dict[str, object]] = {}  # (layer, weight|bias) -> {query|key|value: tensor}
    layers: set[int] = set()

    def put(name: str, value, source: str, renamed: bool = True) -> None:
        if name in out:
            raise ValueError(f"{source} and another tensor both map to {name}")
        out[name] = value
        if renamed:
            mapped.append(name)

    for key, value in raw.items():
        module, _, leaf = key.rpartition(".")
        if module in _HEADS:
            put(f"{_HEADS[module]}.{leaf}", value, key)
            continue
        inner = key[len(prefix) :] if key.startswith(prefix) else None
        layer = _LAYER.fullmatch(inner) if inner is not None else None
        if layer:
            i, part, leaf = int(layer[1]), layer[2], layer[3]
            if part in _BLOCK_NAME:
                layers.add(i)
                put(f"blocks.{i}.{_BLOCK_NAME[part]}.{leaf}", value, key)
                continue
            if part in _QKV_NAME:
                layers.add(i)
                qkv_parts.setdefault((i, leaf), {})[_QKV_NAME[part]] = value
                continue
        canonical = _embedding_name(inner) if inner is not None else None
        if canonical:
            put(canonical, value, key)
        else:
            put(key, value, key, renamed=False)  # no place in vitzoo's models: the loader reports it as unexpected

    for (i, leaf), parts in sorted(qkv_parts.items()):
        put(f"blocks.{i}.attn.qkv.{leaf}", _merge_qkv(i, leaf, parts), f"layer {i} query/key/value")
    _check_complete(out, layers, prefix)
    if "dist_token" in out and "head.weight" in out and "head_dist.weight" not in out:
        raise ValueError(
            "a distillation token but a single head (transformers' DeiTForImageClassification): vitzoo has no such "
            "model; its distilled models need both heads (DeiTForImageClassificationWithTeacher)"
        )
    return out, sorted(mapped)


def _embedding_name(inner: str) -> str | None:
    for canonical, name in _EMBEDDINGS.items():
        if inner == name:  # the tokens and the position embedding are bare parameters
            return canonical
        if inner.startswith(name + ".") and inner[len(name) + 1 :] in ("weight", "bias"):
            return f"{canonical}.{inner[len(name) + 1 :]}"
    return None


def _merge_qkv(i: int, leaf: str, parts: dict) -> torch.Tensor:
    missing = [p for p in _QKV if p not in parts]
    if missing:
        have = [p for p in _QKV if p in parts]
        raise ValueError(f"layer {i} has the attention {leaf} of {', '.join(have)} but not of {', '.join(missing)}")
    tensors = [as_tensor(parts[p]) for p in _QKV]
    if len({t.shape for t in tensors}) != 1:
        shapes = ", ".join(f"{p} {tuple(t.shape)}" for p, t in zip(_QKV, tensors))
        raise ValueError(f"layer {i}: the attention {leaf} of query, key and value differ in shape: {shapes}")
    return torch.cat(tensors, dim=0)  # rows [q | k | v], as the fused Linear expects


def _check_complete(out: dict, layers: set[int], prefix: str) -> None:
    """Every block 0..N-1 whole, and the embeddings and final norm there, else name what is missing (hub names)."""
    needed = {c: f"{prefix}{_EMBEDDINGS[c]}" for c in ("cls_token", "pos_embed")}
    needed.update({f"{c}.{leaf}": f"{prefix}{_EMBEDDINGS[c]}.{leaf}" for c in ("patch_embed.proj", "norm")
                   for leaf in ("weight", "bias")})  # fmt: skip
    for i in range(max(layers, default=-1) + 1):
        hub = f"{prefix}encoder.layer.{i}."
        needed[f"blocks.{i}.attn.qkv.weight"] = hub + "attention.attention.{query,key,value}.weight"
        for canon, (name, _) in _BLOCK.items():
            for leaf in ("weight", "bias"):
                needed[f"blocks.{i}.{canon}.{leaf}"] = f"{hub}{name}.{leaf}"
    missing = [f"{canon} ({hf})" for canon, hf in needed.items() if canon not in out]
    if not layers:
        missing.append(f"every block ({prefix}encoder.layer.*)")
    if missing:
        more = " ..." if len(missing) > 6 else ""
        raise ValueError(f"incomplete checkpoint: {len(missing)} tensor(s) missing: {', '.join(missing[:6])}{more}")
