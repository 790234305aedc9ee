"""Weight files are untrusted input: what the .pdparams unpickler allows, payloads that try to run code through
it, and resource bombs in every container refused before the memory they claim is allocated.

The allow-list is pinned exactly: a review once added builtins.exec, builtins.getattr and subprocess.run to it and
every payload test still passed (each tried one name that stayed refused), while a protocol-4 pickle calling exec ran.
"""

import builtins
import collections
import io
import math
import pickle
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import vitzoo
from vitzoo.weights import pdparams
from vitzoo.weights.containers import read_container
from vitzoo.weights.pdparams import read_pdparams

MB = 1 << 20


# --- the allow-list ----------------------------------------------------------------------------------------------------
def test_the_allow_list_is_exactly_this():
    expected = {
        ("numpy", "ndarray"): pdparams._NDArrayName,
        ("numpy", "dtype"): pdparams._numeric_dtype,
        ("numpy.core.multiarray", "_reconstruct"): pdparams._empty_array,
        ("numpy._core.multiarray", "_reconstruct"): pdparams._empty_array,
        ("numpy.core.multiarray", "scalar"): pdparams._numpy_scalar,
        ("numpy._core.multiarray", "scalar"): pdparams._numpy_scalar,
        ("_codecs", "encode"): pdparams._latin1_encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    allowed = pdparams._RestrictedUnpickler.ALLOWED
    assert allowed is pdparams.ALLOWED_GLOBALS
    assert set(allowed) == set(expected), "the allow-list changed: every addition needs a reason and a test"
    for key, value in expected.items():
        assert allowed[key] is value, key
    # the real numpy callables are wrapped, never handed to the pickle
    assert np.ndarray not in allowed.values() and np.dtype not in allowed.values()
    assert np.ndarray.__reduce__(np.zeros(1))[0] not in allowed.values()


def test_the_unpickler_is_pythons_own_and_consults_only_the_allow_list(monkeypatch):
    """find_class is the only door: subclassing the pure-Python unpickler keeps the memo a dict (see bombs)."""
    assert issubclass(pdparams._RestrictedUnpickler, pickle._Unpickler)
    monkeypatch.setattr(pdparams._RestrictedUnpickler, "ALLOWED", {})
    with pytest.raises(pickle.UnpicklingError, match="refused global numpy.dtype"):
        pdparams._RestrictedUnpickler(io.BytesIO(b""), 0).find_class("numpy", "dtype")


# --- payloads ----------------------------------------------------------------------------------------------------------
def _text(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _ref(module: str, name: str, opcode: str) -> bytes:
    if opcode == "GLOBAL":
        return b"c" + f"{module}\n{name}\n".encode()
    return _text(module) + _text(name) + b"\x93"  # STACK_GLOBAL


def _call(callee: bytes, *args: bytes) -> bytes:
    return callee + b"(" + b"".join(args) + b"tR"  # MARK args TUPLE, REDUCE


def _wrap(value: bytes, opcode: str) -> bytes:
    head = b"\x80\x02" if opcode == "GLOBAL" else b"\x80\x04"
    return head + b"}" + _text("x") + value + b"s."  # {'x': value}


def calling_pickle(module: str, name: str, args: tuple, opcode: str) -> bytes:
    """{'x': module.name(*args)} as a pickle that finds the callable with GLOBAL (protocol 2) or STACK_GLOBAL (4)."""
    return _wrap(_call(_ref(module, name, opcode), *(_text(a) for a in args)), opcode)


def via_getattr(module: str, attribute: str, arg: str, opcode: str) -> bytes:
    """{'x': getattr(__import__(module), attribute)(arg)}: reaching a callable no allow-list names."""
    imported = _call(_ref("builtins", "__import__", opcode), _text(module))
    fetched = _call(_ref("builtins", "getattr", opcode), imported, _text(attribute))
    return _wrap(_call(fetched, _text(arg)), opcode)


@pytest.mark.parametrize("opcode", ["GLOBAL", "STACK_GLOBAL"])
def test_the_payloads_are_live(opcode, tmp_path):
    """The pickles below really run what they name when an ordinary unpickler reads them."""
    assert pickle.loads(calling_pickle("builtins", "len", ("abc",), opcode)) == {"x": 3}
    marker = tmp_path / "ran"
    pickle.loads(via_getattr("pathlib", "Path", str(marker), opcode))["x"].touch()
    assert marker.exists()


def _payloads(marker, script):
    touch_code = f"open({str(marker)!r}, 'w').close()"
    shell = f"touch '{marker}'"
    return {
        "builtins.exec": ("builtins", "exec", (touch_code,)),
        "builtins.eval": ("builtins", "eval", (touch_code,)),
        "builtins.compile": ("builtins", "compile", (touch_code, "<x>", "exec")),
        "builtins.__import__": ("builtins", "__import__", ("antigravity",)),
        "builtins.getattr": ("builtins", "getattr", ("os", "system")),
        "builtins.open": ("builtins", "open", (str(marker), "w")),
        "os.system": ("os", "system", (shell,)),
        "os.popen": ("os", "popen", (shell,)),
        "os.execv": ("os", "execv", (str(script), str(script))),
        "posix.system": ("posix", "system", (shell,)),
        "subprocess.run": ("subprocess", "run", (str(script),)),
        "subprocess.Popen": ("subprocess", "Popen", (str(script),)),
        "subprocess.call": ("subprocess", "call", (str(script),)),
        "subprocess.check_output": ("subprocess", "check_output", (str(script),)),
        "subprocess.getoutput": ("subprocess", "getoutput", (shell,)),
        "importlib.import_module": ("importlib", "import_module", ("antigravity",)),
        "runpy.run_path": ("runpy", "run_path", (str(script.with_suffix(".py")),)),
        "runpy.run_module": ("runpy", "run_module", ("antigravity",)),
        "pickle.loads": ("pickle", "loads", ("x",)),
        "numpy.load": ("numpy", "load", (str(marker),)),
        "torch.load": ("torch", "load", (str(marker),)),
        "shutil.rmtree": ("shutil", "rmtree", (str(marker.parent),)),
    }


PAYLOAD_NAMES = list(_payloads(Path("marker"), Path("script.sh")))


@pytest.fixture
def marker_and_script(tmp_path):
    marker = tmp_path / "ran"
    script = tmp_path / "payload.sh"
    script.write_text(f"#!/bin/sh\ntouch '{marker}'\n")
    script.chmod(0o755)
    script.with_suffix(".py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return marker, script


@pytest.mark.parametrize("opcode", ["GLOBAL", "STACK_GLOBAL"])
@pytest.mark.parametrize("target", PAYLOAD_NAMES)
def test_code_in_a_pdparams_is_refused_not_run(target, opcode, marker_and_script, tmp_path, monkeypatch):
    marker, script = marker_and_script
    module, name, args = _payloads(marker, script)[target]
    path = tmp_path / "evil.pdparams"
    path.write_bytes(calling_pickle(module, name, args, opcode))
    calls = []
    monkeypatch.setattr(builtins, "__import__", _spy(builtins.__import__, calls))
    with pytest.raises(vitzoo.WeightsError) as err:
        vitzoo.read_weights(path)
    assert str(path) in str(err.value) and f"refused global {target}" in str(err.value)
    assert not marker.exists()
    assert "antigravity" not in calls  # nothing the pickle named was even imported


def _spy(real, calls):
    def spying_import(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    return spying_import


@pytest.mark.parametrize("opcode", ["GLOBAL", "STACK_GLOBAL"])
@pytest.mark.parametrize("module, attribute", [("os", "system"), ("subprocess", "getoutput"), ("posix", "system")])
def test_getattr_chains_are_refused(module, attribute, opcode, marker_and_script, tmp_path):
    marker, _ = marker_and_script
    path = tmp_path / "chain.pdparams"
    path.write_bytes(via_getattr(module, attribute, f"touch '{marker}'", opcode))
    with pytest.raises(vitzoo.WeightsError, match="refused global builtins"):
        read_pdparams(path)
    assert not marker.exists()


@pytest.mark.parametrize("opcode", ["GLOBAL", "STACK_GLOBAL"])
def test_allowed_names_cannot_be_turned_into_calls(opcode, tmp_path):
    """What is allowed is wrapped: ndarray cannot be called, _reconstruct makes only empty arrays, dtype only numbers,
    _codecs.encode only latin1."""
    path = tmp_path / "odd.pdparams"
    cases = [
        (_call(_ref("numpy", "ndarray", opcode), b"(J\x00\xca\x9a\x3bt"), "never called"),  # ndarray((10**9,))
        (_call(_ref("numpy.core.multiarray", "_reconstruct", opcode), _ref("numpy", "ndarray", opcode),
               b"(J\x00\xca\x9a\x3bt", _text("b")), "not an array pickle"),  # fmt: skip
        (_call(_ref("numpy", "dtype", opcode), _text("O")), "not a number type"),
        (_call(_ref("_codecs", "encode", opcode), _text("abc"), _text("utf-8")), "encoding"),
    ]
    for value, message in cases:
        path.write_bytes(_wrap(value, opcode))
        with pytest.raises(vitzoo.WeightsError, match=message) as err:
            read_pdparams(path)
        assert str(path) in str(err.value)
    path.write_bytes(calling_pickle("_codecs", "encode", ("abc", "latin1"), opcode))  # how protocol 2 stores bytes
    with pytest.raises(vitzoo.WeightsError, match="'x' is a bytes, not an array"):
        read_pdparams(path)


# --- resource bombs: refused before the memory they claim is allocated ---------------------------------------------------
def refused_within(path, limit_bytes: int, match: str):
    """read_weights(path) raises WeightsError naming the file and `match`, Python/numpy allocating < limit_bytes."""
    tracemalloc.start()
    try:
        with pytest.raises(vitzoo.WeightsError, match=match) as err:
            vitzoo.read_weights(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(err.value)
    assert peak < limit_bytes, f"allocated {peak / MB:.0f} MB before refusing"
    return err.value


def _array_state(shape, data: bytes, opcode="GLOBAL") -> bytes:
    """numpy's own pickle of an array, its BUILD state claiming `shape` over `data` (float32)."""
    ndarray = _ref("numpy", "ndarray", opcode)
    empty = _call(_ref("numpy.core.multiarray", "_reconstruct", opcode), ndarray, b"K\x00\x85", b"C\x01b")
    dtype = _call(_ref("numpy", "dtype", opcode), _text("f4"), b"\x89\x88")
    dtype += b"(K\x03" + _text("<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # dtype BUILD state
    shape_op = b"(" + b"".join(b"\x8a\x08" + struct.pack("<q", n) for n in shape) + b"t"
    state = b"(K\x01" + shape_op + dtype + b"\x89" + b"B" + struct.pack("<I", len(data)) + data + b"tb"
    return _wrap(empty + state, opcode)


def test_the_array_pickle_builder_is_numpys_format(tmp_path):
    path = tmp_path / "ok.pdparams"
    path.write_bytes(_array_state((2, 2), np.arange(4, dtype=np.float32).tobytes()))
    np.testing.assert_array_equal(read_pdparams(path)["x"], np.arange(4, dtype=np.float32).reshape(2, 2))
    assert pickle.loads(path.read_bytes())["x"].shape == (2, 2)  # the same bytes through numpy's real functions


@pytest.mark.parametrize("opcode", ["GLOBAL", "STACK_GLOBAL"])
def test_pdparams_claiming_10_to_the_12_elements(opcode, tmp_path):
    path = tmp_path / "bomb.pdparams"
    path.write_bytes(_array_state((10**6, 10**6), b"\0" * 16, opcode))
    refused_within(path, 16 * MB, "do not match its shape")


def test_pdparams_counted_bytes_past_the_end(tmp_path):
    """BINBYTES8 claiming 4 GB in a 40-byte file: the C unpickler allocates the 4 GB first, then finds the end."""
    path = tmp_path / "bomb.pdparams"
    path.write_bytes(b"\x80\x04}" + _text("x") + b"\x8e" + struct.pack("<Q", 4 << 30) + b"abc" + b"s.")
    refused_within(path, 16 * MB, "claims 4294967296 bytes")


def test_pdparams_bytearray_claiming_13_gb(tmp_path):
    """BYTEARRAY8 (protocol 5): even Python's own unpickler makes and zeroes the bytearray before reading it
    (found by fuzzing: a 50-byte file, 13.6 GB resident)."""
    path = tmp_path / "bomb.pdparams"
    path.write_bytes(b"\x80\x05}" + _text("x") + b"\x96" + struct.pack("<Q", 13 << 30) + b"abc" + b"s.")
    refused_within(path, 16 * MB, "protocol-5 buffer")


def test_pdparams_one_string_encoded_again_and_again(tmp_path):
    """_codecs.encode is allowed (protocol 2 stores bytes through it); through the memo a 1 MB string is encoded
    2000 times in 24 KB more of pickle: 2 GB of bytes."""
    big = "a" * MB
    data = b"\x80\x02}(" + _text("k0") + b"c_codecs\nencode\nq\x01" + _text(big) + b"q\x02" + _text("latin1")
    data += b"q\x03\x86R" + b"".join(_text(f"k{i}") + b"h\x01h\x02h\x03\x86R" for i in range(1, 2000)) + b"u."
    path = tmp_path / "bomb.pdparams"
    path.write_bytes(data)
    refused_within(path, 32 * MB, "memo-reuse bomb")


@pytest.mark.slow
def test_pdparams_memo_index_far_out(tmp_path):
    """LONG_BINPUT 10**8 in 8 bytes: the C unpickler's memo is an array it grows to 10**8 slots (800 MB, zeroed)."""
    data = b"\x80\x02}r" + struct.pack("<I", 10**8) + b"."
    path = tmp_path / "bomb.pdparams"
    path.write_bytes(data)
    peaks = []
    for read in (lambda: pickle.loads(data), lambda: read_pdparams(path)):  # the C unpickler, then vitzoo's
        tracemalloc.start()
        try:
            assert read() == {}
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[0] > 400 * MB, "the bomb is real"
    assert peaks[1] < 16 * MB


def test_pdparams_one_array_under_many_names(tmp_path):
    """Read in 1 MB, copied out under 5000 names: 20 GB. The memo lets a pickle name one array again and again."""
    path = tmp_path / "bomb.pdparams"
    one = np.zeros(MB // 4, np.float32)
    path.write_bytes(pickle.dumps({f"n{i}": one for i in range(5000)}, protocol=2))  # pickle writes it once
    assert path.stat().st_size < 2 * MB
    refused_within(path, 64 * MB, "more than")


def test_pdparams_big_array_pieces_named_twice(tmp_path):
    path = tmp_path / "bomb.pdparams"
    piece = np.zeros(MB // 4, np.float32)
    obj = {"w@@.0": piece, "UnpackBigParamInfor@@": {"w": {"OriginShape": (1000, MB // 4), "slices": ["w@@.0"] * 1000}}}
    path.write_bytes(pickle.dumps(obj, protocol=2))
    refused_within(path, 64 * MB, "named twice")


def _npz(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _npy_header(shape, descr="<f4") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}".encode()
    header += b" " * (63 - len(header) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def test_npz_member_claiming_10_to_the_12_elements(tmp_path):
    path = tmp_path / "bomb.npz"
    path.write_bytes(_npz({"cls.npy": _npy_header((10**6, 10**6)) + b"\0" * 64}))
    refused_within(path, 16 * MB, r"claims float32\[1000000, 1000000\]")


def test_npz_header_builder_is_numpys_format(tmp_path):
    path = tmp_path / "ok.npz"
    path.write_bytes(_npz({"cls.npy": _npy_header((2,)) + np.ones(2, np.float32).tobytes()}))
    assert np.load(path)["cls"].tolist() == [1.0, 1.0]
    assert read_container(path)[1]["cls"].tolist() == [1.0, 1.0]  # and vitzoo's own reader agrees


@pytest.mark.parametrize("container", ["npz", "torch"])
def test_zip_member_that_inflates_to_gigabytes(container, tmp_path):
    """A deflated member of 256 MB of zeros is a 250 KB file: refused from the zip directory, before inflating."""
    zeros = bytes(256 * MB)
    name = "cls.npy" if container == "npz" else "archive/data/0"
    members = {name: _npy_header((64 * MB,)) + zeros} if container == "npz" else {"archive/data.pkl": b"", name: zeros}
    path = tmp_path / f"bomb.{container}"
    path.write_bytes(_npz(members, zipfile.ZIP_DEFLATED))
    del zeros, members
    assert path.stat().st_size < 2 * MB
    refused_within(path, 16 * MB, "zip bomb")


def _safetensors(header: dict, data: bytes = b"", claimed_length: int | None = None) -> bytes:
    raw = __import__("json").dumps(header).encode()
    return struct.pack("<Q", len(raw) if claimed_length is None else claimed_length) + raw + data


def test_safetensors_header_length_of_1_gb(tmp_path):
    path = tmp_path / "bomb.safetensors"
    path.write_bytes(_safetensors({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, 1 << 30))
    refused_within(path, 16 * MB, "header claims 1073741824 bytes")


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}, "claims bytes"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}, "claims bytes"),  # past the end
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, "claims bytes"),  # shape and extent disagree
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "non-negative"),
        ({"dtype": "OBJ", "shape": [1], "data_offsets": [0, 4]}, "bad safetensors entry"),
    ],
)
def test_safetensors_offsets_checked_before_reading(entry, message, tmp_path):
    path = tmp_path / "bomb.safetensors"
    path.write_bytes(_safetensors({"patch_embed.proj.weight": entry}, b"\0" * 4))
    err = refused_within(path, 16 * MB, message)
    assert "patch_embed.proj.weight" in str(err)


def test_torch_view_striding_over_one_element(tmp_path):
    """torch.save keeps a view's storage (4 bytes) and its stride 0: loaded, it is 10**10 elements to copy."""
    path = tmp_path / "bomb.pth"
    torch.save({"pos_embed": torch.zeros(1).expand(10**5, 10**5)}, path)
    assert path.stat().st_size < 4096
    refused_within(path, 16 * MB, "'pos_embed' brings the tensors")


def test_the_budget_leaves_real_files_alone(tmp_path):
    """fp16 files convert to twice their size, and a tensor viewed twice (tied weights) stays within budget."""
    model = vitzoo.create_model("DeiT_tiny_patch16_224", num_classes=3, img_size=32, depth=1)
    path = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    vitzoo.load_weights(model, path)
    assert math.isfinite(float(model.head.weight.sum()))
