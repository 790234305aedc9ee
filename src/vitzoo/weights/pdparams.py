"""PaddleClas .pdparams: a pickle of {name: numpy array}, read without PaddlePaddle and without running its code.

A pickle names functions to call when loaded. Real .pdparams files name only numpy's array reconstruction and
`_codecs.encode` (protocol 2 stores bytes that way); anything else is refused before it is imported.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
import struct
from pathlib import Path

import numpy as np

from .common import WeightsError

_BOOKKEEPING = ("StructuredToParameterName@@", "UnpackBigParamInfor@@")


def _latin1_encode(text, encoding="latin1"):
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, encoding)


def _allowed() -> dict:
    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own _reconstruct, whichever module holds it
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = _numpy_scalar
    return allowed


def _numpy_scalar(dtype, data=None):
    return np.frombuffer(data, dtype=dtype, count=1)[0]


class _RestrictedUnpickler(pickle.Unpickler):
    ALLOWED = _allowed()

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: not part of a weight file") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id: not part of a .pdparams file")


def read_pdparams(path: str | Path) -> dict[str, np.ndarray]:
    """{name: array} in Paddle's layout (Linear weights [in, out]), big-array splits joined, bookkeeping dropped."""
    path = Path(path)
    data = path.read_bytes()
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise WeightsError(f"{path}: unsafe or invalid pickle: {e}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError, struct.error) as e:
        raise WeightsError(f"{path}: truncated or corrupt .pdparams pickle: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: a .pdparams file holds a dict of arrays, found {type(obj).__name__}")
    return _join_big_params(path, obj)


def _join_big_params(path: Path, obj: dict) -> dict[str, np.ndarray]:
    """Paddle (protocol 2/3) splits arrays above 2^30 bytes into `name@@.0, name@@.1, ...` described by an info entry."""
    info = obj.get("UnpackBigParamInfor@@", {})
    out = {}
    for name, meta in info.items():
        try:
            parts = [np.asarray(obj[part]).ravel() for part in meta["slices"]]
            out[name] = np.concatenate(parts).reshape(meta["OriginShape"])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: broken big-array split for {name!r}: {e}") from None
    split_parts = {p for meta in info.values() for p in meta.get("slices", ())}
    for name, value in obj.items():
        if name in _BOOKKEEPING or name in split_parts:
            continue
        if not isinstance(value, np.ndarray):
            raise WeightsError(f"{path}: entry {name!r} is a {type(value).__name__}, not an array")
        out[name] = value
    return out


def paddle_to_canonical(raw: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Paddle's Linear stores weight as [in, out]: transpose every 2-D weight (conv weights are 4-D, norms 1-D)."""
    out, transposed = {}, []
    for name, value in raw.items():
        if value.ndim == 2 and name.endswith(".weight"):
            value = value.T
            transposed.append(name)
        out[name] = value
    return out, transposed
