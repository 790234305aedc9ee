"""`vitzoo serve`'s processes: the app (app.py) under uvicorn, drained on SIGTERM, one process or `--workers N`.

- One worker (the default): this process serves. HTTP answers at once; the model loads in the background.
- N workers: this process binds the port and supervises N server processes sharing it (the kernel spreads the
  connections); one that dies is started again; SIGTERM is passed on to each, and each drains.
- Drain (SIGTERM, as Kubernetes sends on every scale-down and rollout; or Ctrl-C): readiness turns false at once,
  every request already received is answered, new ones get 503 with `Connection: close`, and the process exits when
  the last is answered or `--grace-s` has passed. A second signal stops at once.
- A client gets `--header-timeout-s` to send a request's headers (a slow client sending them byte by byte would
  otherwise hold its connection forever); idle keep-alive connections close after uvicorn's keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import ConfigError, ServeConfig
from . import ServeError

log = logging.getLogger("vitzoo.serve")
LOAD_FAILED = 3  # a worker process's exit code when its model could not be loaded


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's headers (from the connection's start, or from the
    first byte of the next request on a kept-alive connection); a client past it is answered 408 and closed."""

    header_timeout = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = asyncio.get_running_loop().call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()


def protocol_with(header_timeout: float) -> type:
    return type("HeaderDeadlineProtocol", (HeaderDeadline,), {"header_timeout": header_timeout})


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining on the first SIGTERM or SIGINT instead of stopping (see the top)."""

    def __init__(self, config: uvicorn.Config, service, grace_s: float):
        super().__init__(config)
        self.service, self.grace_s = service, grace_s
        self.deadline: float | None = None

    def handle_exit(self, sig, frame) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.grace_s
            self.service.drain()
        else:
            super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.service.failed:
            return True
        if self.deadline is not None:
            if (self.service.in_flight == 0 and self.service.refusing) or time.monotonic() > self.deadline:
                # what is left of the grace period bounds uvicorn's own wait for open connections
                self.config.timeout_graceful_shutdown = max(0.5, self.deadline - time.monotonic())
                return True
        return await super().on_tick(counter)


def _serve(config: ServeConfig, sockets: list[socket.socket] | None = None) -> int:
    """Serve in this process until drained or stopped: 0, or LOAD_FAILED."""
    from .app import build_app

    app = build_app(config)
    uv_config = uvicorn.Config(
        app, host=config.host, port=config.port, log_level=config.log_level, http=protocol_with(config.header_timeout_s),
        lifespan="on", timeout_keep_alive=5, access_log=False,
    )  # fmt: skip
    server = DrainingServer(uv_config, app.state.service, config.grace_s)
    server.run(sockets=sockets)
    return LOAD_FAILED if app.state.service.failed else 0


def _worker(config: ServeConfig, sock: socket.socket) -> None:
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(_serve(config, [sock]))


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _supervise(config: ServeConfig) -> int:
    """N server processes on one socket: started, watched (a dead one started again), drained on SIGTERM."""
    sock = _bind(config.host, config.port)
    spawn = multiprocessing.get_context("spawn")
    stopping = []

    def start(index: int):
        process = spawn.Process(target=_worker, args=(config, sock), name=f"vitzoo-serve-{index}", daemon=False)
        process.start()
        return process

    def on_signal(signum, frame):
        if not stopping:
            log.info("passing %s on to %d worker(s)", signal.Signals(signum).name, len(workers))
            for process in workers:
                if process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)
        stopping.append(time.monotonic())

    workers = [start(i) for i in range(config.workers)]
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    log.info("serving %s with %d worker processes on http://%s:%d", config.model, config.workers, config.host,
             config.port)  # fmt: skip
    failed = False
    try:
        while True:
            time.sleep(0.2)
            if stopping and (all(not p.is_alive() for p in workers) or time.monotonic() > stopping[0] + config.grace_s + 5):
                break
            for i, process in enumerate(workers):
                if process.is_alive() or stopping:
                    continue
                if process.exitcode == LOAD_FAILED:
                    failed = True
                    on_signal(signal.SIGTERM, None)
                    break
                log.error("worker %d (pid %d) died (exit %s); starting another", i, process.pid, process.exitcode)
                workers[i] = start(i)
    finally:
        for process in workers:
            if process.is_alive():
                process.kill()
            process.join()
        sock.close()
    if failed:
        raise ServeError("a worker could not load the model (its error is logged above)")
    return 0


def run(config: ServeConfig) -> int:
    """`vitzoo serve`: serve `config`'s model until drained (SIGTERM or SIGINT). 0 on a clean stop; ServeError if the
    model could not be loaded. Everything that can be refused is refused before the server starts."""
    from ..factory import check_calibration, resolve_model

    config.check()
    check_calibration(config.model, config.precision, config.calibration)  # int8 without images: refused now
    kind = resolve_model(config.model).kind
    if config.weights is None and kind == "name":
        raise ConfigError(f"--weights is needed for {config.model} (a run folder or an exported file brings its own)")
    if kind == "artifact":  # its own runtime and precision, checked against the flags; the file's checks now too
        from ..artifacts import load_artifact

        load_artifact(config.model).check_path(config.precision, config.backend, config.device)
    else:
        config.path.require()
    logging.basicConfig(level=getattr(logging, config.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    if config.workers > 1:
        return _supervise(config)
    log.info("serving %s on http://%s:%d (page at /, API docs at /docs)", config.model, config.host, config.port)
    if _serve(config) == LOAD_FAILED:
        raise ServeError("the server could not load the model (its error is logged above)")
    return 0
