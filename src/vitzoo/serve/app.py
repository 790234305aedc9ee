"""The ASGI app of `vitzoo serve` (FastAPI; the OpenAPI schema is at /openapi.json): `build_app(config)`.

    POST /v1/classify    an image -> top-k classes with probabilities (the numbers `vitzoo predict` gives)
    POST /v1/attention   an image -> its attention map: a PNG overlay, or the numbers
    GET  /v1/models      the model served and how
    /v2/...              the Open Inference Protocol (v2.py)
    GET  /healthz        alive;  GET /readyz  loaded, warm and not draining (503 otherwise)
    GET  /metrics        Prometheus text format
    GET  /               the web page

The model loads in the background when the app starts (HTTP answers at once; /readyz says when it is warm). Every
error is JSON: {"error": what was wrong, "kind": a stable code, "request_id": ...}, and every answer carries an
X-Request-ID header (the client's own, if it sent a sane one), which the log names for model errors. Once the server
drains (`Service.drain`: SIGTERM), readiness is false at once, every request already received is answered, and new
ones (read over DRAIN_SETTLE_S after the signal) get 503 with `Connection: close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import ServeConfig
from ..data.transforms import PROTOCOLS
from . import metrics
from .attention import input_pixels, overlay_png
from .images import ACCEPTED, RequestError, image_bytes, own_the_pixel_limit, to_tensor
from .worker import Job, ModelWorker

log = logging.getLogger("vitzoo.serve")
HEALTH = ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")  # answered while draining too
ROUTES = ("/", "/v1/classify", "/v1/attention", "/v1/models", "/openapi.json", "/docs", *HEALTH)
REQUEST_ID = "vitzoo.request_id"  # where the middleware leaves the id in the ASGI scope
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_IMAGES_PER_REQUEST = 256  # a v2 request's images, each queued for the model
# the signal can arrive while requests sent before it still wait, unread, in the socket's buffer (the event loop was
# busy): what is read within this time of it is answered, as received before it
DRAIN_SETTLE_S = 0.25

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
    ready: bool


class ModelsAnswer(BaseModel):
    models: list[ModelCard]


ProtocolName = Literal[PROTOCOLS]  # vitzoo.data.transforms.PROTOCOLS, as the OpenAPI schema's enum
ERRORS = {code: {"model": ErrorAnswer} for code in (400, 404, 413, 415, 422, 500, 503, 504)}


def error_body(request_id: str | None, kind: str, message: str) -> dict:
    metrics.ERRORS.labels(kind).inc()
    return {"error": message, "kind": kind, "request_id": request_id}


def error_response(request_id: str | None, status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(request_id, kind, message), status_code=status)


# -- the server's state ----------------------------------------------------------------------------------------------
class Service:
    """One model served: its description (built without weights), its worker, the limits, and draining."""

    def __init__(self, config: ServeConfig):
        from ..factory import load_model, resolve_model

        self.config = config
        kind = resolve_model(config.model).kind
        run = kind == "run"
        import torch

        with torch.device("meta"):  # the name, classes and preprocessing only: the worker loads the real one
            self.loaded = load_model(config.model, weights=config.weights if run else None,
                                     num_classes=config.num_classes, random_weights=not run)  # fmt: skip
        self.classes = self.loaded.class_names(config.class_names)  # refuses a names file of the wrong length
        self.protocol = config.protocol or self.loaded.default_protocol
        self.loaded.transform(self.protocol)  # refuses an impossible protocol now, not on each request
        self.model_name = Path(config.model).resolve().name if run else self.loaded.name
        if kind == "artifact":  # an exported file: its runtime is its path; a custom model is named by its file
            self.path = self.loaded.check_path(config.precision, config.backend, config.device).fields()
            self.model_name = Path(config.model).stem if self.loaded.name == "custom" else self.loaded.name
        else:
            self.path = config.path.fields()
        self.image_shape = (3, self.loaded.img_size, self.loaded.img_size)
        self.max_upload_bytes = int(config.max_upload_mb * (1 << 20))
        self.max_pixels = int(config.max_megapixels * 1e6)
        self.max_images = MAX_IMAGES_PER_REQUEST
        self.worker = ModelWorker(config)
        self.transforms = {}
        self.draining = False
        self.drain_started: float | None = None
        self.in_flight = 0  # requests received and not yet answered (health checks aside)
        self._tasks: list[asyncio.Task] = []

    @property
    def ready(self) -> bool:
        return self.worker.state == "ready" and not self.draining

    @property
    def failed(self) -> str | None:
        return self.worker.error

    def start(self) -> None:
        """Load the model in the background and start the batch loop (once; from the event loop)."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.worker.batches()), loop.create_task(asyncio.to_thread(self.worker.load))]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.worker.close()

    def drain(self) -> None:
        """From now on: not ready; those already received answered; new requests, from DRAIN_SETTLE_S on, refused."""
        if not self.draining:
            log.info("draining: %d request(s) in flight are answered, new ones refused", self.in_flight)
            self.drain_started = time.monotonic()
        self.draining = True
        metrics.READY.set(0)

    @property
    def refusing(self) -> bool:
        """Draining, and past the settle time: a request read only now was sent after the signal."""
        return self.draining and time.monotonic() - self.drain_started > DRAIN_SETTLE_S

    def transform(self, protocol: str | None):
        """(protocol, its eval preprocessing) for a request (None: the server's default), built once."""
        protocol = protocol or self.protocol
        if protocol not in self.transforms:
            try:
                self.transforms[protocol] = self.loaded.transform(protocol)
            except ValueError as e:
                raise RequestError(422, "bad_parameter", f"protocol: {e}") from None
        return protocol, self.transforms[protocol]

    @staticmethod
    def request_id(request: Request) -> str:
        return request.scope.get(REQUEST_ID, "")


class RequestIds:
    """ASGI middleware: starts the service on its first request (an app mounted in another gets no lifespan), gives
    each request an id (X-Request-ID in and out), counts requests in flight, refuses new ones while draining, and
    records the request metrics. Plain ASGI rather than Starlette's BaseHTTPMiddleware, which may cancel a handler
    whose client hung up."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.service.start()
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        scope[REQUEST_ID] = request_id
        path = scope["path"]
        route = path if path in ROUTES else ("/v2" if path.startswith("/v2/models/") else "other")
        start, code = time.perf_counter(), [500]
        counted = path not in HEALTH

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                code[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        if counted and self.service.refusing:
            code[0] = 503
            body = error_body(request_id, "draining", "the server is shutting down; retry on another replica")
            response = JSONResponse(body, status_code=503, headers={"Connection": "close", "Retry-After": "1"})
            await response(scope, receive, send_with_id)
            metrics.REQUESTS.labels(route, "503").inc()
            return
        if counted:
            self.service.in_flight += 1
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if counted:
                self.service.in_flight -= 1
            metrics.REQUESTS.labels(route, str(code[0])).inc()
            if route.startswith(("/v1/", "/v2")):
                metrics.REQUEST_SECONDS.labels(route).observe(time.perf_counter() - start)


def build_app(config: ServeConfig) -> FastAPI:
    """The ASGI app serving `config`'s model: run it with any ASGI server, or mount it in another app. The model
    loads in the background once the app starts; `app.state.service` is its state (readiness, draining)."""
    from . import v2

    config.check()
    service = Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()
        yield
        await service.stop()

    loaded, num_classes = service.loaded, service.loaded.num_classes
    app = FastAPI(title="vitzoo serve", version="2", lifespan=lifespan,
                  description=f"{loaded.name} ({loaded.source}) as a web service: classification and attention maps, "
                  "over vitzoo's /v1 and the Open Inference Protocol (/v2).")  # fmt: skip
    app.state.service = service
    app.add_middleware(RequestIds, service=service)
    own_the_pixel_limit()  # this process decodes only what passed --max-megapixels
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    page = page.replace("__TOP_K__", str(min(5, num_classes)))
    rid = service.request_id

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
        protocol, transform = service.transform(protocol)
        data = await image_bytes(request, service.max_upload_bytes)
        start = time.perf_counter()
        tensor = await run_in_threadpool(to_tensor, data, transform, service.max_pixels)
        seconds = time.perf_counter() - start
        metrics.PREPROCESS_SECONDS.observe(seconds)
        return protocol, transform, tensor.numpy(), seconds

    def times(start: float, preprocess_s: float, answer: dict) -> dict:
        ms = {"preprocess": preprocess_s, "queue": answer["queue_s"], "model": answer["model_s"],
              "total": time.perf_counter() - start}  # fmt: skip
        return {k: round(v * 1000, 3) for k, v in ms.items()}

    protocol_help = f"preprocessing (default: {service.protocol}, as `vitzoo predict`)"

    @app.post("/v1/classify", response_model=ClassifyAnswer, responses=ERRORS, openapi_extra={"requestBody": IMAGE_BODY},
              summary="Top-k classes of one image", description=f"Send the image as {ACCEPTED}.")  # fmt: skip
    async def classify(
        request: Request,
        top_k: int = Query(5, ge=1, le=num_classes, description="how many classes to return"),
        protocol: ProtocolName | None = Query(None, description=protocol_help),
    ):
        start = time.perf_counter()
        protocol, _, image, preprocess_s = await checked_image(request, protocol)
        job = Job("classify", image, rid(request), top_k=top_k, fault=request.headers.get("x-vitzoo-fault"))
        answer = await service.worker.submit(job)
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
        if loaded.model is None:
            raise RequestError(501, "not_supported", "attention maps need the PyTorch model; this server runs an "
                               "exported file (classification only)")  # fmt: skip
        protocol, transform, image, preprocess_s = await checked_image(request, protocol)
        job = Job("attention", image, rid(request), fault=request.headers.get("x-vitzoo-fault"))
        answer = await service.worker.submit(job)
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
            "img_size": loaded.img_size, "protocol": service.protocol, "protocols": protocols,
            **service.path, "max_batch_size": config.max_batch_size, "batch_timeout_ms": config.batch_timeout_ms,
            "ready": service.ready,
        }  # fmt: skip
        return {"models": [card]}

    @app.get("/healthz", summary="Alive (the HTTP server answers)")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", summary="Ready: the model is loaded and warm, the server not draining (503 otherwise)",
             responses={503: {"description": "not ready"}})  # fmt: skip
    async def readyz():
        body = {"ready": service.ready, "model": service.worker.state, "draining": service.draining}
        if service.failed:
            body["error"] = service.failed
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
    async def prometheus():
        metrics.READY.set(int(service.ready))
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    v2.add_routes(app, service)
    return app
