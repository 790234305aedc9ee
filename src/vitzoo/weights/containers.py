"""Read a weight file's container into a flat {name: array} dict, without running code from it.

The format is detected from the bytes, not trusted from the file name:
- torch zip (torch.save since 1.6) and legacy torch pickles: `torch.load(weights_only=True)`;
- safetensors: 8-byte little-endian header length, then a JSON header;
- npz (Google's ViT release): a zip of .npy files, read with `allow_pickle=False`;
- PaddleClas .pdparams: a pickle, read by the restricted unpickler in `pdparams.py`.
"""

from __future__ import annotations

import json
import math
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .common import WeightsError
from .pdparams import read_pdparams

# torch.save's legacy (non-zip) format starts with a pickled magic number: LONG1 of 10 bytes
_TORCH_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# what a damaged zip raises besides BadZipFile: unsupported or encrypted members, bad deflate streams, bad sizes
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError,
               struct.error, OverflowError, KeyError, IndexError)  # fmt: skip
# weights barely compress (float noise), torch and np.savez store: members may inflate to this many times the
# archive, plus a constant; a deflate bomb (1000x) of any size that matters is refused before it is inflated
_ZIP_INFLATION, _ZIP_SLACK = 64, 64 << 20
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit
_SAFETENSORS_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2,
    "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


def sniff(path: Path) -> str:
    """'torch', 'safetensors', 'npz' or 'pdparams', from the file's content."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                _check_inflation(path, zf)
        except _ZIP_ERRORS as e:
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


def _check_inflation(path: Path, zf: zipfile.ZipFile) -> None:
    """Refuse an archive whose members claim to inflate to far more than the archive: before anything inflates."""
    size = path.stat().st_size
    claimed = 0
    for info in zf.infolist():
        claimed += info.file_size
        if claimed > _ZIP_INFLATION * size + _ZIP_SLACK:
            raise WeightsError(
                f"{path}: zip member {info.filename!r} claims {info.file_size} bytes; the members would inflate to "
                f"more than {_ZIP_INFLATION}x the {size}-byte archive (a zip bomb?)"
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
            if size > _SAFETENSORS_MAX_HEADER:
                return {}
            meta = json.loads(f.read(size)).get("__metadata__") or {}
    except (OSError, struct.error, ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _check_safetensors_header(path: Path) -> None:
    """The header's length and every tensor's extent checked against the file before anything is read or made."""
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > min(_SAFETENSORS_MAX_HEADER, file_size - 8):
            raise WeightsError(f"{path}: the safetensors header claims {size} bytes; the file has {file_size - 8} "
                               f"after the length (and headers stop at {_SAFETENSORS_MAX_HEADER})")  # fmt: skip
        try:
            header = json.loads(f.read(size))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise WeightsError(f"{path}: damaged safetensors header: {type(e).__name__}: {e}") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: damaged safetensors header: a JSON {type(header).__name__}, not an object")
    data_size = file_size - 8 - size
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            itemsize = _SAFETENSORS_DTYPES[entry["dtype"]]
            shape, (begin, end) = entry["shape"], entry["data_offsets"]
            if not all(type(n) is int and n >= 0 for n in (*shape, begin, end)):
                raise ValueError("shape and offsets must be non-negative integers")
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: tensor {name!r}: bad safetensors entry {entry!r:.200}: {e!r}") from None
        if not begin <= end <= data_size or end - begin != math.prod(shape) * itemsize:
            raise WeightsError(f"{path}: tensor {name!r} {entry['dtype']}{shape} claims bytes [{begin}, {end}) of "
                               f"the {data_size} bytes of data")  # fmt: skip


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _check_safetensors_header(path)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: damaged safetensors file: {e}") from None


def _read_npz(path: Path) -> dict:
    """Each member's .npy header is read and checked against the member's size before its array is made (`sniff`,
    which every read passes first, has checked what the members claim to inflate to)."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as f:
                    arrays[info.filename.removesuffix(".npy")] = _read_npy(path, info, f)
    except WeightsError:
        raise
    except _ZIP_ERRORS as e:
        raise WeightsError(f"{path}: damaged .npz file: {type(e).__name__}: {e}") from None
    return arrays


def _read_npy(path: Path, info: zipfile.ZipInfo, f) -> np.ndarray:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise WeightsError(f"{path}: member {info.filename!r}: .npy version {version} is not supported")
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    try:  # numpy parses the header as a Python literal: a garbled one raises the tokenizer's and parser's errors
        shape, fortran_order, dtype = read_header(f, max_header_size=10_000)
    except (ValueError, SyntaxError, tokenize.TokenError, TypeError, RecursionError) as e:
        raise WeightsError(f"{path}: member {info.filename!r}: bad .npy header: {type(e).__name__}: {e}") from None
    if dtype.hasobject or dtype.kind not in "fiubc":
        raise WeightsError(f"{path}: member {info.filename!r} holds {dtype} values, not numbers")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != info.file_size - f.tell():
        raise WeightsError(f"{path}: member {info.filename!r} claims {dtype}{list(shape)} ({nbytes} bytes) and "
                           f"holds {info.file_size - f.tell()} bytes")  # fmt: skip
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise WeightsError(f"{path}: member {info.filename!r} is truncated ({len(data)} of {nbytes} bytes)")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran_order else "C")  # as_tensor copies


READERS = {"torch": _read_torch, "safetensors": _read_safetensors, "npz": _read_npz, "pdparams": read_pdparams}


def read_container(path: str | Path) -> tuple[str, dict]:
    """(container format, raw object): for torch, whatever was saved (often a dict holding the state dict)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    kind = sniff(path)
    return kind, READERS[kind](path)
