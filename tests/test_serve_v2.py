"""The Open Inference Protocol (KServe v2) of `vitzoo serve`, spoken to by a client no one here wrote: Triton's
`tritonclient.http`. Health, metadata, and inference with both input kinds (a preprocessed FP32 tensor, BYTES of
encoded images), each as JSON and as binary data; the answers equal `vitzoo predict`'s. Bad requests get a 4xx with
the protocol's error JSON, and the server serves on."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from test_serve import NAME, PHOTOS, assert_same_top, server, weights  # noqa: E402,F401

import vitzoo  # noqa: E402

PHOTO_NAMES = ["astronaut.png", "rocket.jpg", "chelsea.png"]


@pytest.fixture(scope="module")
def client(server):  # noqa: F811
    with httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}") as c:
        yield c


@pytest.fixture(scope="module")
def expected(weights):  # noqa: F811
    """What `vitzoo predict` answers for each photograph (its top-5), and the model's fp32 logits of them."""
    import torch

    model = vitzoo.create_model(NAME, weights=str(weights)).eval()
    transform = vitzoo.eval_transform(NAME)
    records = vitzoo.predict(model, [PHOTOS / p for p in PHOTO_NAMES], transform, top_k=5)
    images = torch.stack([transform(PHOTOS / p) for p in PHOTO_NAMES])
    with torch.no_grad():
        logits = model(images).numpy()
    return [r["top"] for r in records], logits, images.numpy()


def top_of(result, k=5) -> list[list[dict]]:
    indices = result.as_numpy("top_k_indices")
    probabilities = result.as_numpy("top_k_probabilities")
    labels = result.as_numpy("top_k_labels")
    return [[{"index": int(i), "label": (lab.decode() if isinstance(lab, bytes) else lab), "probability": float(p)}
             for i, p, lab in zip(ri, rp, rl)] for ri, rp, rl in zip(indices, probabilities, labels)]  # fmt: skip


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    meta = client.get_server_metadata()
    assert meta["name"] == "vitzoo" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata(NAME)
    assert model["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert [o["name"] for o in model["outputs"]] == ["logits", "probabilities", "top_k_indices", "top_k_probabilities",
                                                     "top_k_labels"]  # fmt: skip
    pre = model["parameters"]["preprocessing"]
    assert (pre["resize_short"], pre["crop"], pre["interpolation"]) == (256, 224, "pil_bicubic")
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_fp32_tensors_give_the_models_logits_and_predicts_top_k(client, expected, binary):
    tops, logits, images = expected
    tensor = httpclient.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary)
               for name in ("logits", "top_k_indices", "top_k_probabilities", "top_k_labels")]  # fmt: skip
    result = client.infer(NAME, [tensor], outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("logits"), logits, atol=1e-4, rtol=0)
    for served, top in zip(top_of(result), tops):
        assert_same_top(served, top)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json-base64"])
def test_bytes_of_encoded_images_are_preprocessed_as_predict_does(client, expected, binary):
    tops, _, _ = expected
    encoded = [(PHOTOS / p).read_bytes() for p in PHOTO_NAMES]
    if not binary:  # JSON carries text: the images base64-encoded, as OpenVINO Model Server takes them
        encoded = [base64.b64encode(e) for e in encoded]
    tensor = httpclient.InferInput("images", [len(encoded)], "BYTES")
    tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=binary)
    result = client.infer(NAME, [tensor], outputs=[httpclient.InferRequestedOutput("top_k_indices"),
                                                   httpclient.InferRequestedOutput("top_k_probabilities"),
                                                   httpclient.InferRequestedOutput("top_k_labels")])  # fmt: skip
    for served, top in zip(top_of(result), tops):
        assert_same_top(served, top)


def test_top_k_and_all_outputs_by_default(server):  # noqa: F811
    body = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                        "data": [{"b64": base64.b64encode((PHOTOS / "coffee.png").read_bytes()).decode()}]}],
            "parameters": {"top_k": 3}}  # fmt: skip
    answer = server.client.post(f"/v2/models/{NAME}/infer", json=body)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert set(outputs) == {"logits", "probabilities", "top_k_indices", "top_k_probabilities", "top_k_labels"}
    assert outputs["top_k_indices"]["shape"] == [1, 3] and outputs["logits"]["shape"] == [1, 1000]
    assert sum(outputs["probabilities"]["data"]) == pytest.approx(1, abs=1e-4)


def raw_infer(server, header: dict, binary: bytes = b"", length: int | None = None):  # noqa: F811
    head = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(head) if length is None else length),
               "Content-Type": "application/octet-stream"}  # fmt: skip
    return server.client.post(f"/v2/models/{NAME}/infer", content=head + binary, headers=headers)


def test_bad_requests_get_the_protocols_error_and_the_server_serves_on(server, client):  # noqa: F811
    image = np.zeros((1, 3, 224, 224), dtype="<f4")
    fp32 = {"name": "images", "shape": [1, 3, 224, 224], "datatype": "FP32"}
    cases = {
        "wrong shape": (raw_infer(server, {"inputs": [{**fp32, "shape": [1, 3, 32, 32],
                                                       "parameters": {"binary_data_size": 12288}}]},
                                  np.zeros(3 * 32 * 32, "<f4").tobytes()), 400, "must have shape [N, 3, 224, 224]"),
        "wrong dtype": (raw_infer(server, {"inputs": [{**fp32, "datatype": "INT8", "data": [0]}]}), 400, "FP32 or BYTES"),
        "short binary": (raw_infer(server, {"inputs": [{**fp32, "parameters": {"binary_data_size": 100}}]},
                                   image.tobytes()[:100]), 400, "bytes of binary data for 150528 FP32 values"),
        "lying header length": (raw_infer(server, {"inputs": [fp32]}, b"", length=10**6), 400,
                                "does not fit a body"),
        "bytes left over": (raw_infer(server, {"inputs": [{**fp32, "parameters": {"binary_data_size": image.nbytes}}]},
                                      image.tobytes() + b"xx"), 400, "belong to no input"),
        "BYTES claiming too much": (raw_infer(server, {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                                                                   "parameters": {"binary_data_size": 8}}]},
                                              struct.pack("<I", 1000) + b"abcd"), 400, "1000 bytes claimed"),
        "BYTES not an image": (raw_infer(server, {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                                                              "parameters": {"binary_data_size": 9}}]},
                                         struct.pack("<I", 5) + b"hello"), 400, "not an image"),
        "unknown output": (server.client.post(f"/v2/models/{NAME}/infer", json={
            "inputs": [{**fp32, "data": image.reshape(-1).tolist()}], "outputs": [{"name": "features"}]}), 400,
            "unknown output 'features'"),
        "unknown model": (server.client.post("/v2/models/resnet50/infer", json={"inputs": []}), 404,
                          "unknown model 'resnet50'"),
        "not JSON": (server.client.post(f"/v2/models/{NAME}/infer", content=b"{nope"), 400, "cannot be read"),
        "no inputs": (server.client.post(f"/v2/models/{NAME}/infer", json={"outputs": []}), 400, "'inputs' must be"),
        "NaN pixels": (server.client.post(f"/v2/models/{NAME}/infer", content=json.dumps(
            {"inputs": [{**fp32, "shape": [1, 3, 224, 224], "data": [float("nan")] * image.size}]})), 400, "finite"),
    }  # fmt: skip
    for what, (answer, status, message) in cases.items():
        assert answer.status_code == status, (what, answer.text)
        assert message in answer.json()["error"], (what, answer.json())
    with pytest.raises(InferenceServerException, match="top_k must be"):
        tensor = httpclient.InferInput("images", [1, 3, 224, 224], "FP32")
        tensor.set_data_from_numpy(image)
        client.infer(NAME, [tensor], parameters={"top_k": 0})
    assert client.is_server_ready()
    tensor = httpclient.InferInput("images", [1, 3, 224, 224], "FP32")
    tensor.set_data_from_numpy(image)
    assert client.infer(NAME, [tensor]).as_numpy("logits").shape == (1, 1000)
