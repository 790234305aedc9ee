"""The Open Inference Protocol (KServe v2; spoken by Triton, KServe, MLServer, OpenVINO Model Server) over HTTP.

    GET  /v2                            the server: name, version, extensions
    GET  /v2/health/live, /ready        alive; loaded, warm and not draining
    GET  /v2/models/{name}[/versions/1] the model: its input, outputs and preprocessing
    GET  /v2/models/{name}/ready
    POST /v2/models/{name}/infer        images in, logits and top-k out

The input is "images": either FP32 [N, 3, H, W], already preprocessed as the model's metadata says, or BYTES [N], one
encoded image (JPEG, PNG, ...) per element, decoded and preprocessed here as `vitzoo predict` does (OpenVINO Model
Server's convention). Outputs: "logits" FP32 [N, classes], "probabilities" FP32 [N, classes], "top_k_indices" INT64
[N, k], "top_k_probabilities" FP32 [N, k], "top_k_labels" BYTES [N, k]; k from the request's `top_k` parameter
(default 5). Tensors travel as JSON (`data`, row-major) or after the JSON in the body, with the binary tensor data
extension (`Inference-Header-Content-Length`, `parameters.binary_data_size`; BYTES elements each a 4-byte
little-endian length and the bytes), which `tritonclient.http` uses by default. Errors are {"error": ...} with a 4xx
(or 5xx for the server's own failures).
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import __version__
from .images import RequestError, read_body, to_tensor
from .worker import Job

HEADER_LENGTH = "inference-header-content-length"
OUTPUTS = ("logits", "probabilities", "top_k_indices", "top_k_probabilities", "top_k_labels")
DEFAULT_TOP_K = 5
V2_BODY_FACTOR = 8  # a v2 body may be 8x --max-upload-mb: a float32 written out as a JSON number takes up to ~20 bytes
LITTLE_ENDIAN = {"FP32": "<f4", "INT64": "<i8"}  # the binary extension's byte order


def _bad(message: str) -> RequestError:
    return RequestError(400, "bad_request", message)


def parse_request(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """(the JSON part, the binary part) of an infer request body."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
            raise _bad(f"Inference-Header-Content-Length {header_length[:20]!r} does not fit a body of {len(body)} "
                       "bytes")  # fmt: skip
        json_part, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        request = json.loads(json_part)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(f"the request's JSON cannot be read: {e}") from None
    if not isinstance(request, dict):
        raise _bad("the request must be a JSON object with 'inputs'")
    return request, binary


def _shape(tensor: dict) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _bad(f"input {tensor.get('name')!r}: 'shape' must be a list of non-negative integers")
    return shape


def _binary_size(tensor: dict) -> int | None:
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad(f"input {tensor.get('name')!r}: binary_data_size must be a non-negative integer")
    return size


def split_binary(inputs: list[dict], binary: bytes) -> list[bytes | None]:
    """Each input's binary data, in the order the inputs list them; every byte accounted for."""
    out, offset = [], 0
    for tensor in inputs:
        size = _binary_size(tensor)
        if size is None:
            out.append(None)
            continue
        if offset + size > len(binary):
            raise _bad(f"input {tensor.get('name')!r}: binary_data_size {size} runs past the {len(binary)} bytes "
                       "after the JSON")  # fmt: skip
        out.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise _bad(f"{len(binary) - offset} bytes after the JSON belong to no input")
    return out


def decode_bytes_elements(raw: bytes, count: int) -> list[bytes]:
    """The binary extension's BYTES tensor: `count` elements, each a uint32 little-endian length then the bytes."""
    elements, offset = [], 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise _bad(f"BYTES element {i}: its length runs past the tensor's data")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise _bad(f"BYTES element {i}: {length} bytes claimed, {len(raw) - offset} left")
        elements.append(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise _bad(f"BYTES tensor: {len(raw) - offset} bytes after its {count} elements")
    return elements


def encode_bytes_elements(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _json_bytes(data, count: int) -> list[bytes]:
    """BYTES elements given in JSON: each {"b64": base64} or a base64 string (images are not text)."""
    flat = list(np.asarray(data, dtype=object).reshape(-1)) if isinstance(data, list) else None
    if flat is None or len(flat) != count:
        raise _bad(f"input 'images': {count} BYTES elements expected in 'data'")
    out = []
    for i, item in enumerate(flat):
        text = item.get("b64") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise _bad(f"BYTES element {i}: give {{'b64': base64}} or a base64 string (or use binary data)")
        try:
            out.append(base64.b64decode(text, validate=True))
        except ValueError:
            raise _bad(f"BYTES element {i}: not base64") from None
    return out


def _fp32_images(tensor: dict, raw: bytes | None, shape: list[int], image_shape: tuple[int, int, int]) -> np.ndarray:
    if len(shape) != 4 or tuple(shape[1:]) != tuple(image_shape):
        raise _bad(f"input 'images' FP32 must have shape [N, {', '.join(map(str, image_shape))}], got {shape}")
    count = int(np.prod(shape))
    if raw is not None:
        if len(raw) != count * 4:
            raise _bad(f"input 'images': {len(raw)} bytes of binary data for {count} FP32 values ({count * 4} bytes)")
        array = np.frombuffer(raw, dtype="<f4")
    else:
        try:
            array = np.asarray(tensor.get("data"), dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise _bad("input 'images': 'data' must hold numbers") from None
        if array.size != count:
            raise _bad(f"input 'images': {array.size} values in 'data' for shape {shape}")
    if not np.isfinite(array).all():
        raise _bad("input 'images': values must be finite")
    return array.astype(np.float32).reshape(shape)


def _requested(request: dict, num_classes: int) -> tuple[list[tuple[str, bool]], int]:
    """([(output name, as binary data)], k)."""
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _bad("'parameters' must be an object")
    k = parameters.get("top_k", DEFAULT_TOP_K)
    binary_all = parameters.get("binary_data_output") is True
    outputs = request.get("outputs")
    if outputs is None:
        wanted = [(name, binary_all) for name in OUTPUTS]
    elif not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise _bad("'outputs' must be a list of objects")
    else:
        wanted = []
        for output in outputs:
            name = output.get("name")
            if name not in OUTPUTS:
                raise _bad(f"unknown output {name!r}; this model has {', '.join(OUTPUTS)}")
            own = output.get("parameters") or {}
            k = own.get("top_k", k) if isinstance(own, dict) else k
            wanted.append((name, (own.get("binary_data") if isinstance(own, dict) else None) is True or binary_all))
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_classes:
        raise _bad(f"top_k must be an integer from 1 to {num_classes}")
    return wanted, min(k, num_classes)


def _output_tensor(name: str, answers: list[dict], k: int, classes) -> tuple[str, list[int], np.ndarray | list]:
    """(datatype, shape, data) of one output over the request's images."""
    import torch

    logits = np.stack([a["logits"] for a in answers]).astype(np.float32)
    if name == "logits":
        return "FP32", list(logits.shape), logits
    probabilities = torch.from_numpy(logits).softmax(dim=1)
    if name == "probabilities":
        return "FP32", list(logits.shape), probabilities.numpy()
    from ..labels import top_k

    tops = top_k(probabilities, k, classes)
    shape = [len(tops), k]
    if name == "top_k_indices":
        return "INT64", shape, np.array([[e["index"] for e in top] for top in tops], dtype=np.int64)
    if name == "top_k_probabilities":
        return "FP32", shape, np.array([[e["probability"] for e in top] for top in tops], dtype=np.float32)
    return "BYTES", shape, [[e["label"] for e in top] for top in tops]


def answer(model_name: str, request_id: str, answers: list[dict], wanted, k: int, classes) -> Response:
    """The infer response: JSON, with binary tensors after it where asked."""
    outputs, binaries = [], []
    for name, binary in wanted:
        datatype, shape, data = _output_tensor(name, answers, k, classes)
        entry = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            if datatype == "BYTES":
                raw = encode_bytes_elements([label.encode() for row in data for label in row])
            else:
                raw = np.ascontiguousarray(data, dtype=LITTLE_ENDIAN[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            binaries.append(raw)
        else:
            flat = [v for row in data for v in row] if datatype == "BYTES" else np.asarray(data).reshape(-1).tolist()
            entry["data"] = flat
        outputs.append(entry)
    body = {"model_name": model_name, "model_version": "1", "id": request_id, "outputs": outputs}
    if not binaries:
        return JSONResponse(body)
    head = json.dumps(body).encode()
    return Response(head + b"".join(binaries), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})  # fmt: skip


def add_routes(app, service) -> None:
    """The v2 routes on `app` for `service` (the server's state: model, worker, limits)."""
    loaded = service.loaded

    def model_metadata() -> dict:
        transform = service.transform(None)[1]
        size = loaded.img_size
        return {
            "name": service.model_name, "versions": ["1"], "platform": "vitzoo",
            "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 3, size, size]}],
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": [-1, loaded.num_classes]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, loaded.num_classes]},
                {"name": "top_k_indices", "datatype": "INT64", "shape": [-1, -1]},
                {"name": "top_k_probabilities", "datatype": "FP32", "shape": [-1, -1]},
                {"name": "top_k_labels", "datatype": "BYTES", "shape": [-1, -1]},
            ],
            "parameters": {
                "images": "FP32 [N, 3, H, W] preprocessed as `preprocessing` says, or BYTES [N] of encoded images "
                          "(JPEG, PNG, ...), preprocessed here",
                "top_k": f"a request parameter, 1 to {loaded.num_classes} (default {DEFAULT_TOP_K})",
                "preprocessing": {
                    "protocol": service.protocol, "resize_short": transform.resize_short, "crop": transform.crop,
                    "interpolation": transform.interpolation, "mean": list(transform.mean), "std": list(transform.std),
                    "scale": "1/255", "channels": "RGB",
                },
                "classes": service.classes.source, "precision": service.path["precision"],
                "backend": service.path["backend"],
            },
        }  # fmt: skip

    def check_model(name: str, version: str | None = None) -> None:
        if name != service.model_name:
            raise RequestError(404, "unknown_model", f"unknown model {name!r}; this server serves "
                               f"{service.model_name!r}")  # fmt: skip
        if version not in (None, "1"):
            raise RequestError(404, "unknown_model", f"model {name!r} has version 1 only, not {version!r}")

    @app.get("/v2", summary="Open Inference Protocol: the server")
    async def server_metadata():
        return {"name": "vitzoo", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", summary="Open Inference Protocol: alive")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", summary="Open Inference Protocol: the model loaded and warm, the server not draining",
             responses={503: {"description": "not ready"}})  # fmt: skip
    async def ready():
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    @app.get("/v2/models/{name}", summary="Open Inference Protocol: the model's metadata")
    @app.get("/v2/models/{name}/versions/{version}", include_in_schema=False)
    async def metadata(name: str, version: str | None = None):
        check_model(name, version)
        return model_metadata()

    @app.get("/v2/models/{name}/ready", summary="Open Inference Protocol: the model is ready")
    @app.get("/v2/models/{name}/versions/{version}/ready", include_in_schema=False)
    async def model_ready(name: str, version: str | None = None):
        check_model(name, version)
        return JSONResponse({"name": name, "ready": service.ready}, status_code=200 if service.ready else 503)

    @app.post("/v2/models/{name}/infer", summary="Open Inference Protocol: images in, logits and top-k out")
    @app.post("/v2/models/{name}/versions/{version}/infer", include_in_schema=False)
    async def infer(name: str, request: Request, version: str | None = None):
        check_model(name, version)
        request_id = service.request_id(request)
        body = await read_body(request, V2_BODY_FACTOR * service.max_upload_bytes)
        parsed, binary = parse_request(body, request.headers.get(HEADER_LENGTH))
        inputs = parsed.get("inputs")
        if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
            raise _bad("'inputs' must be a list of tensors")
        raws = split_binary(inputs, binary)
        if [t.get("name") for t in inputs] != ["images"]:
            raise _bad(f"one input, 'images', is expected; got {[t.get('name') for t in inputs]}")
        (tensor,), (raw,) = inputs, raws
        shape = _shape(tensor)
        wanted, k = _requested(parsed, loaded.num_classes)
        datatype = tensor.get("datatype")
        if datatype == "FP32":
            images = list(_fp32_images(tensor, raw, shape, service.image_shape))
        elif datatype == "BYTES":
            if len(shape) != 1:
                raise _bad(f"input 'images' BYTES must have shape [N], got {shape}")
            encoded = decode_bytes_elements(raw, shape[0]) if raw is not None else _json_bytes(tensor.get("data"), shape[0])
            _, transform = service.transform(None)
            images = [(await run_in_threadpool(to_tensor, data, transform, service.max_pixels)).numpy() for data in encoded]
        else:
            raise _bad(f"input 'images' must be FP32 or BYTES, not {datatype!r}")
        if not images:
            raise _bad("input 'images' holds no image")
        if len(images) > service.max_images:
            raise RequestError(413, "too_many_images", f"{len(images)} images in one request; at most {service.max_images}")
        jobs = [Job("classify", image, f"{request_id}/{i}", top_k=1, fault=request.headers.get("x-vitzoo-fault"))
                for i, image in enumerate(images)]  # fmt: skip
        answers = await asyncio.gather(*(service.worker.submit(job) for job in jobs))
        return answer(service.model_name, parsed.get("id") or request_id, answers, wanted, k, service.classes)
