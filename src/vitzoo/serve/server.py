"""The LitServe server under `vitzoo serve`, and the command's entry point.

LitServe (FastAPI + uvicorn) provides the HTTP process, the model worker processes, the request queue and the
dynamic batching. What this file adds around it, and why:
- HTTP starts at once, before the model is warm (LitServe waits first), so /healthz answers and /readyz says false
  while the model loads; a worker that fails to load stops the server with an error instead.
- LitServe's generic routes (its "/" and "/predict"-style route, which would decode images inside the batch) are
  replaced by vitzoo's routes (app.py), which check and preprocess an upload before it is queued.
- A watcher in the HTTP process keeps readiness current and fails (5xx) the requests of a worker that died
  mid-batch; LitServe restarts the worker (restart_workers=True), so no dead worker is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field

import litserve as ls
from litserve.utils import LitAPIStatus, ResponseBufferItem, WorkerSetupStatus
from starlette.concurrency import run_in_threadpool

from ..config import ConfigError
from . import ServeError
from .batching import BATCH_PATH, ModelAPI
from .images import RequestError

log = logging.getLogger("vitzoo.serve")
WORKER_DIED = "worker_died"
LITSERVE_HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # LitServe's run() accepts only these


@dataclass
class Options:
    """How the server answers (the command's flags, as the HTTP side needs them)."""

    protocol: str | None = None  # default preprocessing (None: the model's own default)
    max_upload_bytes: int = 20 << 20
    max_pixels: int = 50_000_000
    timeout: float = 30.0  # seconds a request may wait for its answer
    path: dict = field(default_factory=dict)  # precision, backend, device
    max_batch_size: int = 16
    batch_timeout_ms: float = 5.0
    workers: int = 1
    classes: object = None  # the model's ClassNames


class VitzooServer(ls.LitServer):
    """A LitServer for one model. `loaded`: its LoadedModel with the weights left out (a "meta" model, enough for
    the name, class count and preprocessing the HTTP side needs)."""

    def __init__(self, api: ModelAPI, loaded, options: Options):
        super().__init__(
            api, accelerator="cpu",  # the worker places the model itself (--device); LitServe only counts workers
            workers_per_device=options.workers, timeout=options.timeout, restart_workers=True,
        )  # fmt: skip
        self.loaded, self.options = loaded, options
        self.failed: str | None = None
        self.ready = False
        self.worker_status: dict[str, str] = {}
        self.transforms = {}
        drop = {"/", BATCH_PATH, self.healthcheck_path, self.info_path}  # LitServe's; ours replace them
        self.app.router.routes[:] = [r for r in self.app.router.routes if getattr(r, "path", None) not in drop]
        from .app import add_routes

        add_routes(self)

    def transform(self, protocol: str | None):
        """The eval preprocessing for `protocol` (None: the server's default), built once."""
        protocol = protocol or self.options.protocol or self.loaded.default_protocol
        if protocol not in self.transforms:
            try:
                self.transforms[protocol] = self.loaded.transform(protocol)
            except ValueError as e:
                raise RequestError(422, "bad_parameter", f"protocol: {e}") from None
        return protocol, self.transforms[protocol]

    # -- startup and readiness ---------------------------------------------------------------------------------------
    def verify_worker_status(self):
        """LitServe blocks here until a worker is warm before it starts HTTP; we go on at once (see the top)."""

    def _start_server(self, *args, **kwargs):
        workers = super()._start_server(*args, **kwargs)
        # started after the HTTP process was forked off, so no thread of ours is mid-call in the copy
        threading.Thread(target=self._stop_if_setup_fails, daemon=True, name="vitzoo-setup-watch").start()
        return workers

    def _stop_if_setup_fails(self) -> None:
        with contextlib.suppress(Exception):  # the manager goes away at shutdown
            while not self._shutdown_event.is_set():
                if WorkerSetupStatus.ERROR in self.workers_setup_status.copy().values():
                    self.failed = "the model worker could not load the model (its error is logged above)"
                    log.error("%s; stopping", self.failed)
                    self._shutdown_event.set()
                    return
                time.sleep(0.1)

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        async with super().lifespan(app):
            watcher = asyncio.get_running_loop().create_task(self._watch_workers())
            try:
                yield
            finally:
                watcher.cancel()

    async def _watch_workers(self, interval: float = 0.1) -> None:
        """In the HTTP process: readiness, and the requests of a worker that died (it leaves READY for STARTING when
        LitServe restarts it) answered with a 5xx rather than left waiting."""
        from . import metrics

        while True:
            try:
                status = await asyncio.to_thread(self.workers_setup_status.copy)  # a round trip to LitServe's manager
            except Exception:  # noqa: BLE001  (the manager is gone: shutting down)
                return
            status = {key.rsplit("_", 1)[1]: state for key, state in status.items()}  # "_batch_0" -> "0"
            for worker, state in status.items():
                if self.worker_status.get(worker) == WorkerSetupStatus.READY and state != WorkerSetupStatus.READY:
                    self._fail_requests_of(int(worker))
            self.worker_status = status
            ready = sum(state == WorkerSetupStatus.READY for state in status.values())
            self.ready = ready > 0 and WorkerSetupStatus.ERROR not in status.values()
            metrics.READY.set(int(self.ready))
            metrics.WORKERS_READY.set(ready)
            await asyncio.sleep(interval)

    def _fail_requests_of(self, worker_id: int) -> None:
        lost = [item for item in self.response_buffer.values() if item.worker_id == worker_id and not item.event.is_set()]
        log.error("model worker %d died; failing its %d request(s) in flight; LitServe restarts it", worker_id, len(lost))
        for item in lost:
            item.response = (WORKER_DIED, LitAPIStatus.ERROR)
            item.event.set()

    # -- the queue -----------------------------------------------------------------------------------------------------
    async def submit(self, payload: dict) -> dict:
        """Queue one checked request for the model worker and wait for its answer (an error answer raises)."""
        if not self.ready:
            raise RequestError(503, "not_ready", "the model is not loaded and warm yet; see GET /readyz")
        uid = uuid.uuid4().hex
        item = ResponseBufferItem(event=asyncio.Event())
        self.response_buffer[uid] = item
        payload["queued"] = time.monotonic()
        request = (self.app.response_queue_id, uid, payload["queued"], payload)
        try:
            # the queue is a Manager proxy: a put is a round trip to another process, kept off the event loop
            await run_in_threadpool(self._get_request_queue(BATCH_PATH).put, request)
            await asyncio.wait_for(item.event.wait(), timeout=self.options.timeout + 5)
        except asyncio.TimeoutError:
            raise RequestError(504, "timeout", f"no answer within {self.options.timeout:g} s") from None
        finally:
            self.response_buffer.pop(uid, None)
        answer, status = item.response
        rid = payload["request_id"]
        if status == LitAPIStatus.ERROR:
            if answer == WORKER_DIED:
                log.error("request %s: the model worker died while running its batch", rid)
                raise RequestError(500, "model_error", "the model worker died while running this request; retry")
            if getattr(answer, "status_code", None) == 504:  # LitServe's: it waited in the queue past --timeout
                raise RequestError(504, "timeout", f"the request waited in the queue over {self.options.timeout:g} s")
            log.error("request %s: model worker error: %r", rid, answer)
            raise RequestError(500, "model_error", "the model failed on this request")
        if "error" in answer:
            log.error("request %s: model error: %s", rid, answer["error"])
            raise RequestError(500, "model_error", f"the model failed on this request: {answer['error']}")
        return answer


def describe(config):
    """The model as the HTTP side needs it: name, classes and preprocessing, built on the "meta" device (no
    weights read for a table model, no memory, no time): the worker loads the real one."""
    import torch

    from ..factory import load_model, resolve_model

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a run folder's weights "copied" into meta tensors: a no-op, as wanted
        run = resolve_model(config.model).kind == "run"
        return load_model(config.model, weights=config.weights if run else None, num_classes=config.num_classes,
                          random_weights=not run)  # fmt: skip


def run(config) -> int:
    """`vitzoo serve`: load, warm and serve `config` (a `vitzoo.config.ServeConfig`) until interrupted (SIGINT or
    SIGTERM). 0 on a clean stop, 1 if the model could not be loaded. Everything that can be refused is refused
    before the server starts."""
    from ..factory import check_calibration, resolve_model

    config.check()
    if config.host not in LITSERVE_HOSTS:
        raise ConfigError(f"--host must be one of {', '.join(LITSERVE_HOSTS)} (LitServe binds only these)")
    check_calibration(config.model, config.precision, config.calibration)  # int8 without images: refused now
    if config.weights is None and resolve_model(config.model).kind != "run":
        raise ConfigError(f"--weights is needed for {config.model} (a run folder brings its own)")
    path = config.path.require()
    logging.basicConfig(level=getattr(logging, config.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    loaded = describe(config)
    classes = loaded.class_names(config.class_names)  # refuses a names file of the wrong length now
    if config.protocol:
        loaded.transform(config.protocol)  # refuse an impossible protocol now, not on each request
    options = Options(
        protocol=config.protocol, max_upload_bytes=int(config.max_upload_mb * (1 << 20)),
        max_pixels=int(config.max_megapixels * 1e6), timeout=config.timeout, max_batch_size=config.max_batch_size,
        batch_timeout_ms=config.batch_timeout_ms, workers=config.workers, path=path.fields(), classes=classes,
    )  # fmt: skip
    api = ModelAPI(config, max_batch_size=config.max_batch_size, batch_timeout=config.batch_timeout_ms / 1000)
    server = VitzooServer(api, loaded, options)

    main_pid = os.getpid()

    def stop(signum, frame):
        """SIGTERM (docker stop, kill) stops as cleanly as Ctrl-C: LitServe's shutdown runs on KeyboardInterrupt.
        The forked HTTP process inherits this handler and uvicorn re-raises the signal there once it has stopped:
        that process just exits."""
        if os.getpid() != main_pid:
            sys.exit(0)
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    log.info("serving %s on http://%s:%d (page at /, API docs at /docs)", loaded.name, config.host, config.port)
    server.run(host=config.host, port=config.port, num_api_servers=1, log_level=config.log_level,
               generate_client_file=False, api_server_worker_type="process")  # fmt: skip
    if server.failed:
        raise ServeError(server.failed)
    return 0
