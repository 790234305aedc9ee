"""PaddleClas .pdparams against PaddleClas itself: its model code under PaddlePaddle (CPU), its own save and load.

`import paddleclas` pulls in requests, opencv and more, so the two model files are imported on their own under a
synthetic package whose `utils.save_load` is a stub (they import `load_dygraph_pretrain` from there).
"""

import functools
import importlib
import importlib.metadata
import inspect
import math
import pickle
import sys
import types

import numpy as np
import pytest
import torch

import vitzoo
from vitzoo.weights.pdparams import read_pdparams, write_pdparams

from conftest import randomize_

paddle = pytest.importorskip("paddle")
try:  # found from its install record, not by import: other tests may put a bare `paddleclas` in sys.modules
    MODEL_ZOO = importlib.metadata.distribution("paddleclas").locate_file("paddleclas/ppcls/arch/backbone/model_zoo")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("paddleclas is not installed (pip install --no-deps paddleclas)", allow_module_level=True)

# model -> pickle protocols to save it with (protocol 2 stores arrays through _codecs.encode: slow for ViT_small)
MODELS = {"ViT_small_patch16_224": (4,), "DeiT_tiny_patch16_224": (4, 2), "DeiT_tiny_distilled_patch16_224": (4, 2)}
TOLERANCE = 1e-5  # PaddleClas under Paddle agrees to ~3e-6; a wrong LayerNorm eps moves logits ~1e-5
STUB = "_ppcls_models"  # synthetic top-level package standing in for paddleclas.ppcls


@functools.cache
def paddleclas_models() -> types.SimpleNamespace:
    """PaddleClas's vision_transformer and distilled_vision_transformer modules, without importing paddleclas."""

    def load_dygraph_pretrain(*args, **kwargs):
        raise RuntimeError("pretrained weights are not available in tests")

    for name in (STUB, f"{STUB}.arch", f"{STUB}.arch.backbone", f"{STUB}.arch.backbone.model_zoo", f"{STUB}.utils"):
        package = types.ModuleType(name)
        package.__path__ = [str(MODEL_ZOO)] if name.endswith("model_zoo") else []  # only model_zoo finds real files
        sys.modules[name] = package
    save_load = types.ModuleType(f"{STUB}.utils.save_load")
    save_load.load_dygraph_pretrain = load_dygraph_pretrain
    sys.modules[save_load.__name__] = save_load
    zoo = f"{STUB}.arch.backbone.model_zoo"
    return types.SimpleNamespace(
        vit=importlib.import_module(f"{zoo}.vision_transformer"),
        deit=importlib.import_module(f"{zoo}.distilled_vision_transformer"),
    )


def paddle_model(name: str):
    zoo = paddleclas_models()
    return getattr(zoo.vit if name.startswith("ViT") else zoo.deit, name)().eval()


def randomize_paddle_(model, seed: int = 0):
    """O(1) random weights, as conftest.randomize_ gives vitzoo's models (Paddle's Linear weight is [in, out])."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, p in model.state_dict().items():
        noise = rng.standard_normal(p.shape).astype(np.float32)
        leaf = name.rsplit(".", 1)[-1]
        if "norm" in name and leaf == "weight":
            value = 1 + 0.2 * noise
        elif leaf == "bias":
            value = 0.2 * noise
        elif len(p.shape) == 2 and leaf == "weight":  # Linear [in, out]: fan_in is the first axis
            value = noise / math.sqrt(p.shape[0])
        elif len(p.shape) == 4 and leaf == "weight":  # Conv2D [out, in, kh, kw], as in PyTorch
            value = noise / math.sqrt(np.prod(p.shape[1:]))
        else:  # pos_embed, cls_token, dist_token
            value = 0.5 * noise
        state[name] = value.astype(np.float32)
    set_state_strictly(model, state)
    return model


def set_state_strictly(model, state):
    missing, unexpected = model.set_state_dict(state)
    assert not missing and not unexpected, (missing, unexpected)


def paddle_logits(model, images: np.ndarray) -> np.ndarray:
    with paddle.no_grad():
        return model(paddle.to_tensor(images)).numpy()


def vitzoo_logits(model, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(images)).numpy()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)


# --- PaddleClas -> vitzoo --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("ViT") else n for n in MODELS])
def test_paddle_saved_file_gives_paddleclas_logits(name, images, tmp_path):
    reference = randomize_paddle_(paddle_model(name))
    expected = paddle_logits(reference, images)
    assert np.abs(expected).max() > 1.0  # O(1) logits: a wrong transpose, eps or scale would not hide
    for protocol in MODELS[name]:
        path = tmp_path / f"{name}_p{protocol}.pdparams"
        paddle.save(reference.state_dict(), str(path), protocol=protocol)
        assert path.read_bytes()[:2] == bytes([0x80, protocol])
        model = vitzoo.create_model(name, weights=path)
        assert model.load_report.format == "pdparams"
        assert model.load_report.loaded == len(model.state_dict())
        got = vitzoo_logits(model, images)
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE, err_msg=f"{name}, protocol {protocol}")


def lowered_split_limit(limit_bytes: int):
    """Paddle's own _unpack_saved_dict, recompiled with its 2^30-byte limit lowered so a small array is split."""
    from paddle.framework import io_utils

    source = inspect.getsource(io_utils._unpack_saved_dict)
    assert "2**30" in source, "Paddle's big-array split code changed: re-check pdparams._join_big_params"
    namespace = dict(vars(io_utils))
    exec(compile(source.replace("2**30", str(limit_bytes)), io_utils.__file__, "exec"), namespace)
    return namespace["_unpack_saved_dict"]


@pytest.mark.parametrize("protocol", [2, 3])
def test_big_array_split_written_by_paddle_is_joined(protocol, tmp_path, monkeypatch):
    from paddle.framework import io as paddle_io

    monkeypatch.setattr(paddle_io, "_unpack_saved_dict", lowered_split_limit(4000))  # ~1000 float32 elements
    layer = paddle.nn.Linear(48, 50)  # weight: 2400 float32 (9600 bytes) -> 3 pieces; bias: 50, kept whole
    path = tmp_path / "split.pdparams"
    paddle.save(layer.state_dict(), str(path), protocol=protocol)

    with open(path, "rb") as f:
        raw = pickle.load(f)  # our own file: what Paddle wrote, before anyone joins it
    info = raw["UnpackBigParamInfor@@"]
    assert list(info) == ["weight"] and info["weight"]["OriginShape"] == (48, 50)
    assert info["weight"]["slices"] == ["weight@@.0", "weight@@.1", "weight@@.2"]
    assert [raw[p].shape for p in info["weight"]["slices"]] == [(999,), (999,), (402,)]
    assert "weight" not in raw and "bias" in raw

    got = read_pdparams(path)
    expected = paddle.load(str(path), return_numpy=True)
    assert sorted(got) == sorted(expected) == ["bias", "weight"]
    for name in got:
        np.testing.assert_array_equal(got[name], expected[name])
    np.testing.assert_array_equal(got["weight"], layer.weight.numpy())


# --- vitzoo -> PaddleClas --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["DeiT_tiny_patch16_224", "DeiT_tiny_distilled_patch16_224"])
def test_written_pdparams_gives_vitzoo_logits_in_paddleclas(name, images, tmp_path):
    ours = randomize_(vitzoo.create_model(name)).eval()
    path = write_pdparams(ours.state_dict(), tmp_path / f"{name}.pdparams")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the temporary file is gone

    reference = paddle_model(name)
    set_state_strictly(reference, paddle.load(str(path)))
    np.testing.assert_allclose(
        paddle_logits(reference, images), vitzoo_logits(ours, images), rtol=0, atol=TOLERANCE
    )
    reloaded = vitzoo.create_model(name, weights=path)  # and back: the round trip is exact
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "w.pdparams"
    write_pdparams({"head.weight": torch.ones(3, 2)}, path)
    before = path.read_bytes()

    def fail_midway(obj, f, protocol):
        f.write(b"\x80\x04partial")
        raise OSError("disk full")

    monkeypatch.setattr(pickle, "dump", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        write_pdparams({"head.weight": torch.zeros(3, 2)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    monkeypatch.undo()
    np.testing.assert_array_equal(read_pdparams(path)["head.weight"], np.ones((2, 3), np.float32))


@pytest.mark.parametrize("protocol", [2, 4])
def test_truncated_pdparams_names_the_file(protocol, tmp_path):
    whole = tmp_path / "whole.pdparams"
    paddle.save(paddle.nn.LayerNorm(64).state_dict(), str(whole), protocol=protocol)
    data = whole.read_bytes()
    path = tmp_path / "cut.pdparams"
    for cut in sorted({len(data) // 2, *range(3, len(data) - 1, max(1, len(data) // 17))}):
        path.write_bytes(data[:cut])
        with pytest.raises(vitzoo.WeightsError) as err:
            read_pdparams(path)
        assert str(path) in str(err.value), cut
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(vitzoo.WeightsError, match="cut.pdparams"):
        vitzoo.read_weights(path)  # and through the public path, which sniffs the container first


@pytest.mark.parametrize(
    "content, problem",
    [
        ([np.zeros(3, np.float32)], "holds a dict of arrays, found list"),
        ({"x": np.array([1, "a"], dtype=object)}, "dtype object is not a number type"),  # refused as it is named
        ({"x": np.zeros(3), "UnpackBigParamInfor@@": [1]}, "is a list, not a dict"),
        ({"UnpackBigParamInfor@@": {"x": {"OriginShape": (4,), "slices": ["x@@.0"]}}}, "broken big-array split"),
    ],
)
def test_not_a_dict_of_arrays(content, problem, tmp_path):
    path = tmp_path / "odd.pdparams"
    path.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(vitzoo.WeightsError, match=problem) as err:
        read_pdparams(path)
    assert str(path) in str(err.value)
