"""Hugging Face transformers ViT / DeiT checkpoints (folder with config.json, or a bare weights file).

CONTRACT (filled in by the weights-HF work):
- read_folder(path) -> dict[str, Tensor]: the raw tensors of a save_pretrained folder.
- is_hf_layout(keys) -> bool: the key names are transformers' hub names.
- hf_to_canonical(raw) -> (canonical dict, list of canonical names that were mapped).
"""

from __future__ import annotations

from pathlib import Path

from .common import WeightsError


def read_folder(path: Path) -> dict:
    raise WeightsError(f"{path}: Hugging Face folders are not supported yet")


def is_hf_layout(keys) -> bool:
    return any("embeddings.patch_embeddings" in k for k in keys)


def hf_to_canonical(raw: dict):
    raise ValueError("the Hugging Face layout is not supported yet")
