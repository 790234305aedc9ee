"""Google's ViT releases (.npz): JAX/Flax names and layouts -> canonical (timm's) names in PyTorch layout.

Three variants of the same parameter tree (google-research/vision_transformer's and big_vision's checkpoints):
- google-research/vision_transformer: plain keys, `Transformer/encoderblock_{i}/` with modules numbered in call
  order (LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3);
- AugReg: the same, every key under `opt/target/` (other `opt/` entries are optimizer state and are ignored);
- big_vision: under `params/` or `params/img/`, modules numbered per type (LayerNorm_0/1,
  MultiHeadDotProductAttention_0, MlpBlock_0), a top-level `pos_embedding`, and the blocks either numbered or
  stacked under `Transformer/encoderblock/` with a leading layer axis.

CONTRACT (called by load.py):
- is_google_layout(keys) -> bool
- google_to_canonical(raw: dict[str, np.ndarray]) -> (canonical dict, list of canonical names that were mapped)
"""

from __future__ import annotations

import math
import re

import numpy as np

# where the parameters sit; "" (the original release) last, as every key would match it
_PREFIXES = ("opt/target/", "params/img/", "params/", "")
_BLOCK_INDEX = re.compile(r"Transformer/encoderblock_(\d+)/")
_STACKED = "Transformer/encoderblock/"

# sub-module names inside one encoder block: (norm1, attention, norm2, mlp)
_CALL_ORDER_NAMES = ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
_PER_TYPE_NAMES = ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")


def _params_prefix(keys) -> str | None:
    """The prefix that holds the model's parameters, or None when no key looks like a Google ViT."""
    for prefix in _PREFIXES:
        if any(k.startswith(prefix + "Transformer/") for k in keys):
            return prefix
    for prefix in _PREFIXES:  # a file without a single Transformer key: still ours, to report what is missing
        if prefix + "embedding/kernel" in keys:
            return prefix
    return None


def is_google_layout(keys) -> bool:
    return _params_prefix(list(keys)) is not None


class _Reader:
    """Reads arrays from the prefix-stripped parameter dict, remembering which keys were used and which missing."""

    def __init__(self, params: dict, prefix: str):
        self.params = params
        self.prefix = prefix
        self.used: set[str] = set()
        self.missing: list[str] = []

    def take(self, key: str, ndim: int, layer: int | None = None):
        value = self.params.get(key)
        if value is None:
            self.missing.append(self.prefix + key)
            return None
        self.used.add(key)  # a stacked array is read once per layer
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{self.prefix + key} holds {value.dtype}, not floating point")
        if layer is not None:  # stacked blocks: the leading axis is the layer
            value = value[layer]
        if value.ndim != ndim:
            raise ValueError(f"{self.prefix + key} has shape {value.shape}, expected {ndim} dimensions")
        return value


def _attention(read, base: str, layer: int | None) -> dict:
    """q, k, v kernels (D, H, Dh) -> one qkv Linear (3*H*Dh, D), rows [q | k | v]; out (H, Dh, D) -> (D, H*Dh)."""
    kernels = [read(f"{base}{n}/kernel", 3, layer) for n in ("query", "key", "value")]
    biases = [read(f"{base}{n}/bias", 2, layer) for n in ("query", "key", "value")]
    out_kernel = read(f"{base}out/kernel", 3, layer)
    out_bias = read(f"{base}out/bias", 1, layer)
    if any(x is None for x in [*kernels, *biases, out_kernel, out_bias]):
        return {}
    dim, heads, head_dim = kernels[0].shape  # the file's number of heads: H of the query kernel
    for name, array, shape in (
        ("key/kernel", kernels[1], (dim, heads, head_dim)),
        ("value/kernel", kernels[2], (dim, heads, head_dim)),
        ("query/bias", biases[0], (heads, head_dim)),
        ("key/bias", biases[1], (heads, head_dim)),
        ("value/bias", biases[2], (heads, head_dim)),
        ("out/kernel", out_kernel, (heads, head_dim, dim)),
    ):
        if array.shape != shape:
            raise ValueError(
                f"{base}{name} has shape {array.shape}, expected {shape} from query/kernel {kernels[0].shape}"
            )
    return {
        "attn.qkv.weight": np.concatenate([k.reshape(dim, heads * head_dim).T for k in kernels]),
        "attn.qkv.bias": np.concatenate([b.reshape(-1) for b in biases]),
        "attn.proj.weight": out_kernel.reshape(heads * head_dim, dim).T,
        "attn.proj.bias": out_bias,
    }


def _block(read, base: str, names: tuple[str, ...], layer: int | None) -> dict:
    """One encoder block's tensors, canonical names relative to `blocks.{i}.`."""
    norm1, attention, norm2, mlp = names
    out = {
        "norm1.weight": read(f"{base}{norm1}/scale", 1, layer),
        "norm1.bias": read(f"{base}{norm1}/bias", 1, layer),
        "norm2.weight": read(f"{base}{norm2}/scale", 1, layer),
        "norm2.bias": read(f"{base}{norm2}/bias", 1, layer),
    }
    for r in (0, 1):
        kernel = read(f"{base}{mlp}/Dense_{r}/kernel", 2, layer)
        out[f"mlp.fc{r + 1}.weight"] = None if kernel is None else kernel.T  # (in, out) -> (out, in)
        out[f"mlp.fc{r + 1}.bias"] = read(f"{base}{mlp}/Dense_{r}/bias", 1, layer)
    out.update(_attention(read, f"{base}{attention}/", layer))
    return out


def _block_layout(params: dict) -> tuple[list[tuple[str, int | None]], tuple[str, ...]]:
    """[(key prefix, layer index in a stacked array or None)] for every block, and the sub-module names."""
    stacked = [k for k in params if k.startswith(_STACKED)]
    if stacked:
        depths = {np.shape(params[k])[0] if np.ndim(params[k]) else 0 for k in stacked}
        if len(depths) != 1:
            raise ValueError(f"stacked blocks under {_STACKED} disagree on the number of layers: {sorted(depths)}")
        blocks = [(_STACKED, i) for i in range(depths.pop())]
    else:
        indices = {int(m.group(1)) for k in params if (m := _BLOCK_INDEX.match(k))}
        # numbered from 0: a gap shows up below as the missing keys of that block
        blocks = [(f"Transformer/encoderblock_{i}/", None) for i in range(max(indices) + 1 if indices else 0)]
    block_keys = [k for k in params if k.startswith("Transformer/encoderblock")]
    call_order = any(f"/{_CALL_ORDER_NAMES[1]}/" in k for k in block_keys)
    return blocks, _CALL_ORDER_NAMES if call_order else _PER_TYPE_NAMES


def stated_heads(raw: dict) -> int | None:
    """The head count a Google .npz states: H of the first block's query kernel [D, H, Dh] (one layer's, or
    [layers, D, H, Dh] stacked)."""
    for key, value in raw.items():
        if key.endswith("query/kernel"):
            shape = np.shape(value)
            return int(shape[-2]) if len(shape) >= 3 else None
    return None


def google_to_canonical(raw: dict):
    """Google/AugReg/big_vision .npz arrays -> ({canonical name: array}, canonical names mapped).

    Every tensor is renamed, so every canonical name is reported as mapped. Keys under the prefix that are not part
    of these models keep their npz name, so the loader reports them as unexpected: `pre_logits/*` (the ImageNet-21k
    representation layer) becomes `pre_logits.fc.*`, which these models do not have. Raises ValueError naming the
    npz keys that are missing or malformed.
    """
    prefix = _params_prefix(list(raw))
    if prefix is None:
        raise ValueError("no Transformer/* or embedding/kernel key: not a Google ViT .npz")
    params = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}  # outside: optimizer state
    reader = _Reader(params, prefix)
    read = reader.take
    out = {}

    kernel = read("embedding/kernel", 4)
    out["patch_embed.proj.weight"] = None if kernel is None else kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    out["patch_embed.proj.bias"] = read("embedding/bias", 1)
    out["cls_token"] = read("cls", 3)
    if "pos_embedding" in params:  # big_vision
        pos_embed = read("pos_embedding", 3)
        tokens = pos_embed.shape[1]
        if math.isqrt(tokens) ** 2 == tokens:
            # big_vision adds the position embedding before prepending the class token: a zero row for the class
            # token is exactly that model (1 + g*g is never a square, so a file with a class row never lands here)
            pos_embed = np.concatenate([np.zeros_like(pos_embed[:, :1]), pos_embed], axis=1)
        out["pos_embed"] = pos_embed
    else:
        out["pos_embed"] = read("Transformer/posembed_input/pos_embedding", 3)

    blocks, names = _block_layout(params)
    for i, (base, layer) in enumerate(blocks):
        out.update({f"blocks.{i}.{k}": v for k, v in _block(read, base, names, layer).items()})

    out["norm.weight"] = read("Transformer/encoder_norm/scale", 1)
    out["norm.bias"] = read("Transformer/encoder_norm/bias", 1)
    kernel = read("head/kernel", 2)
    out["head.weight"] = None if kernel is None else kernel.T
    out["head.bias"] = read("head/bias", 1)
    if "pre_logits/kernel" in params:  # a layer these models lack: kept, so the loader names it as unexpected
        out["pre_logits.fc.weight"] = read("pre_logits/kernel", 2).T
        out["pre_logits.fc.bias"] = read("pre_logits/bias", 1)

    if reader.missing:
        shown = ", ".join(reader.missing[:6]) + (" ..." if len(reader.missing) > 6 else "")
        raise ValueError(f"incomplete Google .npz: missing {len(reader.missing)} key(s): {shown}")
    mapped = sorted(out)
    # whatever is left is not part of these models: kept under its npz name, the loader reports it as unexpected
    out.update({k: v for k, v in params.items() if k not in reader.used})
    return out, mapped
