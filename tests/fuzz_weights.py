"""Fuzz targets for `load_weights`: one per container, each fed arbitrary bytes as a file of that kind.

Every target loads into the same tiny model (16x16 images, 8-wide, one block, 3 classes), so a valid seed maps,
checks and loads in well under a millisecond and the fuzzer's mutations reach every step: sniffing, the container,
the layout mapping, the shape checks. The reader sniffs content, so any target can wander into any container.
Seeds: valid files of each kind (PaddleClas pickles in protocols 2 and 4, with and without Paddle's big-array split;
torch zip and legacy; safetensors; Google npz; a Hugging Face folder written by transformers) and hostile ones
(pickles that call the canary directly or through exec, eval, os.system; a torch file doing the same).
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np

from fuzzing import Target

INSTRUMENT = ("vitzoo.weights", "json")  # and per container, the pure-Python code that parses it:
PICKLE = ("pickle",)  # vitzoo's unpickler is pickle._Unpickler
TORCH = ("zipfile", "torch.serialization", "torch._weights_only_unpickler")
NPZ = ("zipfile", "numpy.lib._format_impl")
ARCH = dict(num_classes=3, img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=2)
HF_SEPARATOR = b"\n--vitzoo-fuzz-weights--\n"
MEMORY_MB = 512  # beyond the warm process: inputs are < 20 KB and the readers may make 4x the input + 1 MiB  # a Hugging Face folder input: config.json, this, the weights file


def tiny_model(distilled: bool = False):
    import vitzoo

    name = "DeiT_tiny_distilled_patch16_224" if distilled else "DeiT_tiny_patch16_224"
    return vitzoo.create_model(name, **ARCH).eval()


def tiny_state(seed: int = 0) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in tiny_model().state_dict().items()}


def _errors():
    from vitzoo.weights import WeightsError

    return (WeightsError,)


def _file_target(suffix: str):
    """build(): the tiny model and a file the input is written to, loaded by load_weights."""

    def build(workdir: Path):
        from vitzoo.weights import load_weights

        model, path = tiny_model(), workdir / f"input{suffix}"

        def call(data: bytes):
            path.write_bytes(data)
            return load_weights(model, path)

        return call, str(path)

    return build


def _build_hf_folder(workdir: Path):
    from vitzoo.weights import load_weights

    model, folder = tiny_model(), workdir / "hf"
    folder.mkdir(parents=True, exist_ok=True)

    def call(data: bytes):
        config, _, weights = data.partition(HF_SEPARATOR)
        (folder / "config.json").write_bytes(config)
        (folder / "model.safetensors").write_bytes(weights)
        return load_weights(model, folder)

    return call, str(folder)


# -- hostile pickles: each would call the canary if a reader ran it -------------------------------------------------------
class Calls:
    """Pickles as a call of `function(*args)` when loaded (REDUCE): how a hostile checkpoint runs code."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def hostile_payloads() -> dict[str, object]:
    import builtins
    import os

    import fuzzing

    run = "import fuzzing; fuzzing.canary('ran')"
    return {
        "canary": {"w": Calls(fuzzing.canary, "reduce")},
        "exec": {"w": Calls(builtins.exec, run)},
        "eval": {"w": Calls(builtins.eval, "__import__('fuzzing').canary('eval')")},
        "system": {"w": Calls(os.system, "true")},
        "nested": {"w": np.zeros(2, np.float32), "x": [Calls(fuzzing.canary, "nested")]},
    }


# -- seeds -----------------------------------------------------------------------------------------------------------
def _paddle_arrays(state) -> dict:
    from vitzoo.weights.pdparams import canonical_to_paddle

    return canonical_to_paddle(state)


def _big_split(arrays: dict, name: str, pieces: int = 2) -> dict:
    """Paddle's protocol-2 split of one array into 1-D pieces with "UnpackBigParamInfor@@" bookkeeping."""
    out = dict(arrays)
    value = out.pop(name)
    parts = np.array_split(value.ravel(), pieces)
    slices = [f"{name}@@.{i}" for i in range(pieces)]
    out.update(zip(slices, parts))
    out["UnpackBigParamInfor@@"] = {name: {"OriginShape": value.shape, "slices": slices}}
    out["StructuredToParameterName@@"] = {k: f"param_{i}" for i, k in enumerate(arrays)}
    return out


def seeds_pdparams(folder: Path) -> None:
    arrays = _paddle_arrays(tiny_state())
    for protocol in (2, 4):
        (folder / f"paddle_p{protocol}.pdparams").write_bytes(pickle.dumps(arrays, protocol=protocol))
        split = _big_split(arrays, "blocks.0.mlp.fc1.weight")
        (folder / f"paddle_split_p{protocol}.pdparams").write_bytes(pickle.dumps(split, protocol=protocol))
        for kind, payload in hostile_payloads().items():
            (folder / f"hostile_{kind}_p{protocol}.pdparams").write_bytes(pickle.dumps(payload, protocol=protocol))


def seeds_torch(folder: Path) -> None:
    import torch

    state = tiny_state()
    for name, obj in (("state", state), ("deit_wrapped", {"model": state, "epoch": 3}),
                      ("ddp", {f"module.{k}": v for k, v in state.items()})):  # fmt: skip
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        (folder / f"{name}.pth").write_bytes(buffer.getvalue())
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=False)
    (folder / "legacy.pth").write_bytes(buffer.getvalue())
    for kind, payload in hostile_payloads().items():
        for zipped in (True, False):
            buffer = io.BytesIO()
            torch.save(payload, buffer, _use_new_zipfile_serialization=zipped)
            (folder / f"hostile_{kind}_{'zip' if zipped else 'legacy'}.pth").write_bytes(buffer.getvalue())


def seeds_safetensors(folder: Path) -> None:
    from safetensors.torch import save

    state = tiny_state()
    arch = json.dumps({"embed_dim": 8, "depth": 1, "num_heads": 2, "patch_size": 8, "img_size": 16})
    (folder / "canonical.safetensors").write_bytes(save(state, metadata={"format": "pt", "vitzoo_arch": arch}))
    (folder / "plain.safetensors").write_bytes(save({k: v.half() for k, v in state.items()}))


def google_arrays(state) -> dict[str, np.ndarray]:
    """The canonical tiny state in the original ViT release's .npz names and layouts (kernels [in, ..., out])."""
    s = {k: v.numpy() for k, v in state.items()}
    dim, heads = ARCH["embed_dim"], ARCH["num_heads"]
    hd = dim // heads
    out = {
        "embedding/kernel": s["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": s["patch_embed.proj.bias"],
        "cls": s["cls_token"],
        "Transformer/posembed_input/pos_embedding": s["pos_embed"],
        "Transformer/encoder_norm/scale": s["norm.weight"],
        "Transformer/encoder_norm/bias": s["norm.bias"],
        "head/kernel": s["head.weight"].T,
        "head/bias": s["head.bias"],
    }
    for i in range(ARCH["depth"]):
        b, block = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        attention = block + "MultiHeadDotProductAttention_1/"
        qkv_w, qkv_b = np.split(s[b + "attn.qkv.weight"], 3), np.split(s[b + "attn.qkv.bias"], 3)
        for n, w, bias in zip(("query", "key", "value"), qkv_w, qkv_b):
            out[f"{attention}{n}/kernel"] = w.T.reshape(dim, heads, hd)
            out[f"{attention}{n}/bias"] = bias.reshape(heads, hd)
        out[f"{attention}out/kernel"] = s[b + "attn.proj.weight"].T.reshape(heads, hd, dim)
        out[f"{attention}out/bias"] = s[b + "attn.proj.bias"]
        for norm, ours in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[f"{block}{norm}/scale"] = s[f"{b}{ours}.weight"]
            out[f"{block}{norm}/bias"] = s[f"{b}{ours}.bias"]
        for dense, ours in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            out[f"{block}MlpBlock_3/{dense}/kernel"] = s[f"{b}mlp.{ours}.weight"].T
            out[f"{block}MlpBlock_3/{dense}/bias"] = s[f"{b}mlp.{ours}.bias"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def seeds_npz(folder: Path) -> None:
    arrays = google_arrays(tiny_state())
    for name, save in (("google.npz", np.savez), ("google_compressed.npz", np.savez_compressed)):
        buffer = io.BytesIO()
        save(buffer, **arrays)
        (folder / name).write_bytes(buffer.getvalue())
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v.numpy() for k, v in tiny_state().items()})
    (folder / "canonical.npz").write_bytes(buffer.getvalue())


def hf_folder_bytes() -> list[tuple[str, bytes]]:
    """Inputs for the folder target: a transformers-written tiny ViT (config.json + model.safetensors)."""
    import tempfile

    import torch
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16,
                       patch_size=8, num_labels=3, layer_norm_eps=1e-6)  # fmt: skip
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        config_bytes = (Path(tmp) / "config.json").read_bytes()
        out.append(("vit", config_bytes + HF_SEPARATOR + (Path(tmp) / "model.safetensors").read_bytes()))
    from safetensors.torch import save

    out.append(("canonical_no_type", b"{}" + HF_SEPARATOR + save(tiny_state())))
    return out


def seeds_hf_folder(folder: Path) -> None:
    for name, data in hf_folder_bytes():
        (folder / name).write_bytes(data)


def _target(name: str, instrument: tuple, build, seeds, about: str) -> Target:
    return Target(name, instrument, build, seeds, _errors, about=about, memory_mb=MEMORY_MB)


TARGETS = {
    t.name: t
    for t in (
        _target("weights_pdparams", INSTRUMENT + PICKLE, _file_target(".pdparams"), seeds_pdparams,
                "PaddleClas pickles, protocols 2 and 4, big-array splits"),
        _target("weights_torch", INSTRUMENT + TORCH, _file_target(".pth"), seeds_torch,
                "torch.save zip and legacy pickles, DeiT/timm/DDP wrappers"),
        _target("weights_safetensors", INSTRUMENT, _file_target(".safetensors"), seeds_safetensors,
                "safetensors, with and without vitzoo metadata"),
        _target("weights_npz", INSTRUMENT + NPZ, _file_target(".npz"), seeds_npz, "Google's ViT .npz (stored and deflated)"),
        _target("weights_hf_folder", INSTRUMENT, _build_hf_folder, seeds_hf_folder,
                "a Hugging Face folder: config.json + model.safetensors"),
    )
}  # fmt: skip
