"""PaddleClas .pdparams: a pickle of {name: numpy array}, read and written without PaddlePaddle.

A pickle names functions to call when loaded. Real .pdparams files name only numpy's array reconstruction and
`_codecs.encode` (protocol 2 stores bytes that way); anything else is refused before it is imported.
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
import struct
import uuid
from pathlib import Path

import numpy as np
import torch

from .common import WeightsError

_SPLIT_INFO = "UnpackBigParamInfor@@"  # paddle.framework.io_utils._unpack_saved_dict (protocol 2/3 only)
_BOOKKEEPING = ("StructuredToParameterName@@", _SPLIT_INFO)
_CORRUPT = (  # what a truncated or garbled pickle raises besides UnpicklingError
    EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError, OverflowError, struct.error,
)  # fmt: skip
_NUMERIC_KINDS = "fiub"  # float, int, uint, bool: an object or structured array is not a weight


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
    try:
        with open(path, "rb") as f:  # streamed: the file's bytes are never held beside the arrays
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise WeightsError(f"{path}: unsafe or invalid pickle: {e}") from None
    except _CORRUPT as e:
        raise WeightsError(f"{path}: truncated or corrupt .pdparams pickle: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: a .pdparams file holds a dict of arrays, found {type(obj).__name__}")
    return _join_big_params(path, obj)


def _join_big_params(path: Path, obj: dict) -> dict[str, np.ndarray]:
    """Join Paddle's big-array splits and drop its bookkeeping; every value left must be a numeric array.

    paddle.save with protocol 2 or 3 cuts each array of more than (2^30 - 1) // itemsize elements into 1-D pieces
    `name@@.0, name@@.1, ...` and records {name: {"OriginShape": shape, "slices": [piece names]}} under
    "UnpackBigParamInfor@@" (paddle.framework.io_utils._unpack_saved_dict; _pack_loaded_dict undoes it).
    """
    info = obj.get(_SPLIT_INFO, {})
    if not isinstance(info, dict):
        raise WeightsError(f"{path}: {_SPLIT_INFO!r} is a {type(info).__name__}, not a dict")
    out, pieces = {}, set()
    for name, meta in info.items():
        try:
            slices = list(meta["slices"])
            parts = [obj[part] for part in slices]
            if not all(isinstance(part, np.ndarray) for part in parts):
                raise TypeError("a piece is not an array")
            out[name] = np.concatenate([part.ravel() for part in parts]).reshape(meta["OriginShape"])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: broken big-array split for {name!r}: {type(e).__name__}: {e}") from None
        pieces.update(slices)
    for name, value in obj.items():
        if name in _BOOKKEEPING or name in pieces:
            continue
        if not isinstance(value, np.ndarray):
            raise WeightsError(f"{path}: entry {name!r} is a {type(value).__name__}, not an array")
        out[name] = value
    for name, value in out.items():
        if value.dtype.kind not in _NUMERIC_KINDS:
            raise WeightsError(f"{path}: entry {name!r} holds {value.dtype} values, not numbers")
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


def canonical_to_paddle(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The inverse of `paddle_to_canonical`: float32 arrays, 2-D weights transposed to Paddle's Linear [in, out]."""
    out = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
        array = value.detach().cpu().float().numpy()
        if array.ndim == 2 and name.endswith(".weight"):
            array = array.T
        out[name] = np.ascontiguousarray(array)
    return out


def write_pdparams(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write a canonical state dict as a .pdparams that `paddle.load` + PaddleClas's `set_state_dict` accept.

    A plain protocol-4 pickle of {name: float32 array}: paddle.load turns every array into a tensor and needs no
    bookkeeping entry (its "StructuredToParameterName@@" only restores Paddle's internal parameter names).
    Written beside the target and renamed over it, so `path` is never left half-written.
    """
    path = Path(path)
    arrays = canonical_to_paddle(state)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # same folder: os.replace is atomic there
    try:
        with open(temp, "xb") as f:
            pickle.dump(arrays, f, protocol=4)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path
