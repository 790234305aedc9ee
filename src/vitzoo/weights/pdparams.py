"""PaddleClas .pdparams: a pickle of {name: numpy array}, read and written without PaddlePaddle.

A pickle names functions to call when loaded. Real .pdparams files name only numpy's array reconstruction and
`_codecs.encode` (protocol 2 stores bytes that way); anything else is refused before it is imported, and what is
allowed is wrapped so that it neither runs code nor allocates more than the file holds.
"""

from __future__ import annotations

import codecs
import collections
import math
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
_CORRUPT = (  # what a truncated or garbled pickle raises besides UnpicklingError (not MemoryError: that is a bug)
    EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError, struct.error,
)  # fmt: skip
_NUMERIC_KINDS = "fiub"  # float, int, uint, bool: an object or structured array is not a weight


def _latin1_encode(text, encoding="latin1"):
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, encoding)


class _NDArrayName:
    """Stands for numpy.ndarray in a pickle: numpy's pickles only name the class (as _reconstruct's argument);
    calling it would allocate whatever shape the file claims."""

    def __init__(self, *args, **kwargs):
        raise pickle.UnpicklingError("numpy.ndarray is named by array pickles, never called")


def _empty_array(cls, shape, dtype):
    """numpy's _reconstruct as its pickles call it, `(ndarray, (0,), b'b')`: an empty array that the pickle's
    BUILD then fills from bytes it holds (numpy checks they match the shape). Any other shape would allocate."""
    if cls is not _NDArrayName or tuple(shape) != (0,):
        raise pickle.UnpicklingError(f"numpy _reconstruct called as ({cls!r}, {shape!r}): not an array pickle")
    return np.ndarray((0,), np.uint8)


def _numeric_dtype(spec, align=False, copy=False):
    """numpy.dtype as array pickles call it: numbers only (no objects, no records, no sub-arrays)."""
    try:
        dtype = np.dtype(spec, align, copy)
    except (TypeError, ValueError) as e:
        raise pickle.UnpicklingError(f"bad dtype {spec!r}: {e}") from None
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"dtype {dtype} is not a number type")
    return dtype


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"numpy scalar of {dtype!r}: not a number")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


# The whole allow-list: what PaddleClas's files name, and nothing that runs code or allocates on a claim.
# tests/test_weights_safety.py pins it exactly.
ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): _NDArrayName,
    ("numpy", "dtype"): _numeric_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _empty_array,
    ("numpy._core.multiarray", "_reconstruct"): _empty_array,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("_codecs", "encode"): _latin1_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _BoundedFile:
    """The file as the unpickler reads it: a read longer than what is left is refused before any buffer is made
    (BINBYTES8 can claim 2**63 bytes in 9), and the whole file is never held at once."""

    def __init__(self, f, size: int):
        self._f, self._left = f, size

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._left
        if n > self._left:
            raise pickle.UnpicklingError(f"an item claims {n} bytes where {self._left} are left in the file")
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._f.readline(self._left)
        self._left -= len(line)
        return line


class _RestrictedUnpickler(pickle._Unpickler):
    """Python's own unpickler (pickle._Unpickler, not the C one): its memo is a dict, where the C unpickler's is an
    array that LONG_BINPUT 10**9 grows to gigabytes, and it reads counted items through _BoundedFile before
    allocating them."""

    ALLOWED = ALLOWED_GLOBALS

    def __init__(self, file: _BoundedFile, size: int, **kwargs):
        super().__init__(file, **kwargs)
        # what the allowed calls may make in all: protocol 2 stores each array twice (its _codecs.encode bytes,
        # then the array), so 3x the file; past it, one string encoded again and again through the memo
        self._budget = 3 * size + (1 << 20)

    def _charge(self, nbytes: int) -> None:
        self._budget -= nbytes
        if self._budget < 0:
            raise pickle.UnpicklingError("the pickle makes more than 3x its size in objects (a memo-reuse bomb?)")

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise pickle.UnpicklingError(f"refused global {module}.{name}: not part of a weight file") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id: not part of a .pdparams file")

    def load_build(self):
        """BUILD only as numpy's pickles use it, each state checked first: numpy's own __setstate__ trusts its input
        (an odd dtype state made it fail without an exception: SystemError)."""
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray:
            _check_array_state(state)
        elif isinstance(inst, np.dtype):
            _check_dtype_state(inst, state)
        else:
            raise pickle.UnpicklingError(f"refused BUILD of a {type(inst).__name__}: not part of a weight file")
        inst.__setstate__(state)
        if type(inst) is np.ndarray:
            self._charge(inst.nbytes)

    def load_reduce(self):
        pickle._Unpickler.load_reduce(self)
        made = self.stack[-1]
        self._charge(len(made) if isinstance(made, bytes) else 64 * len(made) if isinstance(made, dict) else 0)

    def refuse_out_of_band(self):
        """Protocol 5's buffers: BYTEARRAY8 makes (and zeroes) the bytearray it claims before reading it."""
        raise pickle.UnpicklingError("refused protocol-5 buffer opcode: not part of a .pdparams file")

    dispatch = {
        **pickle._Unpickler.dispatch,
        pickle.BUILD[0]: load_build,
        pickle.REDUCE[0]: load_reduce,
        pickle.BYTEARRAY8[0]: refuse_out_of_band,
        pickle.NEXT_BUFFER[0]: refuse_out_of_band,
        pickle.READONLY_BUFFER[0]: refuse_out_of_band,
    }


def _check_dtype_state(dtype: np.dtype, state) -> None:
    """A number dtype's pickled state: (3, byte order, None, None, None, -1, -1, flags), as numpy writes it."""
    if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|", "=")
            and state[2:7] == (None, None, None, -1, -1) and type(state[7]) is int):  # fmt: skip
        raise pickle.UnpicklingError(f"dtype {dtype} with state {state!r:.120}: not a number type's")


def _check_array_state(state) -> None:
    """An array's pickled state: (1, shape, number dtype, fortran order, its bytes), the bytes matching the shape."""
    try:
        version, shape, dtype, fortran, data = state
        ok = (version == 1 and isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)
              and isinstance(dtype, np.dtype) and dtype.kind in _NUMERIC_KINDS and type(fortran) is bool
              and isinstance(data, bytes) and len(data) == math.prod(shape) * dtype.itemsize)  # fmt: skip
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise pickle.UnpicklingError(f"array state {_describe(state)}: not a number array's, or its bytes do not "
                                     "match its shape")  # fmt: skip


def _describe(state) -> str:
    if isinstance(state, tuple) and len(state) == 5:
        version, shape, dtype, fortran, data = state
        size = len(data) if isinstance(data, (bytes, list)) else type(data).__name__
        return f"(version {version!r:.20}, shape {shape!r:.60}, dtype {dtype!r:.40}, {size} bytes)"
    return f"{state!r:.80}"


def read_pdparams(path: str | Path) -> dict[str, np.ndarray]:
    """{name: array} in Paddle's layout (Linear weights [in, out]), big-array splits joined, bookkeeping dropped."""
    path = Path(path)
    try:
        with open(path, "rb") as f:  # streamed: the file's bytes are never held beside the arrays
            size = os.fstat(f.fileno()).st_size
            obj = _RestrictedUnpickler(_BoundedFile(f, size), size, encoding="latin1").load()
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
            if len(set(slices)) != len(slices) or pieces.intersection(slices):
                raise ValueError("a piece is named twice")  # each piece once, or a small file joins to gigabytes
            parts = [obj[part] for part in slices]
            if not all(isinstance(part, np.ndarray) and part.dtype.kind in _NUMERIC_KINDS for part in parts):
                raise TypeError("a piece is not an array of numbers")
            shape = tuple(int(n) for n in meta["OriginShape"])
            if math.prod(shape) != sum(part.size for part in parts) or min(shape, default=0) < 0:
                raise ValueError(f"pieces of {sum(part.size for part in parts)} elements for shape {shape}")
            out[name] = np.concatenate([part.ravel() for part in parts]).reshape(shape)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
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
