"""Read a weight file's container into a flat {name: array} dict, without running code from it.

The format is detected from the bytes, not trusted from the file name:
- torch zip (torch.save since 1.6) and legacy torch pickles: `torch.load(weights_only=True)`;
- safetensors: 8-byte little-endian header length, then a JSON header;
- npz (Google's ViT release): a zip of .npy files, read with `allow_pickle=False`;
- PaddleClas .pdparams: a pickle, read by the restricted unpickler in `pdparams.py`.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

from .common import WeightsError
from .pdparams import read_pdparams

# torch.save's legacy (non-zip) format starts with a pickled magic number: LONG1 of 10 bytes
_TORCH_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def sniff(path: Path) -> str:
    """'torch', 'safetensors', 'npz' or 'pdparams', from the file's content."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as e:
            raise WeightsError(f"{path}: a damaged zip archive (truncated or corrupt): {e}") from None
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        raise WeightsError(f"{path}: a zip archive that is neither a torch checkpoint nor an .npz ({names[:3]}...)")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch" if head[2:14] == _TORCH_LEGACY_MAGIC else "pdparams"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if not head:
        raise WeightsError(f"{path}: the file is empty")
    raise WeightsError(
        f"{path}: unknown weight format (first bytes {head[:8]!r}); expected a PaddleClas .pdparams, a torch "
        ".pth/.bin, a .safetensors or a Google .npz file, or a Hugging Face folder"
    )


def _read_torch(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as e:  # weights_only refuses any global outside torch's allow-list
        raise WeightsError(f"{path}: cannot be read as a torch checkpoint without running code from it: {e}") from None
    return obj


def safetensors_metadata(path: Path) -> dict:
    """The `__metadata__` of a safetensors file's header ({} if none); the header is size-checked by the reader."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:
                return {}
            meta = json.loads(f.read(size)).get("__metadata__") or {}
    except (OSError, struct.error, ValueError, UnicodeDecodeError, AttributeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        try:
            json.loads(f.read(size))
        except (ValueError, UnicodeDecodeError) as e:
            raise WeightsError(f"{path}: damaged safetensors header: {e}") from None
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: damaged safetensors file: {e}") from None


def _read_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise WeightsError(f"{path}: damaged .npz file: {e}") from None


READERS = {"torch": _read_torch, "safetensors": _read_safetensors, "npz": _read_npz, "pdparams": read_pdparams}


def read_container(path: str | Path) -> tuple[str, dict]:
    """(container format, raw object): for torch, whatever was saved (often a dict holding the state dict)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    kind = sniff(path)
    return kind, READERS[kind](path)
