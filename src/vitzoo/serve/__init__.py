"""`vitzoo serve`: a model as a web service (FastAPI on uvicorn, dynamic batching, the Open Inference Protocol).

    from vitzoo.serve import ServeConfig, build_app, run
    run(ServeConfig(model="DeiT_small_patch16_224", weights="paddleclas"))     # vitzoo serve, in Python
    app = build_app(ServeConfig(model="runs/digits"))                           # an ASGI app to mount or run

Files, one concern each:
    server.py     the processes: uvicorn, drain on SIGTERM, --workers N, the header deadline; `run(config)`
    app.py        the app: /v1 routes, health, metrics, the page, errors, draining; `build_app(config)`
    v2.py         the Open Inference Protocol (KServe v2) routes, JSON and binary tensors
    worker.py     the model: loaded in the background, batches in a thread of their own
    images.py     request body -> checked, preprocessed image
    attention.py  class-token attention and rollout; the PNG overlay
    metrics.py    Prometheus metrics
    page.html     the web page at /
The web stack is imported only when the server is built, so the command line needs none of it to start.
"""

from ..config import ServeConfig


class ServeError(RuntimeError):
    """The server could not start serving (its model worker failed to load the model)."""


def build_app(config: ServeConfig):
    """The ASGI app serving `config`'s model (`vitzoo.serve.app.build_app`)."""
    from .app import build_app as build

    return build(config)


def run(config: ServeConfig) -> int:
    """Serve `config`'s model until SIGINT or SIGTERM (`vitzoo.serve.server.run`)."""
    try:
        from .server import run as run_server
    except ImportError as e:
        raise ServeError(f"{e.name or e} is not installed; pip install 'vitzoo[serve]'") from None
    return run_server(config)


__all__ = ["ServeConfig", "ServeError", "build_app", "run"]
