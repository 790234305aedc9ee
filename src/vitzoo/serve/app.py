"""The HTTP API of `vitzoo serve` (FastAPI routes on LitServe's app; the OpenAPI schema is at /openapi.json).

    POST /v1/classify    an image -> top-k classes with probabilities (the numbers `vitzoo predict` gives)
    POST /v1/attention   an image -> its attention map: a PNG overlay, or the numbers
    GET  /v1/models      the model served and how
    GET  /healthz        alive;  GET /readyz  loaded and warm (503 until then)
    GET  /metrics        Prometheus text format
    GET  /               the web page

Every error is JSON: {"error": what was wrong, "kind": a stable code, "request_id": ...}, and every answer carries
an X-Request-ID header (the client's own, if it sent a sane one), which the log names for model errors.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from importlib import resources
from typing import Literal

from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.transforms import PROTOCOLS
from . import metrics
from .attention import input_pixels, overlay_png
from .images import ACCEPTED, RequestError, image_bytes, own_the_pixel_limit, to_tensor

log = logging.getLogger("vitzoo.serve")
ROUTES = ("/", "/v1/classify", "/v1/attention", "/v1/models", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")
REQUEST_ID = "vitzoo.request_id"  # where the middleware leaves the id in the ASGI scope
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

IMAGE_BODY = {  # the request body, for the OpenAPI schema (the routes read it themselves, to check it first)
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}  # fmt: skip


# -- answers, as the OpenAPI schema documents them -------------------------------------------------------------------
class TopClass(BaseModel):  # vitzoo.labels.top_k's entry: what `vitzoo predict` writes
    index: int
    label: str
    wnid: str | None  # ImageNet's WordNet id, where the classes are ImageNet's
    probability: float


class Times(BaseModel):
    preprocess: float
    queue: float
    model: float  # the whole batch's model call
    total: float


class ClassifyAnswer(BaseModel):  # vitzoo.labels.image_record's keys, and how the answer was made
    image: str  # "<upload>"
    target: None  # an upload carries no label (the key is there: one record schema with `vitzoo predict`)
    top: list[TopClass]
    model: str
    protocol: str
    batch_size: int
    time_ms: Times
    request_id: str


class AttentionAnswer(BaseModel):
    model: str
    protocol: str
    grid: list[int]  # patches down, across
    prefix_tokens: int
    cls: list[list[float]]  # the last block's class-token attention over the patches, mean over heads
    rollout: list[list[float]]  # attention rollout, the class token's row over the patches
    batch_size: int
    time_ms: Times
    request_id: str


class ErrorAnswer(BaseModel):
    error: str
    kind: str
    request_id: str | None = None


class ModelCard(BaseModel):
    name: str
    source: str
    num_classes: int
    img_size: int
    protocol: str
    protocols: list[str]
    precision: str
    backend: str
    device: str
    max_batch_size: int
    batch_timeout_ms: float
    workers: int
    ready: bool


class ModelsAnswer(BaseModel):
    models: list[ModelCard]


ProtocolName = Literal[PROTOCOLS]  # vitzoo.data.transforms.PROTOCOLS, as the OpenAPI schema's enum
ERRORS = {code: {"model": ErrorAnswer} for code in (400, 413, 415, 422, 500, 503, 504)}


def error_response(request_id: str | None, status: int, kind: str, message: str) -> JSONResponse:
    metrics.ERRORS.labels(kind).inc()
    return JSONResponse({"error": message, "kind": kind, "request_id": request_id}, status_code=status)


class RequestIds:
    """ASGI middleware: a request id for each request (X-Request-ID in and out), and the request metrics.

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which may cancel a handler whose client hung up.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        scope[REQUEST_ID] = request_id
        route = scope["path"] if scope["path"] in ROUTES else "other"
        start, code = time.perf_counter(), [500]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                code[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics.REQUESTS.labels(route, str(code[0])).inc()
            if route.startswith("/v1/"):
                metrics.REQUEST_SECONDS.labels(route).observe(time.perf_counter() - start)


def add_routes(server) -> None:
    """vitzoo's routes and error handlers on `server.app` (a VitzooServer: the model, its options, its queue)."""
    app, loaded, options = server.app, server.loaded, server.options
    num_classes = loaded.model.num_classes
    app.title, app.version = "vitzoo serve", "1"
    app.description = f"{loaded.name} ({loaded.source}) as a web service: classification and attention maps."
    app.add_middleware(RequestIds)
    own_the_pixel_limit()  # this process decodes only what passed --max-megapixels
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    page = page.replace("__TOP_K__", str(min(5, num_classes)))

    def rid(request: Request) -> str:
        return request.scope.get(REQUEST_ID, "")

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, e: RequestError):
        return error_response(rid(request), e.status, e.kind, e.message)

    @app.exception_handler(RequestValidationError)
    async def on_bad_parameter(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{err['loc'][-1]}: {err['msg']}" for err in e.errors())
        return error_response(rid(request), 422, "bad_parameter", problems)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, e: Exception):  # Starlette still logs the traceback
        log.error("request %s: internal error: %r", rid(request), e)
        return error_response(rid(request), 500, "internal_error", "internal server error (logged)")

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(rid(request), e.status_code, kind, str(e.detail))

    async def checked_image(request: Request, protocol: str | None):
        """The upload, checked and preprocessed (off the event loop): (protocol, transform, [3,H,W] array, seconds)."""
        protocol, transform = server.transform(protocol)
        data = await image_bytes(request, options.max_upload_bytes)
        start = time.perf_counter()
        tensor = await run_in_threadpool(to_tensor, data, transform, options.max_pixels)
        seconds = time.perf_counter() - start
        metrics.PREPROCESS_SECONDS.observe(seconds)
        return protocol, transform, tensor.numpy(), seconds

    async def run(payload: dict) -> dict:
        answer = await server.submit(payload)
        metrics.record_batch(answer)
        return answer

    def times(start: float, preprocess_s: float, answer: dict) -> dict:
        ms = {"preprocess": preprocess_s, "queue": answer["queue_s"], "model": answer["model_s"],
              "total": time.perf_counter() - start}  # fmt: skip
        return {k: round(v * 1000, 3) for k, v in ms.items()}

    protocol_help = f"preprocessing (default: {options.protocol or loaded.default_protocol}, as `vitzoo predict`)"

    @app.post("/v1/classify", response_model=ClassifyAnswer, responses=ERRORS, openapi_extra={"requestBody": IMAGE_BODY},
              summary="Top-k classes of one image", description=f"Send the image as {ACCEPTED}.")  # fmt: skip
    async def classify(
        request: Request,
        top_k: int = Query(5, ge=1, le=num_classes, description="how many classes to return"),
        protocol: ProtocolName | None = Query(None, description=protocol_help),
    ):
        start = time.perf_counter()
        protocol, _, image, preprocess_s = await checked_image(request, protocol)
        payload = {"kind": "classify", "image": image, "top_k": top_k, "request_id": rid(request),
                   "fault": request.headers.get("x-vitzoo-fault")}  # fmt: skip
        answer = await run(payload)
        return {"image": "<upload>", "target": None, "top": answer["top"], "model": loaded.name, "protocol": protocol,
                "batch_size": answer["batch_size"], "time_ms": times(start, preprocess_s, answer),
                "request_id": rid(request)}  # fmt: skip

    @app.post("/v1/attention", response_model=AttentionAnswer, openapi_extra={"requestBody": IMAGE_BODY},
              responses={**ERRORS, 200: {"content": {"image/png": {}}, "description": "the overlay, or the numbers"}},
              summary="Where the model looks in one image",
              description="The class token's attention and attention rollout over the patches: as a PNG drawn over "
              "the image the model saw (the centre crop), or as numbers (format=json).")  # fmt: skip
    async def attention(
        request: Request,
        format: Literal["png", "json"] = Query("png", description="png: an overlay image; json: the numbers"),
        method: Literal["rollout", "cls"] = Query("rollout", description="which map the PNG shows"),
        alpha: float = Query(0.6, ge=0.0, le=1.0, description="the map's opacity in the PNG (0: the image alone)"),
        protocol: ProtocolName | None = Query(None, description=protocol_help),
    ):
        start = time.perf_counter()
        protocol, transform, image, preprocess_s = await checked_image(request, protocol)
        payload = {"kind": "attention", "image": image, "request_id": rid(request),
                   "fault": request.headers.get("x-vitzoo-fault")}  # fmt: skip
        answer = await run(payload)
        if format == "json":
            grid = loaded.model.cfg.grid_size
            return {"model": loaded.name, "protocol": protocol, "grid": [grid, grid],
                    "prefix_tokens": loaded.model.num_prefix_tokens, "cls": answer["cls"], "rollout": answer["rollout"],
                    "batch_size": answer["batch_size"], "time_ms": times(start, preprocess_s, answer),
                    "request_id": rid(request)}  # fmt: skip
        pixels = input_pixels(image, transform.mean, transform.std)
        png = await run_in_threadpool(overlay_png, pixels, answer[method], alpha)
        headers = {"X-Model": loaded.name, "X-Time-Ms": str(times(start, preprocess_s, answer)["total"])}
        return Response(png, media_type="image/png", headers=headers)

    protocols = []
    for name in PROTOCOLS:
        try:
            loaded.transform(name)
            protocols.append(name)
        except ValueError:
            pass

    @app.get("/v1/models", response_model=ModelsAnswer, summary="The model served, and how")
    async def models():
        card = {
            "name": loaded.name, "source": loaded.source, "num_classes": num_classes,
            "img_size": loaded.model.cfg.img_size, "protocol": options.protocol or loaded.default_protocol,
            "protocols": protocols, **options.path, "max_batch_size": options.max_batch_size,
            "batch_timeout_ms": options.batch_timeout_ms, "workers": options.workers, "ready": server.ready,
        }  # fmt: skip
        return {"models": [card]}

    @app.get("/healthz", summary="Alive (the HTTP process answers)")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", summary="Ready: the model is loaded and warm (503 until then)",
             responses={503: {"description": "not ready yet"}})  # fmt: skip
    async def readyz():
        body = {"ready": server.ready, "workers": server.worker_status}
        return JSONResponse(body, status_code=200 if server.ready else 503)

    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)
