"""Load any supported checkpoint into a vitzoo model: detect, map to canonical names, check, adapt, load.

Nothing is loaded until every tensor has been mapped and checked, so a bad file leaves the model as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import google, hf
from .common import WeightsError, as_tensor
from .containers import read_container
from .pdparams import paddle_to_canonical
from .resample import METHODS, resample_pos_embed

log = logging.getLogger("vitzoo")

HEADS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")
_WRAPPERS = ("model", "state_dict", "model_state_dict", "module")  # DeiT: {'model': sd}; timm train: {'state_dict': sd}


@dataclass
class LoadReport:
    source: str
    format: str  # the container: pdparams, torch, safetensors, npz, huggingface
    layout: str  # the naming: canonical, paddle, huggingface, google
    loaded: int = 0
    mapped: list[str] = field(default_factory=list)  # tensors renamed, transposed, split or merged on the way
    resampled: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    num_heads: int | None = None  # the attention heads the source states (tensors of any head count look alike)
    heads_stated_by: str = ""

    def __str__(self) -> str:
        text = f"loaded {self.loaded} tensors from {self.source} ({self.format}, {self.layout} layout"
        text += f", {len(self.mapped)} mapped)" if self.mapped else ")"
        for what, names in (("resampled", self.resampled), ("dropped", self.dropped)):
            if names:
                text += f"; {what}: {', '.join(names)}"
        return text + "".join(f"; {n}" for n in self.notes)


def _unwrap(path, obj) -> dict:
    """The state dict inside a torch checkpoint: DeiT's {'model': ...}, timm's {'state_dict': ...}, or itself."""
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        key = next((k for k in _WRAPPERS if k in obj), None)
        if key is None:
            raise WeightsError(f"{path}: no state dict found; top-level keys: {sorted(obj)[:10]}")
        obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in tensors):  # saved from DistributedDataParallel
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def read_weights(source: str | Path) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """A checkpoint file or Hugging Face folder -> canonical state dict (timm's names, PyTorch layout) and a report."""
    path = Path(source)
    if path.is_dir():
        fmt, raw = "huggingface", hf.read_folder(path)
    elif path.exists():
        fmt, raw = read_container(path)
    else:
        raise WeightsError(f"{path}: no such file or folder")
    report = LoadReport(source=str(path), format=fmt, layout="canonical")
    if fmt == "torch":
        raw = _unwrap(path, raw)
    _check_claims(path, raw)
    _stated_heads(path, fmt, raw, report)
    if fmt == "pdparams":
        raw, report.mapped = paddle_to_canonical(raw)
        report.layout = "paddle"
    keys = list(raw)
    mapper = None
    if hf.is_hf_layout(keys):
        report.layout, mapper = "huggingface", hf.hf_to_canonical
    elif google.is_google_layout(keys):
        report.layout, mapper = "google", google.google_to_canonical
    try:
        if mapper is not None:
            raw, report.mapped = mapper(raw)
    except (KeyError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: cannot map the {report.layout} layout: {e}") from None
    return {k: as_tensor(v) for k, v in raw.items()}, report


def _check_claims(path: Path, raw: dict) -> None:
    """Every tensor is copied once on the way in: refuse tensors that add up to more than the input could hold.

    A pickle can name one small array under a thousand keys, and a torch view can stride 0 over one element: each
    reads in bytes and would copy out to gigabytes. Real files hold each tensor once (fp16 ones convert to 2x).
    """
    files = [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]
    size = sum(p.stat().st_size for p in files)
    budget = 4 * size + (1 << 20)
    total = 0
    for name, value in raw.items():
        total += 4 * (value.numel() if isinstance(value, torch.Tensor) else np.asarray(value).size)
        if total > budget:
            raise WeightsError(f"{path}: tensor {name!r} brings the tensors to {total} bytes as float32, more than "
                               f"{budget} for a {size}-byte input: shared or overlapping arrays?")  # fmt: skip


def _stated_heads(path: Path, fmt: str, raw: dict, report: LoadReport) -> None:
    """Where the source says how many heads its model had: a Hugging Face config.json, a Google .npz's query
    kernels, a PaddleClas file of a known name, or the architecture a vitzoo-written .safetensors carries."""
    import json
    import re

    from ..specs import SPECS
    from .containers import safetensors_metadata

    heads, by = None, ""
    if fmt == "huggingface":
        heads, by = hf.config_heads(path), f"{path / 'config.json'} (num_attention_heads)"
    elif google.is_google_layout(list(raw)):
        heads, by = google.stated_heads(raw), "its query kernels [D, heads, head_dim]"
    elif fmt == "pdparams":
        match = re.fullmatch(r"(.+)_pretrained\.pdparams", path.name)
        spec = SPECS.get(match.group(1)) if match else None
        if spec is not None:
            heads, by = spec.arch.num_heads, f"its name (PaddleClas's {spec.name})"
    elif fmt == "safetensors":
        try:
            arch = json.loads(safetensors_metadata(path).get("vitzoo_arch", "{}"))
        except ValueError:
            arch = {}
        if isinstance(arch, dict) and isinstance(arch.get("num_heads"), int):
            heads, by = arch["num_heads"], "its vitzoo metadata (vitzoo_arch)"
    report.num_heads, report.heads_stated_by = heads, by


def _check_heads(model: nn.Module, report: LoadReport) -> None:
    blocks = getattr(model, "blocks", None)
    ours = blocks[0].attn.num_heads if blocks else None
    if report.num_heads is not None and ours is not None and report.num_heads != ours:
        raise WeightsError(
            f"{report.source}: {report.heads_stated_by} states {report.num_heads} attention heads; "
            f"{_model_name(model)} has {ours}: the tensors fit, the model would compute something else"
        )


def _head_classes(state: dict[str, torch.Tensor]) -> int:
    return state["head.weight"].shape[0] if state["head.weight"].dim() == 2 else 0


def _fit(
    model: nn.Module, state: dict[str, torch.Tensor], report: LoadReport, method: str, new_head: bool
) -> dict[str, torch.Tensor]:
    """The model's full state dict with the checkpoint's tensors in it, or a WeightsError naming what does not fit."""
    own = model.state_dict()
    src = report.source
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    if missing or unexpected:
        what = []
        if missing:
            what.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            what.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:6])}{' ...' if len(unexpected) > 6 else ''}")
        hint = " (a distilled checkpoint and a plain model, or the reverse?)" if "dist_token" in missing + unexpected else ""
        raise WeightsError(f"{src}: does not match {_model_name(model)}: {'; '.join(what)}{hint}")
    heads_differ = any(state[k].shape != own[k].shape for k in HEADS if k in own)
    if heads_differ and not new_head and _head_classes(state) != model.num_classes:
        raise WeightsError(
            f"{src}: its head has {_head_classes(state)} classes, {_model_name(model)} {model.num_classes}: answers "
            "need the head the weights were trained with (a named model: --num-classes; new classes are for "
            "fine-tuning: vitzoo train --finetune)"
        )
    out = {}
    for name, target in own.items():
        value = state[name]
        if name in HEADS and heads_differ:
            out[name] = target
            report.dropped.append(name)
            continue
        if name == "pos_embed" and value.shape != target.shape and value.shape[-1] == target.shape[-1]:
            value = _resample(model, value, src, method)
            report.resampled.append(f"pos_embed {tuple(state[name].shape)} -> {tuple(value.shape)} ({method})")
        if value.shape != target.shape:
            raise WeightsError(
                f"{src}: tensor {name} has shape {tuple(value.shape)}, {_model_name(model)} needs {tuple(target.shape)}"
            )
        if not value.is_floating_point() and target.is_floating_point():
            raise WeightsError(f"{src}: tensor {name} holds {value.dtype}, not floating point")
        out[name] = value
    if report.dropped:
        report.notes.append(
            f"checkpoint has {_head_classes(state)} classes, model {model.num_classes}: head(s) left as initialised"
        )
    return out


def _resample(model: nn.Module, pos_embed: torch.Tensor, src: str, method: str) -> torch.Tensor:
    try:
        return resample_pos_embed(pos_embed, model.cfg.grid_size, model.num_prefix_tokens, method)
    except ValueError as e:
        raise WeightsError(f"{src}: cannot resample pos_embed: {e}") from None


def _model_name(model: nn.Module) -> str:
    return getattr(model, "model_name", type(model).__name__)


def load_weights(
    model: nn.Module, source: str | Path, pos_embed_resample: str = "timm", new_head: bool = True
) -> LoadReport:
    """Load a checkpoint (file, Hugging Face folder, or known name) into `model`, all or nothing. Returns a report.

    A pos_embed of another grid is resampled the way `pos_embed_resample` names: "timm" (timm's loader, the
    default) or "deit" (DeiT's fine-tune code); see `resample_pos_embed`. A head for another number of classes is
    left as initialised and the report says so (`new_head`, for fine-tuning); with new_head=False it is an error, as
    it must be wherever the model is to answer (eval, predict, serve).
    """
    from .hub import resolve

    if pos_embed_resample not in METHODS:
        raise ValueError(f"unknown pos_embed resampling {pos_embed_resample!r}; choose {', '.join(METHODS)}")
    path = resolve(source, _model_name(model))
    state, report = read_weights(path)
    report.source = str(source) if str(source) != str(path) else report.source
    _check_heads(model, report)
    full = _fit(model, state, report, pos_embed_resample, new_head)
    model.load_state_dict(full, strict=True)  # every shape was checked above: this cannot fail half-way
    report.loaded = len(full) - len(report.dropped)
    log.info("%s", report)
    return report
